"""The docs pages load their scripts from the API, and say how to fetch them when they are missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.docs import ASSETS_PATH, graphiql_page
from infra.provision.web_assets import PACKAGES, asset_path
from infra.runtime.settings import SettingsError, load_settings

SECRET = {"SECRET_KEY": "s" * 40}


@pytest.fixture
def assets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache directory with every package "fetched" (marker and files present, contents made up)."""
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path))
    root = tmp_path / "web-assets"
    for package in PACKAGES:
        for file in package.files:
            (root / package.directory / file).parent.mkdir(parents=True, exist_ok=True)
            (root / package.directory / file).write_text(f"/* {package.name} {file} */")
        (root / package.directory / ".complete").write_text(package.integrity)
    return root


def test_docs_pages_load_scripts_from_the_api_and_never_from_a_cdn(assets: Path) -> None:
    client = TestClient(create_app(load_settings(environ=SECRET)))
    for page in ("/api/docs", "/api/docs/redoc"):
        text = client.get(page).text
        assert f'src="{ASSETS_PATH}/' in text and "https://" not in text.split("<body")[0], page
        assert "Content-Security-Policy" in text  # nothing a bundle links elsewhere is loaded
    script = client.get(f"{ASSETS_PATH}/{asset_path('swagger-ui-dist', 'swagger-ui-bundle.js')}")
    assert script.status_code == 200 and script.text == "/* swagger-ui-dist swagger-ui-bundle.js */"
    assert "max-age" in script.headers["cache-control"]
    assert client.get(f"{ASSETS_PATH}/../../etc/passwd").status_code == 404
    ide = graphiql_page("/api/graphql")
    assert "https://" not in ide and "isHeadersEditorEnabled: true" in ide


def test_a_docs_page_without_its_assets_says_how_to_fetch_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "empty"))
    client = TestClient(create_app(load_settings(environ=SECRET)))
    for page in ("/api/docs", "/api/docs/redoc"):
        response = client.get(page)
        assert response.status_code == 200 and "make web-assets" in response.text, page


def test_the_graphql_ide_setting_takes_graphiql_or_apollo_sandbox_only(assets: Path) -> None:
    create_app(load_settings(environ={**SECRET, "PIPELINE_GRAPHQL_IDE": "apollo-sandbox"}))
    with pytest.raises(SettingsError, match=r"graphql\.ide"):
        create_app(load_settings(environ={**SECRET, "PIPELINE_GRAPHQL_IDE": "playground"}))

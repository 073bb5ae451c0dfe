"""A real browser (headless Chromium driven by selenium) on the docs pages of a running system.

Swagger UI, ReDoc and the GraphQL IDE must render from the API's own assets (no request leaves the
machine), and the IDE must run an operation once the user sets the Authorization header in its
Headers editor. A screenshot of each page is kept in ``<pytest basetemp>/browser-screenshots/``.
Chromium and chromedriver come from Debian (infra/provision/system-deps.sh); the test is skipped only
when they are not installed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.provision.web_assets import assets_dir, fetch
from tests.conftest import environment_for
from tests.integration.harness import eventually
from tests.integration.system import RunningSystem, running_system

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver (make system-deps)"
)
PAGE_TIMEOUT = 60.0  # a 2-core machine shared with other work parses 3.5 MB of GraphiQL slowly


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.getbasetemp() / "browser-screenshots"
    directory.mkdir(exist_ok=True)
    return directory


@pytest.fixture(scope="module")
async def system(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningSystem]:
    fetch(assets_dir())  # `make test` has done it; a bare pytest run does it here (once per machine)
    tmp_path = tmp_path_factory.mktemp("browser")
    async with running_system(environment_for(services, tmp_path), tmp_path) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # the DevTools network events
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


async def wait_for(browser: Any, script: str, what: str) -> Any:
    """Poll a JavaScript expression in the page until it is truthy (the page renders asynchronously)."""

    async def check() -> Any:
        return await asyncio.to_thread(browser.execute_script, f"return ({script});")

    try:
        return await eventually(check, timeout=PAGE_TIMEOUT, what=what)
    except AssertionError as exc:
        body = browser.execute_script("return document.body ? document.body.innerText.slice(0, 2000) : ''")
        raise AssertionError(f"{exc}; the page shows:\n{body}") from exc


def requests_outside(browser: Any, base: str) -> list[str]:
    """Every request the browser sent anywhere but the API since the last call (from DevTools' network
    events). A request the page's Content-Security-Policy blocked never left, so it is not counted."""
    sent: dict[str, str] = {}
    blocked: set[str] = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            sent[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason") == "csp":
            blocked.add(params["requestId"])
    return [
        url for request, url in sent.items() if request not in blocked and not url.startswith((base, "data:", "blob:"))
    ]


async def test_swagger_ui_and_redoc_render_from_the_apis_own_assets(
    system: RunningSystem, browser: Any, screenshots: Path
) -> None:
    base = str(system.anonymous.base_url).rstrip("/")
    await asyncio.to_thread(browser.get, f"{base}/api/docs")
    await wait_for(browser, "document.querySelectorAll('.swagger-ui .opblock').length > 5", "Swagger UI's operations")
    title = browser.execute_script("return document.querySelector('.swagger-ui .info .title').innerText")
    assert "Pipeline API" in title
    assert browser.execute_script("return document.querySelector('.swagger-ui .btn.authorize') !== null")
    assert requests_outside(browser, base) == []
    browser.save_screenshot(str(screenshots / "swagger-ui.png"))

    await asyncio.to_thread(browser.get, f"{base}/api/redoc")  # served there, as at /api/docs/redoc
    await wait_for(browser, "document.querySelectorAll('[data-section-id]').length > 5", "ReDoc's sections")
    assert requests_outside(browser, base) == []
    browser.save_screenshot(str(screenshots / "redoc.png"))
    assert (screenshots / "swagger-ui.png").stat().st_size > 10_000


async def test_the_graphql_ide_runs_a_query_with_the_token_set_in_its_headers_editor(
    system: RunningSystem, browser: Any, screenshots: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    created = await system.admin.post(
        "/api/v1/ingest", json={"content": "seen in a browser", "content_type": "text/plain"}
    )
    assert created.status_code == 201, created.text
    object_id, position = created.json()["object_id"], created.json()["position"]
    token = system.admin.headers["Authorization"].removeprefix("Bearer ")
    base = str(system.anonymous.base_url).rstrip("/")

    await asyncio.to_thread(browser.get, f"{base}/api/graphql")
    editors = ".graphiql-container .CodeMirror"
    await wait_for(browser, f"document.querySelectorAll('{editors}').length >= 3", "GraphiQL's editors")
    assert requests_outside(browser, base) == []

    def type_into(selector: str, text: str) -> None:
        """Click into a CodeMirror editor, select what it holds and type over it, as a user would."""
        editor = browser.find_element(By.CSS_SELECTOR, selector)
        editor.click()
        select_all = ActionChains(browser).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL)
        select_all.send_keys(Keys.DELETE).send_keys(text).perform()

    def value_of(selector: str) -> str:
        return str(browser.execute_script(f"return document.querySelector('{selector}').CodeMirror.getValue()"))

    query_editor, response = ".graphiql-query-editor .CodeMirror", ".graphiql-response .CodeMirror"
    headers_editor = ".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror"
    query = f'query Seen {{ dataObject(objectId: "{object_id}", consistencyToken: "{position}") {{ objectId owner'
    type_into(query_editor, query)
    assert value_of(query_editor).startswith(query)  # the editor closed the braces itself

    def run() -> None:
        browser.find_element(By.CSS_SELECTOR, ".graphiql-execute-button").click()

    # Without a token the operation is refused, though the page opened.
    run()
    refused = await wait_for(
        browser, f"document.querySelector('{response}').CodeMirror.getValue()", "the refusal in the response pane"
    )
    assert "401" in refused or "authentication" in refused.lower(), refused

    type_into(headers_editor, f'{{"Authorization": "Bearer {token}')
    headers = json.loads(value_of(headers_editor))
    assert headers == {"Authorization": f"Bearer {token}"}
    run()
    answer = await wait_for(
        browser,
        f"(v => v.includes('{object_id}') && v)(document.querySelector('{response}').CodeMirror.getValue())",
        "the data object in the response pane",
    )
    shown = json.loads(answer)["data"]["dataObject"]
    assert shown["objectId"] == object_id and shown["owner"]
    browser.save_screenshot(str(screenshots / "graphql-ide.png"))

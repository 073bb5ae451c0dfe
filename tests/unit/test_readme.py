"""The README documents every setting the code reads."""

from __future__ import annotations

from pathlib import Path

from infra.runtime.settings import ENV_ALIASES, env_name, iter_settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_and_its_environment_variable_is_in_the_readme() -> None:
    missing = [env_name(s, k) for s, k, _ in iter_settings() if f"`{env_name(s, k)}`" not in README]
    missing += [name for name in ENV_ALIASES if f"`{name}`" not in README]
    assert not missing, f"README lacks: {missing}"


def test_readme_names_the_two_set_up_commands() -> None:
    assert "make run" in README and "make test" in README

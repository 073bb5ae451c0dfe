from __future__ import annotations

from pathlib import Path

import pytest

from infra.runtime.settings import SettingsError, env_name, iter_settings, load_settings


def test_defaults_need_no_file_and_no_environment() -> None:
    settings = load_settings(environ={})
    assert settings.server.port == 8000
    assert settings.storage.max_content_bytes == 10 * 1024 * 1024


def test_yaml_file_in_the_spec_shape_with_variable_substitution(tmp_path: Path) -> None:
    config = tmp_path / "api_gateway.yaml"
    config.write_text(
        "server:\n  host: 0.0.0.0\n  port: 9000\n"
        "authentication:\n  secret_key: ${SECRET}\n  access_token_expire_minutes: 15\n"
        "rate_limiting:\n  redis_url: ${NOPE:-redis://127.0.0.1:6390/1}\n"
        "cors:\n  origins:\n    - http://a.example\n    - http://b.example\n"
    )
    settings = load_settings(config, environ={"SECRET": "s" * 40})
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 9000)
    assert settings.authentication.secret_key == "s" * 40
    assert settings.authentication.access_token_expire_minutes == 15
    assert settings.cors.origins == ("http://a.example", "http://b.example")
    assert settings.redis.url == "redis://127.0.0.1:6390/1"  # the spec's rate_limiting.redis_url is honoured


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  port: 9000\nkafka:\n  partitions: 8\n")
    env = {"PIPELINE_CONFIG": str(config), "PIPELINE_PORT": "9100", "PIPELINE_KAFKA_PARTITIONS": "3"}
    settings = load_settings(environ=env)
    assert settings.server.port == 9100
    assert settings.kafka.partitions == 3


def test_short_names_for_service_urls() -> None:
    env = {"DATABASE_URL": "postgresql://x/y", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "REDIS_URL": "redis://z"}
    settings = load_settings(environ=env)
    assert settings.database.url == "postgresql://x/y"
    assert settings.kafka.bootstrap_servers == "127.0.0.1:1"
    assert settings.redis.url == "redis://z"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nonsense: {a: 1}\n", "unknown settings section"),
        ("server:\n  prot: 1\n", "unknown setting server.prot"),
        ("server:\n  port: many\n", "unusable value"),
        ("server: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_settings_files_are_refused_with_a_clear_message(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=message):
        load_settings(config, environ={})


def test_every_setting_has_a_long_environment_name() -> None:
    names = [env_name(section, key) for section, key, _ in iter_settings()]
    assert "PIPELINE_KAFKA_TOPIC_PREFIX" in names
    assert len(names) == len(set(names))


def test_the_password_hash_cost_comes_from_the_settings_and_is_checked() -> None:
    from argon2 import PasswordHasher

    from infra.adapters.credentials import password_hasher

    default = password_hasher(load_settings(environ={}).authentication)
    library = PasswordHasher()
    assert (default.time_cost, default.memory_cost, default.parallelism) == (
        library.time_cost,
        library.memory_cost,
        library.parallelism,
    )
    cheap = {
        "PIPELINE_AUTHENTICATION_PASSWORD_HASH_TIME_COST": "1",
        "PIPELINE_AUTHENTICATION_PASSWORD_HASH_MEMORY_KIB": "1024",
        "PIPELINE_AUTHENTICATION_PASSWORD_HASH_PARALLELISM": "1",
    }
    hasher = password_hasher(load_settings(environ=cheap).authentication)
    digest = hasher.hash("a long enough password")
    assert digest.startswith("$argon2id$") and "m=1024,t=1,p=1" in digest
    assert library.verify(digest, "a long enough password")  # a hash carries its cost: any hasher verifies it
    for bad in (
        {"PIPELINE_AUTHENTICATION_PASSWORD_HASH_TIME_COST": "0"},
        {**cheap, "PIPELINE_AUTHENTICATION_PASSWORD_HASH_MEMORY_KIB": "7"},
    ):
        with pytest.raises(SettingsError, match="password_hash"):
            load_settings(environ=bad)


def _other_value(value: object) -> tuple[str, object]:
    """A value unlike the default, as an environment variable spells it and as the setting then holds it."""
    if isinstance(value, bool):
        return ("false" if value else "true"), not value
    if isinstance(value, int):
        return str(value + 7), value + 7
    if isinstance(value, float):
        return str(value + 0.5), value + 0.5
    if isinstance(value, tuple):
        return "a, b", ("a", "b")
    return "other_value", "other_value"


@pytest.mark.parametrize(("section", "key", "default"), list(iter_settings()))
def test_every_setting_is_read_from_its_environment_variable(section: str, key: str, default: object) -> None:
    """The README's table promises PIPELINE_<SECTION>_<KEY> for every setting: each one is honoured."""
    text, expected = _other_value(default)
    valid = {  # settings that take only some strings: another valid one
        ("search", "language"): "english",
        ("rate_limiting", "fallback"): "open",
        ("graphql", "ide"): "apollo-sandbox",
        ("monitoring", "log_format"): "json",
    }
    if (section, key) in valid:
        text = expected = valid[(section, key)]
    if key.endswith("_limit") and isinstance(default, str):
        text = expected = "7 per second"
    if (section, key) == ("storage", "event_content_bytes"):
        text, expected = "0", 0
    if (section, key) == ("authentication", "password_hash_parallelism"):
        text, expected = "2", 2  # memory_kib must stay at least 8 x the parallelism
    settings = load_settings(environ={env_name(section, key): text})
    assert getattr(getattr(settings, section), key) == expected


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("PIPELINE_RATE_LIMITING_USER_LIMIT", "lots", "rate_limiting.user_limit must be a rate"),
        ("PIPELINE_RATE_LIMITING_BURST_LIMIT", "100 per fortnight", "rate_limiting.burst_limit must be a rate"),
        ("PIPELINE_WEBSOCKET_MESSAGE_LIMIT", "600", "websocket.message_limit must be a rate"),
        ("PIPELINE_RATE_LIMITING_FALLBACK", "closed", "rate_limiting.fallback must be one of memory, open"),
        ("PIPELINE_GRAPHQL_IDE", "playground", "graphql.ide must be one of graphiql, apollo-sandbox"),
    ],
)
def test_values_the_code_cannot_use_are_refused_when_read(variable: str, value: str, message: str) -> None:
    """Refused with the setting's name when the settings are read, not later as a traceback in a log."""
    with pytest.raises(SettingsError, match=message):
        load_settings(environ={variable: value})


def test_a_short_name_wins_over_the_long_one_and_lists_and_booleans_read_as_documented() -> None:
    env = {"PIPELINE_PORT": "9001", "PIPELINE_SERVER_PORT": "9002", "PIPELINE_CORS_METHODS": "GET, POST"}
    settings = load_settings(environ={**env, "PIPELINE_SERVER_RELOAD": "on", "PIPELINE_CORS_CREDENTIALS": "no"})
    assert settings.server.port == 9001  # README: the short name wins
    assert settings.cors.methods == ("GET", "POST")
    assert settings.server.reload is True and settings.cors.credentials is False

"""docker-compose.yml cannot run here (no Docker engine), so its shape is checked against the code."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from infra.runtime.settings import ENV_ALIASES, env_name, iter_settings

ROOT = Path(__file__).resolve().parents[2]
KNOWN = set(ENV_ALIASES) | {env_name(section, key) for section, key, _ in iter_settings()}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_broker_the_databases_the_api_and_each_worker() -> None:
    services = compose()["services"]
    assert {"kafka", "postgres", "redis", "api", "processor", "projections"} <= set(services)
    assert services["processor"]["command"] == ["pipeline", "worker", "processor"]
    assert services["projections"]["command"] == ["pipeline", "worker", "projections"]
    assert services["api"]["command"] == ["pipeline", "api"]


def test_kafka_image_is_the_version_of_the_pinned_jars() -> None:
    pom = (ROOT / "infra" / "provision" / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert version, "infra/provision/kafka/pom.xml pins kafka.version"
    assert compose()["services"]["kafka"]["image"] == f"apache/kafka:{version.group(1)}"


def test_every_pipeline_variable_in_compose_is_a_setting_the_code_reads() -> None:
    for name, service in compose()["services"].items():
        if name in {"kafka", "postgres", "redis"}:
            continue
        env = service["environment"]
        unknown = set(env) - KNOWN
        assert not unknown, f"{name} sets variables the code does not read: {unknown}"
        for required in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "SECRET_KEY"):
            assert required in env, f"{name} lacks {required}"


def test_compose_service_urls_point_at_compose_services() -> None:
    services = compose()["services"]
    env = services["api"]["environment"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"].split(":")[0] in services
    assert re.search(r"@(\w+):", env["DATABASE_URL"]).group(1) in services  # type: ignore[union-attr]
    assert re.search(r"//(\w+):", env["REDIS_URL"]).group(1) in services  # type: ignore[union-attr]

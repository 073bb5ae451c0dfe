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
    from infra.runtime.workers import WORKERS

    services = compose()["services"]
    assert {"kafka", "postgres", "redis", "api", *WORKERS} <= set(services)
    for worker in WORKERS:  # every worker `pipeline run` supervises is a service of its own
        assert services[worker]["command"] == ["pipeline", "worker", worker]
    assert services["api"]["command"] == ["pipeline", "api"]


def test_each_process_mounts_what_it_reads_and_writes_under_the_data_dir() -> None:
    from infra.runtime.heartbeat import heartbeat_path
    from infra.runtime.workers import WORKERS

    services = compose()["services"]
    data_dir = services["api"]["environment"]["PIPELINE_DATA_DIR"]
    blobs = f"{data_dir}/blobs"  # storage.blob_dir's default under PIPELINE_DATA_DIR
    heartbeats = str(heartbeat_path(data_dir, "x").parent)
    mounts = {name: {v.split(":")[1] for v in services[name].get("volumes", [])} for name in ("api", *WORKERS)}
    for name in ("api", "projections", "executor"):  # content: served, indexed, read and written by nodes
        assert blobs in mounts[name], f"{name} lacks the blob store"
    assert f"{data_dir}/processor" in mounts["processor"]  # its aggregate state (infra/runtime/bootstrap.py)
    for name in mounts:  # the workers write heartbeats; the API reads them for /health, /ready and /metrics
        assert heartbeats in mounts[name], f"{name} lacks the shared heartbeats volume"


def test_the_api_listens_where_compose_and_the_dockerfile_say() -> None:
    from infra.runtime.settings import Settings

    api = compose()["services"]["api"]
    port = api["environment"]["PIPELINE_PORT"]
    assert api["environment"]["PIPELINE_HOST"] == "0.0.0.0"  # reachable from outside its container
    assert any(mapping.endswith(f":{port}") for mapping in api["ports"])
    assert f"EXPOSE {port}" in (ROOT / "Dockerfile").read_text()
    probe = " ".join(api["healthcheck"]["test"])
    assert f"127.0.0.1:{port}{Settings().monitoring.health_check_path}" in probe


def test_the_image_holds_every_package_the_project_installs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"include = \[([^\]]+)\]", pyproject)
    assert include, "pyproject.toml lists its packages"
    for package in re.findall(r'"(\w+)\*"', include.group(1)):
        assert f"COPY {package} {package}" in dockerfile, f"the Dockerfile does not copy {package}/"


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

"""Shared fixtures: real Apache Kafka, PostgreSQL and Redis for the whole session.

The session starts them with the same code as `make run` (infra.provision.services) unless
KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL / REDIS_URL name running ones. Each test gets its own
topic prefix, PostgreSQL schema and data directory, so tests never see each other's data.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.runtime.settings import Settings, load_settings

ADMIN_USERNAME = "root-admin"
ADMIN_PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    given = {name: os.environ.get(name, "") for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL")}
    if all(given.values()):
        yield given
        return
    from infra.provision.services import ManagedServices

    data_dir = tmp_path_factory.mktemp("services")
    managed = ManagedServices(
        data_dir,
        kafka_bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None,
        database_url=os.environ.get("DATABASE_URL") or None,
        redis_url=os.environ.get("REDIS_URL") or None,
    )
    endpoints = managed.start()
    try:
        yield {
            "KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka_bootstrap,
            "DATABASE_URL": endpoints.database_url,
            "REDIS_URL": endpoints.redis_url,
        }
    finally:
        managed.stop()


@pytest.fixture
def isolated_env(services: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Environment variables for one test's own topics, schema and data directory."""
    return environment_for(services, tmp_path)


def environment_for(services: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Environment variables for a new set of topics, a new schema and a data directory under ``tmp_path``
    (also for module-scoped fixtures that share one system between tests)."""
    name = f"t{uuid.uuid4().hex[:12]}"
    return {
        **services,
        "PIPELINE_KAFKA_TOPIC_PREFIX": name,
        "PIPELINE_DATABASE_SCHEMA": name,
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "PIPELINE_KAFKA_PARTITIONS": "2",
        "PIPELINE_CONSISTENCY_WAIT_TIMEOUT_SECONDS": "15",
        "PIPELINE_KAFKA_COMMAND_TIMEOUT_SECONDS": "30",
        "SECRET_KEY": "test-secret-" + uuid.uuid4().hex + uuid.uuid4().hex,
        "PIPELINE_ADMIN_USERNAME": ADMIN_USERNAME,
        "PIPELINE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        # Load tests ingest hundreds of objects as the admin; the rate-limit tests set their own limits.
        "PIPELINE_RATE_LIMITING_ADMIN_LIMIT": "1000000 per hour",
        "PIPELINE_RATE_LIMITING_BURST_LIMIT": "100000 per minute",
        # Argon2id at its cheapest: the suite logs in and sets passwords hundreds of times, at ~0.4 s of
        # CPU each with the default cost; the same code hashes and verifies either way.
        "PIPELINE_AUTHENTICATION_PASSWORD_HASH_TIME_COST": "1",
        "PIPELINE_AUTHENTICATION_PASSWORD_HASH_MEMORY_KIB": "1024",
        "PIPELINE_AUTHENTICATION_PASSWORD_HASH_PARALLELISM": "1",
    }


@pytest.fixture
def settings(isolated_env: dict[str, str]) -> Settings:
    return load_settings(environ=isolated_env)


def with_schema(settings: Settings, schema: str) -> Settings:
    return dataclasses.replace(settings, database=dataclasses.replace(settings.database, schema=schema))

"""runtime.json: what a running `make run` is made of, so other commands can find it.

The supervisor writes ``<data_dir>/runtime.json`` (endpoints, schema, topic prefix, process ids, its own
pid) and removes it when it stops. A `pipeline` command run beside it with ``DATABASE_URL``,
``KAFKA_BOOTSTRAP_SERVERS`` or ``REDIS_URL`` unset takes them (and the schema, topic prefix and secret
key) from that file, so ``pipeline user create`` works in a second terminal without exporting anything.
A file whose supervisor is gone (killed with SIGKILL) is ignored: its endpoints may be dead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infra.runtime.settings import Settings

RUNTIME_FILE = "runtime.json"
DATA_DIR_VARIABLES = ("PIPELINE_DATA_DIR", "PIPELINE_STORAGE_DATA_DIR")
DEFAULT_DATA_DIR = ".data"
# runtime.json key -> the variable it stands in for (only when that variable is unset)
FILLS = {
    "database_url": "DATABASE_URL",
    "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "redis_url": "REDIS_URL",
    "schema": "PIPELINE_DATABASE_SCHEMA",
    "topic_prefix": "PIPELINE_KAFKA_TOPIC_PREFIX",
}


def write_runtime(
    data_dir: Path, settings: Settings, pids: dict[str, int], service_pids: dict[str, int]
) -> dict[str, Any]:
    """Write runtime.json for the system ``settings`` describe (atomically); return what was written."""
    runtime = {
        "api": f"http://{settings.server.host}:{settings.server.port}",
        "database_url": settings.database.url,
        "schema": settings.database.schema,
        "kafka_bootstrap_servers": settings.kafka.bootstrap_servers,
        "topic_prefix": settings.kafka.topic_prefix,
        "redis_url": settings.redis.url,
        "supervisor_pid": os.getpid(),
        "pids": pids,
        "service_pids": service_pids,
    }
    tmp = data_dir / f"{RUNTIME_FILE}.tmp"
    tmp.write_text(json.dumps(runtime, indent=2))
    tmp.replace(data_dir / RUNTIME_FILE)  # readers never see half a file
    return runtime


def read_runtime(data_dir: Path) -> dict[str, Any] | None:
    """The running system's runtime.json, or None (no file, unreadable, or its supervisor is gone)."""
    try:
        runtime = json.loads((data_dir / RUNTIME_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(runtime, dict) or not _alive(runtime.get("supervisor_pid")):
        return None
    return runtime


def with_running_system(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with what a running system's runtime.json supplies for the variables it lacks."""
    env = dict(environ)
    data_dir = Path(next((env[v] for v in DATA_DIR_VARIABLES if env.get(v)), DEFAULT_DATA_DIR))
    runtime = read_runtime(data_dir)
    if runtime is None:
        return env
    for key, variable in FILLS.items():
        if not env.get(variable) and runtime.get(key):
            env[variable] = str(runtime[key])
    secret = data_dir / "secret_key"  # the key the supervisor generated and handed to its children
    if not env.get("SECRET_KEY") and not env.get("PIPELINE_AUTHENTICATION_SECRET_KEY") and secret.is_file():
        env["SECRET_KEY"] = secret.read_text().strip()
    return env


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    return True

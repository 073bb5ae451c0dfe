"""The write path spread over several processes: two API processes (server.workers = 2), two
command processors and two projection workers sharing the partitions through their consumer groups.

One system for the module (4 partitions, so each processor and each projection worker owns some).
Each processor has its own data directory, as on separate machines: a partition that moves is
restored from the state topic, not from a neighbour's files.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra.runtime.rebuild import rebuild_read_models
from infra.runtime.settings import Settings, load_settings
from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME, environment_for
from tests.integration.conftest import free_port, login
from tests.integration.harness import Worker, eventually, query, snapshot_read_models
from tests.integration.test_crash_recovery import DATA_EVENTS, ingest_many

pytestmark = pytest.mark.slow


class System:
    def __init__(self, env: dict[str, str], root: Path) -> None:
        self.env = env
        self.port = free_port()
        self.settings = load_settings(environ=env)
        logs = root / "logs"

        def own_data(name: str) -> dict[str, str]:
            return {**env, "PIPELINE_DATA_DIR": str(root / name)}

        self.processors = [Worker("processor", own_data(f"p{i}"), logs, f"processor-{i}") for i in range(2)]
        self.projections = [Worker("projections", own_data(f"r{i}"), logs, f"projections-{i}") for i in range(2)]
        self.api = Worker("api", {**env, "PIPELINE_PORT": str(self.port), "PIPELINE_SERVER_WORKERS": "2"}, logs)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def all(self) -> list[Worker]:
        return [*self.processors, *self.projections, self.api]


@pytest.fixture(scope="module")
def system(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    root = tmp_path_factory.mktemp("scale")
    env = {
        **environment_for(services, root / "api"),
        "PIPELINE_KAFKA_PARTITIONS": "4",
        # Shared like an object store would be: the API writes blobs, projections read them.
        "PIPELINE_STORAGE_BLOB_DIR": str(root / "blobs"),
    }
    system = System(env, root)
    for worker in system.all():
        worker.start()
    try:
        yield system
    finally:
        for worker in system.all():
            worker.stop()


async def admin_client(system: System) -> httpx.AsyncClient:
    """A client with the admin's token, once the API answers and the first-start admin exists."""
    anonymous = httpx.AsyncClient(base_url=system.url, timeout=60)

    async def admin_ready() -> bool:
        if system.api.process is not None and system.api.process.poll() is not None:
            raise AssertionError(f"the API exited:\n{system.api.log()[-3000:]}")
        try:
            body = {"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD}
            return (await anonymous.post("/api/v1/auth/login", json=body)).status_code == 200
        except httpx.TransportError:
            return False

    async with anonymous:
        await eventually(admin_ready, timeout=90, what="the API and its first-start admin")
        tokens = await login(anonymous, ADMIN_USERNAME, ADMIN_PASSWORD)
    return httpx.AsyncClient(
        base_url=system.url, timeout=60, headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )


def serving_processes(parent: int, port: int) -> dict[int, int]:
    """pid -> established connections to ``port`` held by each child of ``parent`` (from /proc)."""
    established: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    established.add(fields[9])
    counts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            links = [os.readlink(f"/proc/{entry}/fd/{fd}") for fd in os.listdir(f"/proc/{entry}/fd")]
        except OSError:
            continue
        held = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in established)
        if held:
            counts[int(entry)] = held
    return counts


async def test_two_api_processes_each_get_the_outcomes_of_their_own_commands(system: System) -> None:
    async with await admin_client(system) as admin:
        token = admin.headers["Authorization"]
    assert system.api.process is not None
    # One connection per client: each stays with the API process that accepted it.
    clients: list[httpx.AsyncClient] = []

    async def ingest(http: httpx.AsyncClient, i: int) -> None:
        body = {"content": f"served {i}", "content_type": "text/plain"}
        response = await http.post("/api/v1/ingest", json=body)
        assert response.status_code == 201, response.text
        read = await http.get(
            f"/api/v1/data/{response.json()['object_id']}", headers={"X-Consistency-Token": response.json()["position"]}
        )
        assert read.status_code == 200, read.text

    try:

        async def both_processes_serve() -> bool:
            batch = [
                httpx.AsyncClient(
                    base_url=system.url,
                    timeout=60,
                    headers={"Authorization": token},
                    limits=httpx.Limits(max_connections=1),
                )
                for _ in range(16)
            ]
            clients.extend(batch)
            await asyncio.gather(*(ingest(http, i) for i, http in enumerate(batch)))
            assert system.api.process is not None
            return len(serving_processes(system.api.process.pid, system.port)) >= 2

        await eventually(both_processes_serve, timeout=120, what="connections accepted by both API processes")
        # Again on the same connections: every process answers its own commands' outcomes.
        await asyncio.gather(*(ingest(http, len(clients) + i) for i, http in enumerate(clients)))
    finally:
        await asyncio.gather(*(http.aclose() for http in clients))


async def test_one_processor_and_one_projection_worker_killed_under_load_lose_and_double_nothing(
    system: System,
) -> None:
    settings: Settings = system.settings
    async with await admin_client(system) as client:

        async def crash_during_load() -> None:
            await asyncio.sleep(1.5)
            system.processors[0].kill()
            system.projections[0].kill()

        created, _ = await asyncio.gather(ingest_many(client, 400, "scale", concurrency=32), crash_during_load())
        ids = [c["object_id"] for c in created]
        assert len(set(ids)) == 400

        # Retried with the same keys (the survivors own every partition now): the first outcomes.
        replays = await ingest_many(client, 400, "scale", concurrency=32)
        assert [r["object_id"] for r in replays] == ids
        assert [r["position"] for r in replays] == [c["position"] for c in created]

    async def all_applied() -> bool:
        rows = await query(
            settings,
            f"SELECT count(*), count(DISTINCT aggregate_id) FROM audit_log WHERE {DATA_EVENTS}"
            " AND aggregate_id::text = ANY(%s)",
            (ids,),
        )
        assert rows[0][0] <= 400, f"an acknowledged command applied twice: {rows}"
        return bool(rows == [(400, 400)])

    await eventually(all_applied, timeout=180, what="the surviving projection worker to apply every event")
    versions = await query(
        settings, "SELECT DISTINCT version FROM aggregate_versions WHERE aggregate_id::text = ANY(%s)", (ids,)
    )
    assert versions == [(1,)]
    # Every partition has a live owner again: the positions reach the end of the log.
    fresh = await rebuild_read_models(settings, into=f"{settings.database.schema}_fresh")
    assert await snapshot_read_models(settings) == await snapshot_read_models(settings, schema=fresh)
    for worker in (system.processors[1], system.projections[1]):
        assert worker.process is not None and worker.process.poll() is None, worker.log()[-3000:]

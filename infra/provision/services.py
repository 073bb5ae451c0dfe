"""Apache Kafka, PostgreSQL and Redis as child processes on 127.0.0.1, for `make run` and the tests.

Everything lives under one data directory, so a restart finds the data (and, when still free, the same
ports) again. Only processes started here are ever stopped, by PID, and only those are restarted when
they die (``ManagedServices.watch``); a service given by its address belongs to someone else.

    python -m infra.provision.services up --data-dir .data
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from infra.provision import kafka_broker, postgres_server, redis_server
from infra.provision.kafka_broker import kafka_jars

__all__ = ["Backoff", "Endpoints", "ManagedServices", "kafka_jars", "main"]

KAFKA_START_TIMEOUT = 90.0
POSTGRES_START_TIMEOUT = 60.0
REDIS_START_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str  # "127.0.0.1:PORT"
    database_url: str  # "postgresql://postgres@127.0.0.1:PORT/pipeline"
    redis_url: str  # "redis://127.0.0.1:PORT/0"


@dataclasses.dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    logs: tuple[Path, ...]
    stop_signal: signal.Signals
    stop_timeout: float
    command: list[str]
    popen: dict[str, Any]
    ready: Callable[[], bool]
    started: float = dataclasses.field(default_factory=time.monotonic)
    ready_at: float | None = None  # None while (re)starting
    failures: int = 0  # restarts in a row, for the backoff
    restart_at: float | None = None  # when an exited service is due to be started again


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Delays between restarts of a process that keeps dying: first, doubled each time, capped."""

    first: float = 1.0
    limit: float = 30.0
    reset_after: float = 60.0  # up this long: the next death starts over at `first`

    def delay(self, failures: int) -> float:
        """The wait before restart number ``failures + 1`` in a row."""
        return min(self.first * 2**failures, self.limit)


class ManagedServices:
    """Starts the services not given as an address, and stops exactly those it started.

    An explicit kafka_bootstrap / database_url / redis_url means that service already runs there:
    nothing is started for it and its address is passed through unchanged.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        kafka_bootstrap: str | None = None,
        database_url: str | None = None,
        redis_url: str | None = None,
        log: Callable[[str], None] = print,
        backoff: Backoff | None = None,
    ) -> None:
        self._backoff = backoff or Backoff()
        self._data_dir = Path(data_dir).expanduser().resolve()
        self._logs = self._data_dir / "logs"
        self._given = (kafka_bootstrap, database_url, redis_url)
        self._log = log
        self._children: list[_Child] = []
        self._claimed: set[int] = set()
        self._endpoints: Endpoints | None = None

    def start(self) -> Endpoints:
        """Start what is missing, wait until each service accepts connections, return where they are.

        Idempotent. On any failure (or Ctrl-C) the processes started so far are stopped and a
        RuntimeError carries the tail of the failing service's log.
        """
        if self._endpoints is not None:
            return self._endpoints
        kafka, database, redis = self._given
        self._logs.mkdir(parents=True, exist_ok=True)
        try:
            # Fail on a missing program before waiting on anything slow.
            if database is None:
                postgres_server.bin_dir(self._data_dir / "postgres" / "data")
            if redis is None:
                redis_server.binary()
            # Kafka first: its JVM boots while PostgreSQL and Redis come up.
            kafka_port = None if kafka else self._launch_kafka()
            pg_port = None if database else self._launch_postgres()
            redis_port = None if redis else self._launch_redis()
            if pg_port is not None:
                self._wait("postgres", lambda: postgres_server.server_ready(pg_port), POSTGRES_START_TIMEOUT)
                postgres_server.ensure_database(pg_port)
            if redis_port is not None:
                self._wait("redis", lambda: redis_server.server_ready(redis_port), REDIS_START_TIMEOUT)
            if kafka_port is not None:
                address = f"127.0.0.1:{kafka_port}"
                self._wait("kafka", lambda: kafka_broker.broker_ready(address), KAFKA_START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self._endpoints = Endpoints(
            kafka_bootstrap=kafka or f"127.0.0.1:{kafka_port}",
            database_url=database or postgres_server.url(pg_port or 0),
            redis_url=redis or redis_server.url(redis_port or 0),
        )
        return self._endpoints

    def stop(self) -> None:
        """Stop the processes started here: their stop signal, a bounded wait, then SIGKILL."""
        atexit.unregister(self.stop)
        # Signal all first so the shutdowns overlap (Kafka's controlled shutdown takes a few seconds).
        for child in self._children:
            if child.process.poll() is None:
                child.process.send_signal(child.stop_signal)
        for child in reversed(self._children):
            try:
                child.process.wait(timeout=child.stop_timeout)
            except subprocess.TimeoutExpired:
                self._log(
                    f"{child.name}: still running {child.stop_timeout:.0f} s after {child.stop_signal.name}; SIGKILL"
                )
                child.process.kill()
                child.process.wait()
        self._children.clear()
        self._claimed.clear()
        self._endpoints = None

    def watch(self) -> None:
        """Restart each service started here that has exited: same command, data directory and port.

        Call it periodically (the supervisor does, every half second). Clients keep their address:
        Kafka's bootstrap, PostgreSQL's and Redis's URLs stay valid. Restarts back off (``Backoff``)
        while a service keeps dying, and each one is logged with the log file to look at.
        """
        now = time.monotonic()
        for child in self._children:
            code = child.process.poll()
            if code is None:
                if child.ready_at is None and child.restart_at is None and child.ready():
                    child.ready_at = time.monotonic()
                    self._log(f"{child.name}: ready again, {child.ready_at - child.started:.1f} s after its restart")
                elif child.ready_at is not None and now - child.ready_at > self._backoff.reset_after:
                    child.failures = 0
                continue
            if child.restart_at is None:
                delay = self._backoff.delay(child.failures)
                child.failures += 1
                child.restart_at = now + delay
                child.ready_at = None
                self._log(
                    f"{child.name} (pid {child.process.pid}) exited with code {code}; restarting it in {delay:.1f} s"
                    f" on the same port (log: {child.logs[-1]})"
                )
            elif now >= child.restart_at:
                child.restart_at = None
                child.process = self._popen(child.command, child.logs[0], child.popen)
                child.started = time.monotonic()
                self._log(f"{child.name}: restarted as pid {child.process.pid}")

    def ready(self) -> bool:
        """True when every service started here runs and has answered since its last (re)start."""
        return all(child.ready_at is not None and child.process.poll() is None for child in self._children)

    def pids(self) -> dict[str, int]:
        """Process ids of the services started here (for operators and benchmarks)."""
        return {child.name: child.process.pid for child in self._children if child.process.poll() is None}

    def __enter__(self) -> ManagedServices:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _launch_kafka(self) -> int:
        home = self._data_dir / "kafka"
        ports, running = self._claim_ports(
            "kafka",
            home / "ports.json",
            ("broker", "controller"),
            lambda p: kafka_broker.broker_ready(f"127.0.0.1:{p}"),
        )
        if not running:
            jars = kafka_jars(log=self._log)
            server = kafka_broker.write_config(home, self._logs, ports["broker"], ports["controller"])
            kafka_broker.format_storage(jars, home, self._log)
            command = kafka_broker.java_command(jars, home, "kafka.Kafka", str(server), heap=True)
            self._log(f"kafka: starting Apache Kafka {kafka_broker.kafka_version()} on 127.0.0.1:{ports['broker']}")
            self._spawn(
                "kafka",
                command,
                self._logs / "kafka.out",
                (self._logs / "kafka.log",),
                ready=lambda: kafka_broker.broker_ready(f"127.0.0.1:{ports['broker']}"),
                cwd=home,
            )
        return ports["broker"]

    def _launch_postgres(self) -> int:
        root = self._data_dir / "postgres"
        root.mkdir(parents=True, exist_ok=True)
        ports, running = self._claim_ports("postgres", root / "ports.json", ("port",), postgres_server.server_ready)
        if not running:
            pgdata, sockets = root / "data", root / "run"
            pgdata.mkdir(mode=0o700, exist_ok=True)
            sockets.mkdir(exist_ok=True)
            postgres_server.give_to_postgres_user(root, self._log)
            postgres_server.init_cluster(pgdata, self._log)
            self._log(f"postgres: starting on 127.0.0.1:{ports['port']}")
            command = postgres_server.server_command(pgdata, ports["port"], sockets)
            # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart") waits for every client to leave.
            self._spawn(
                "postgres",
                command,
                self._logs / "postgres.log",
                ready=lambda: postgres_server.server_ready(ports["port"]),
                stop_signal=signal.SIGINT,
                cwd=root,
                **(postgres_server.run_as()),
            )
        return ports["port"]

    def _launch_redis(self) -> int:
        home = self._data_dir / "redis"
        home.mkdir(parents=True, exist_ok=True)
        ports, running = self._claim_ports("redis", home / "ports.json", ("port",), redis_server.server_ready)
        if not running:
            self._log(f"redis: starting on 127.0.0.1:{ports['port']}")
            command = redis_server.server_command(home, ports["port"])
            self._spawn(
                "redis",
                command,
                self._logs / "redis.log",
                ready=lambda: redis_server.server_ready(ports["port"]),
                stop_timeout=15.0,
                cwd=home,
            )
        return ports["port"]

    def _claim_ports(
        self, name: str, file: Path, names: tuple[str, ...], serving: Callable[[int], bool]
    ) -> tuple[dict[str, int], bool]:
        """The ports saved in file when still free; else new ones. True when our service already serves them.

        The latter is a server left running from this data directory (say, by a process killed with
        SIGKILL): it is used, not started again, and not stopped by us.
        """
        try:
            saved = {key: int(json.loads(file.read_text())[key]) for key in names}
        except (OSError, ValueError, KeyError, TypeError):
            saved = {}
        if saved and not self._claimed & set(saved.values()):
            if all(_port_free(port) for port in saved.values()):
                self._claimed |= set(saved.values())
                return saved, False
            if serving(saved[names[0]]):
                self._log(f"{name}: already running on 127.0.0.1:{saved[names[0]]} (not started here); using it")
                return saved, True
            self._log(f"{name}: ports {sorted(saved.values())} are taken; choosing new ones")
        ports = dict(zip(names, self._free_ports(len(names)), strict=True))
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(ports) + "\n")
        return ports, False

    def _free_ports(self, count: int) -> list[int]:
        # The kernel may hand a port back out before the server we chose it for has bound it,
        # so remember every port given to one of our services.
        found: list[int] = []
        while len(found) < count:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            if port not in self._claimed:
                self._claimed.add(port)
                found.append(port)
        return found

    def _spawn(
        self,
        name: str,
        command: list[str],
        out: Path,
        logs: tuple[Path, ...] = (),
        *,
        ready: Callable[[], bool],
        stop_signal: signal.Signals = signal.SIGTERM,
        stop_timeout: float = 30.0,
        **popen: Any,
    ) -> None:
        process = self._popen(command, out, popen)
        self._children.append(_Child(name, process, (out, *logs), stop_signal, stop_timeout, command, popen, ready))
        atexit.register(self.stop)  # one registration: atexit.unregister drops every equal entry

    @staticmethod
    def _popen(command: list[str], out: Path, popen: dict[str, Any]) -> subprocess.Popen[bytes]:
        with out.open("ab") as sink:
            # A session of its own: a terminal's Ctrl-C reaches only us, and we stop the services
            # in order rather than all of them receiving SIGINT at once.
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **popen,
            )

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float) -> None:
        child = next((c for c in self._children if c.name == name), None)
        deadline = time.monotonic() + timeout
        while not ready():
            if child is not None and child.process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {child.process.returncode} while starting{_tails(child)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not accept connections within {timeout:.0f} s{_tails(child)}")
            time.sleep(0.2)
        if child is not None:
            child.ready_at = time.monotonic()
        self._log(f"{name}: ready" + (f", {time.monotonic() - child.started:.1f} s after its start" if child else ""))


def _port_free(port: int) -> bool:
    # SO_REUSEADDR as the servers themselves bind: a port in TIME_WAIT from our last run counts as free.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tails(child: _Child | None, lines: int = 30) -> str:
    parts = []
    for path in child.logs if child else ():
        text = path.read_text(errors="replace").strip().splitlines()[-lines:] if path.is_file() else []
        if text:
            parts.append(f"\n--- last lines of {path} ---\n" + "\n".join(text))
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    """`python -m infra.provision.services up --data-dir DIR`: start all three, print endpoints, run until stopped."""
    parser = argparse.ArgumentParser(
        prog="python -m infra.provision.services", description="Run Apache Kafka, PostgreSQL and Redis on 127.0.0.1."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser(
        "up",
        help="start all three, print their endpoints as JSON, stop them on Ctrl-C or SIGTERM",
        description="Start Kafka (KRaft, one node), PostgreSQL and Redis with their data under --data-dir, print"
        " {kafka_bootstrap, database_url, redis_url} as one JSON line on stdout (progress goes to stderr),"
        " and keep them running until Ctrl-C or SIGTERM.",
    )
    up.add_argument(
        "--data-dir", type=Path, default=Path(".data"), help="where their data and logs live (default: .data)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        with ManagedServices(args.data_dir, log=lambda line: print(line, file=sys.stderr, flush=True)) as managed:
            print(json.dumps(dataclasses.asdict(managed.start())), flush=True)
            while True:
                signal.pause()
    except KeyboardInterrupt:
        return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # A second Ctrl-C must not cut the orderly shutdown short and leave servers behind.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())

"""The `pipeline` command: run everything, or one part of it, and operate the system."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from infra.runtime.logs import configure_logging
from infra.runtime.runtime_file import with_running_system
from infra.runtime.settings import ENV_ALIASES, Settings, SettingsError, env_name, iter_settings, load_settings

# `pipeline worker NAME`: what each worker does (infra.runtime.workers.WORKERS runs them).
WORKER_HELP = {
    "processor": "the command processor: runs commands against their aggregates, appends their events to Kafka",
    "projections": "the projection runner: folds the events into the PostgreSQL read models",
    "executor": "the graph executor: runs submitted processing graphs node by node",
}


def build_parser() -> argparse.ArgumentParser:
    """Every `pipeline` command and its arguments."""
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Pipeline Gateway: event-sourced CQRS API gateway.",
        epilog="Beside a running `make run`, commands find its services in PIPELINE_DATA_DIR/runtime.json when"
        " DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS and REDIS_URL are unset. Exit codes: 0 done; 1 refused by the"
        " system or it could not be reached; 2 usage error or unusable input or setting.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser(
        "run",
        help="start everything on this machine: Kafka, PostgreSQL, Redis (unless given), the API and all workers",
        description="Start the whole system. Data lives under storage.data_dir (PIPELINE_DATA_DIR, default .data);"
        " DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS and REDIS_URL, when set, are used instead of starting services."
        " Ctrl-C stops it all.",
    )
    sub.add_parser(
        "api",
        help="run the HTTP API (uvicorn) on PIPELINE_HOST:PIPELINE_PORT",
        description="Run only the HTTP API, REST, GraphQL and WebSockets (what `pipeline run` supervises), on"
        " server.host:server.port with server.workers processes. Needs DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS,"
        " REDIS_URL and SECRET_KEY (or a running `pipeline run`'s runtime.json). Exit status 2 if the port is"
        " taken.",
    )
    worker = sub.add_parser(
        "worker",
        help="run one worker process",
        description="Run one worker in the foreground until SIGINT/SIGTERM (what `pipeline run` supervises);"
        " more than one of a kind share the topics' partitions. "
        + "; ".join(f"{name}: {text}" for name, text in WORKER_HELP.items())
        + ".",
    )
    worker.add_argument("name", choices=list(WORKER_HELP), help="which worker")
    projections = sub.add_parser("projections", help="operate the read models")
    projections_sub = projections.add_subparsers(dest="action", required=True, metavar="ACTION")
    rebuild = projections_sub.add_parser(
        "rebuild",
        help="rebuild the read models from offset 0 into a new schema, then (with --swap) replace the live ones",
        description="Progress goes to stderr: a bar with events/s and ETA on a terminal, a plain line every"
        " few seconds otherwise. The API keeps serving the live schema meanwhile.",
    )
    rebuild.add_argument(
        "--into", type=_schema, metavar="SCHEMA", help="schema to build into (default: <live schema>_rebuild_<time>)"
    )
    rebuild.add_argument("--swap", action="store_true", help="make the rebuilt schema the live one when caught up")
    rebuild.add_argument(
        "--only",
        action="append",
        metavar="READ_MODEL",
        help=f"rebuild only this read model (repeatable): {', '.join(_read_models())}; with --swap only its tables"
        " are replaced, the others are left untouched",
    )
    blobs = sub.add_parser("blobs", help="operate the blob store")
    blobs_sub = blobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    blobs_sub.add_parser(
        "check",
        help="list objects whose content the blob store lacks (exit 1 if any)",
        description="Looks up, for every live object whose content is in the blob store (storage.blob_dir), its"
        " blob; prints `missing: object ID content sha256:HASH` for each one absent. Progress goes to stderr."
        " Exit status: 0 none missing; 1 some missing, or the system could not be reached.",
    )
    from infra.cli.audit import add_parser as add_audit_parser
    from infra.cli.dlq import add_parser as add_dlq_parser
    from infra.cli.users import add_parser as add_user_parser

    add_dlq_parser(sub)
    add_user_parser(sub)
    add_audit_parser(sub)
    sub.add_parser(
        "settings",
        help="list every setting with its environment variable and current value",
        description="Prints `section.key = value    [ENVIRONMENT_VARIABLE]` for every setting, as this process"
        " sees it (defaults, then PIPELINE_CONFIG's YAML file, then the environment); secrets show as <set>."
        " Exit status 2 if a setting is unusable.",
    )
    services = sub.add_parser(
        "services",
        help="start only Kafka, PostgreSQL and Redis and print where they are",
        description="Start Kafka, PostgreSQL and Redis on free ports, print DATABASE_URL=...,"
        " KAFKA_BOOTSTRAP_SERVERS=... and REDIS_URL=... lines, and keep them running until SIGINT/SIGTERM.",
    )
    services.add_argument(
        "--data-dir", type=Path, metavar="DIR", help="where their data lives (default: storage.data_dir)"
    )
    return parser


def _read_models() -> list[str]:
    from infra.runtime.bootstrap import read_model_names

    return read_model_names()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in ("run", "services"):  # these start a system: never aim them at another one
            settings = load_settings()
        else:  # beside a running `make run`, find its services from runtime.json (infra.runtime.runtime_file)
            settings = load_settings(environ=with_running_system(os.environ))
        configure_logging(settings.monitoring)
        if args.command not in ("run", "api", "worker", "services"):  # an operator's command: its own output only
            logging.getLogger("aiokafka").setLevel(logging.WARNING)
    except SettingsError as exc:  # a message naming the setting, not a traceback (exit codes: README)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command in ("run", "api") and (taken := _port_taken(settings.server.host, settings.server.port)):
        print(
            f"error: cannot listen on {settings.server.host}:{settings.server.port} ({taken}); another"
            " `pipeline run` or program has it: stop it, or set PIPELINE_PORT (server.port) to a free port",
            file=sys.stderr,
        )
        return 2
    if args.command == "api":
        return _run_api(settings)
    if args.command == "worker":
        from infra.runtime import event_loop
        from infra.runtime.workers import WORKERS

        event_loop.run(WORKERS[args.name](settings))
        return 0
    try:
        return _operate(settings, args)
    except BrokenPipeError:  # `pipeline settings | head`: the reader has what it wanted, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except Exception as exc:  # the system is unreachable (or worse): a message and exit 1, not a traceback
        if not _unreachable(exc):
            raise
        print(f"error: cannot reach the system ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1


def _unreachable(exc: BaseException) -> bool:
    """Kafka, PostgreSQL or Redis did not answer (the exit status 1 of the epilog)."""
    from aiokafka.errors import KafkaError
    from psycopg import OperationalError
    from psycopg_pool import PoolTimeout
    from redis.exceptions import ConnectionError as RedisConnectionError

    return isinstance(exc, KafkaError | OperationalError | PoolTimeout | RedisConnectionError | ConnectionError)


def _operate(settings: Settings, args: argparse.Namespace) -> int:
    """The operator commands (projections, dlq, blobs, user, audit, settings), run and services."""
    if args.command == "run":  # given DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS or REDIS_URL may not answer
        from infra.runtime.supervisor import run_everything

        return run_everything(settings)
    if args.command == "projections":
        from infra.runtime.bootstrap import read_model_names
        from infra.runtime.rebuild import rebuild_read_models

        unknown = set(args.only or ()) - set(read_model_names())
        if unknown:
            print(
                f"error: no read model named {', '.join(sorted(unknown))} (the read models:"
                f" {', '.join(read_model_names())})",
                file=sys.stderr,
            )
            return 2
        from infra.runtime import event_loop

        event_loop.run(rebuild_read_models(settings, args.into, swap=args.swap, only=args.only or ()))
        return 0
    if args.command == "dlq":
        from infra.cli.dlq import run as run_dlq_command

        return run_dlq_command(settings, args)
    if args.command == "blobs":
        from infra.adapters.blob_check import run_check

        return run_check(settings)
    if args.command == "user":
        from infra.cli.users import run as run_user_command

        return run_user_command(settings, args)
    if args.command == "audit":
        from infra.cli.audit import run as run_audit_command

        return run_audit_command(settings, args)
    if args.command == "settings":
        _print_settings(settings)
        return 0
    if args.command == "services":
        from infra.provision.services import ManagedServices

        data_dir = (args.data_dir or Path(settings.storage.data_dir)).resolve()
        with ManagedServices(data_dir) as managed:
            endpoints = managed.start()
            print(f"DATABASE_URL={endpoints.database_url}")
            print(f"KAFKA_BOOTSTRAP_SERVERS={endpoints.kafka_bootstrap}")
            print(f"REDIS_URL={endpoints.redis_url}", flush=True)
            _wait_for_signal()
        return 0
    raise AssertionError(f"unknown command {args.command}")  # argparse allows only the commands above


def _schema(value: str) -> str:
    from infra.adapters.postgres import check_schema

    try:
        return check_schema(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (lower-case letters, digits and '_', at most 63)") from exc


def _port_taken(host: str, port: int) -> str:
    """Why the API could not listen on host:port (as uvicorn binds: SO_REUSEADDR), or "" if it can."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


def _run_api(settings: Settings) -> int:
    import uvicorn

    from api.tokens import check_secret
    from infra.runtime.bootstrap import require_services

    check_secret(settings)  # what the app would refuse at startup, said in one line (exit 1), not a traceback
    require_services(settings)

    uvicorn.run(
        "api.app:app_factory",
        factory=True,
        host=settings.server.host,
        port=settings.server.port,
        workers=settings.server.workers if settings.server.workers > 1 and not settings.server.reload else None,
        reload=settings.server.reload,
        reload_dirs=[str(Path(__file__).resolve().parents[2])] if settings.server.reload else None,
        log_level="info",
        log_config=None,  # uvicorn's loggers go to the root handler (monitoring.log_format, infra.runtime.logs)
        access_log=False,
        http="infra.runtime.http_protocol:HeaderDeadlineProtocol",  # a deadline for request headers
        timeout_keep_alive=settings.server.keep_alive_timeout_seconds,
        # Protocol pings: a peer that does not answer one within ping_timeout is gone, and is closed.
        ws_ping_interval=settings.websocket.ping_interval,
        ws_ping_timeout=settings.websocket.ping_timeout,
    )
    return 0


def _print_settings(settings: Settings) -> None:
    aliases = {v: k for k, v in ENV_ALIASES.items()}
    for section, key, _ in iter_settings():
        value = getattr(getattr(settings, section), key)
        if key in ("secret_key", "password") and value:
            value = "<set>"
        names = env_name(section, key) + (f" or {aliases[(section, key)]}" if (section, key) in aliases else "")
        print(f"{section}.{key} = {value!r}    [{names}]")


def _wait_for_signal() -> None:
    received: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, _f: received.append(s))
    while not received:
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())

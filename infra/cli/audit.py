"""`pipeline audit verify|export`: check the event log's hash chains, export the audit log as JSON lines."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from datetime import datetime
from pathlib import Path

from infra.runtime.progress import Progress
from infra.runtime.settings import Settings

EXIT_INTACT, EXIT_BROKEN, EXIT_USAGE = 0, 1, 2


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `audit` subcommand and its actions."""
    audit = sub.add_parser("audit", help="verify the event log's hash chains, export the audit log")
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = actions.add_parser(
        "verify",
        help="re-read the events topic, check every aggregate's hash chain and versions, cross-check audit_log",
        description="Reads the events topic from Kafka (read_committed) up to its end when the check starts,"
        " checks each aggregate's version sequence and hash chain, and compares the audit_log read model with"
        " the log over the offsets the projection has applied. Progress goes to stderr. Exit status: 0 intact;"
        " 1 a broken link or a read-model mismatch (each aggregate's first broken link is named), or the system"
        " could not be reached; 2 a usage error.",
    )
    verify.add_argument("--aggregate", type=_uuid, metavar="ID", help="check only this aggregate's events")
    verify.add_argument(
        "--from-offset",
        type=_offset,
        default=0,
        metavar="N",
        help="start at offset N of every partition (chains then start at the first event seen; default 0)",
    )
    verify.add_argument("--no-read-model", action="store_true", help="check the log only, not audit_log against it")
    verify.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object on the last line of stdout"
    )
    export = actions.add_parser(
        "export",
        help="write audit events as JSON lines (one object per event, global order), streaming",
        description="Writes the audit_log's events (as GET /api/v1/audit shows them) to FILE, one JSON object a"
        " line, in global sequence order; memory stays bounded. Progress goes to stderr.",
    )
    export.add_argument("--from", dest="occurred_from", type=_time, metavar="TIME", help="RFC 3339, inclusive")
    export.add_argument("--to", dest="occurred_to", type=_time, metavar="TIME", help="RFC 3339, exclusive")
    export.add_argument("--aggregate", type=_uuid, metavar="ID", help="only this aggregate's events")
    export.add_argument("--output", type=_output, required=True, metavar="FILE", help="where to write (FILE.jsonl)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Execute one `pipeline audit` action; see each action's --help for its exit status."""
    from aiokafka.errors import KafkaError
    from psycopg import Error as DatabaseError

    try:
        if args.action == "verify":
            return _verify(settings, args)
        return _export(settings, args)
    except BrokenPipeError:  # stdout's reader stopped early (`| head`): pipeline's main handles it
        raise
    except (KafkaError, DatabaseError, OSError) as exc:  # unreachable or unusable: a message, not a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_BROKEN


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from infra.runtime.audit_verify import VerifyOptions, verify

    options = VerifyOptions(args.aggregate, args.from_offset, check_read_model=not args.no_read_model)
    bar = Progress(0, "verify (log offsets)")
    report = asyncio.run(verify(settings, options, lambda done, total, events, _s: bar.track(done, total, events)))
    for link in report.broken:
        print(
            f"broken: aggregate {link.aggregate_id} at partition {link.partition} offset {link.offset}"
            f" (version {link.version}): {link.reason}"
        )
    for item in report.mismatches:
        where = f"partition {item.partition} offset {item.offset}" if item.partition >= 0 else "elsewhere"
        what = f"aggregate {item.aggregate_id} version {item.version}" if item.aggregate_id else "a row"
        print(f"audit_log {item.kind}: {what} at {where}{': ' + item.detail if item.detail else ''}")
    counts = report.counts
    print(
        f"summary: {'INTACT' if report.intact else 'BROKEN'}: {report.events} events, {report.aggregates}"
        f" aggregates, {report.seconds:.1f} s, {report.events_per_s:,.0f} events/s; {len(report.broken)} broken"
        f" chain(s); audit_log missing {counts['missing']}, extra {counts['extra']}, different"
        f" {counts['different']} ({report.not_projected} not yet projected, {report.dead_lettered} dead-lettered)"
    )
    if args.json:
        print(json.dumps(report.summary()))
    return EXIT_INTACT if report.intact else EXIT_BROKEN


def _export(settings: Settings, args: argparse.Namespace) -> int:
    from infra.runtime.audit_export import export_events
    from projections.audit_log import AuditFilters

    if args.occurred_from and args.occurred_to and args.occurred_from >= args.occurred_to:
        print("error: --from must be before --to", file=sys.stderr)
        return EXIT_USAGE
    filters = AuditFilters(aggregate_id=args.aggregate, occurred_from=args.occurred_from, occurred_to=args.occurred_to)
    bar = Progress(0, "export", unit="events")
    count = asyncio.run(export_events(settings, filters, args.output, lambda done, total, _s: bar.track(done, total)))
    print(f"exported {count} events to {args.output}")
    return EXIT_INTACT


def _uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a UUID: {value!r}") from exc


def _offset(value: str) -> int:
    if not (value.isascii() and value.isdigit()):  # '²' is a digit to isdigit, not to int
        raise argparse.ArgumentTypeError(f"not an offset (0 or more): {value!r}")
    return int(value)


def _output(value: str) -> Path:
    """A file to write: in a directory that exists, not a directory itself (a usage error, not exit 1)."""
    path = Path(value)
    if not value or path.is_dir():
        raise argparse.ArgumentTypeError(f"not a file name: {value!r} (a directory)" if value else "an empty name")
    if not path.absolute().parent.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r}: its directory {str(path.absolute().parent)!r} does not exist")
    return path


def _time(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time with a time zone: {value!r}")
    return moment

"""`pipeline dlq list|retry|skip`: the projections' dead letters (policy: projections.dead_letters)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson

from infra.runtime.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `dlq` subcommand and its actions."""
    dlq = sub.add_parser(
        "dlq",
        help="the events the projections set aside (list, retry, skip)",
        description="Events the projection runner could not apply are recorded as dead letters and skipped, so"
        " their partition moves on; /health says 'degraded' while any is unresolved. Fix the cause, then retry"
        " each (it is applied if it is still its aggregate's next event) or skip it. Exit status: 0 done; 1"
        " refused (no such letter, already resolved, no longer applicable) or the system could not be reached;"
        " 2 a usage error.",
    )
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list unresolved dead letters with their error, oldest first")
    listing.add_argument("--all", action="store_true", help="include resolved ones (retried or skipped)")
    listing.add_argument("--limit", type=int, default=100, metavar="N", help="at most N, 1..10000 (default 100)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    retry = actions.add_parser(
        "retry", help="re-apply a dead letter's event through the projectors in one transaction, then resolve it"
    )
    retry.add_argument("id", type=int, help="the dead letter's id (from `pipeline dlq list`)")
    skip = actions.add_parser("skip", help="resolve a dead letter without applying its event")
    skip.add_argument("id", type=int, help="the dead letter's id (from `pipeline dlq list`)")
    skip.add_argument("--note", default="", metavar="TEXT", help="why (kept with the letter)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Execute one `pipeline dlq` action; 0 done, 1 refused (the reason on stderr)."""
    from infra.runtime import dead_letters
    from projections.dead_letters import RetryRefused

    try:
        if args.action == "list":
            if not 1 <= args.limit <= 10_000:
                print("error: --limit must be 1..10000", file=sys.stderr)
                return 2
            letters = asyncio.run(dead_letters.list_letters(settings, include_resolved=args.all, limit=args.limit))
            for letter in letters:
                if args.json:
                    print(orjson.dumps(letter).decode())
                else:
                    state = letter["resolution"] or "unresolved"
                    print(
                        f"{letter['id']}\t{letter['topic_partition']}:{letter['topic_offset']}"
                        f"\t{letter['recorded_at'].isoformat()}\t{state}\t{letter['reason']}"
                    )
            if not args.json:
                print(f"{len(letters)} dead letter(s)", file=sys.stderr)
            return 0
        if args.action == "retry":
            event = asyncio.run(dead_letters.retry_letter(settings, args.id))
            print(f"ok: dead letter {args.id} applied ({event.type} of {event.aggregate_id} version {event.version})")
            return 0
        asyncio.run(dead_letters.skip_letter(settings, args.id, args.note))
        print(f"ok: dead letter {args.id} skipped")
        return 0
    except RetryRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

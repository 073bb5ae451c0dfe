"""`pipeline user create|set-role|disable|enable`: operator commands through the normal command path."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import warnings

from commands.envelope import Outcome
from domain.user import ROLES, USERNAME, user_id_for
from infra.runtime.accounts import change_user, check_password, register, system_command
from infra.runtime.bootstrap import build_api
from infra.runtime.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `user` subcommand and its actions."""
    user = sub.add_parser(
        "user",
        help="manage users (create, set-role, disable, enable)",
        description="Each action is a command of the User aggregate sent through Kafka like the API's, so the"
        " users read model, the audit log and live connections see it. Exit status: 0 done; 1 refused (e.g. the"
        " user exists, or does not) or the system could not be reached; 2 a malformed username, role or password.",
    )
    actions = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="create a user; the password is prompted for, or read from stdin with --password-stdin",
    )
    create.add_argument(
        "username", type=_username, help="3-64 letters, digits, '.', '_' or '-'; unique, case-insensitive"
    )
    create.add_argument("--role", choices=ROLES, default="user", help="the user's role (default: user)")
    create.add_argument("--password-stdin", action="store_true", help="read the password from the first stdin line")
    set_role = actions.add_parser("set-role", help="change a user's role (applies to their next request)")
    set_role.add_argument("username", help="an existing user's name")
    set_role.add_argument("role", choices=ROLES, help="admin (everything), user (read, write, execute), viewer (read)")
    for name, text in (
        ("disable", "disable a user: their tokens stop working for good, their live connections are closed"),
        ("enable", "enable a disabled user again"),
    ):
        actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".").add_argument(
            "username", help="an existing user's name"
        )


def _username(value: str) -> str:
    if not USERNAME.match(value):
        raise argparse.ArgumentTypeError(f"not a username: {value[:80]!r} (3-64 letters, digits, '.', '_' or '-')")
    return value


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Execute one `pipeline user` action; exit status 0 when the command was accepted."""
    password = ""
    if args.action == "create":
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            try:
                with warnings.catch_warnings():  # no terminal: getpass reads stdin, without its noisy warning
                    warnings.simplefilter("ignore", getpass.GetPassWarning)
                    password = getpass.getpass(f"password for {args.username}: ")
            except (EOFError, KeyboardInterrupt):  # no terminal and nothing on stdin, or Ctrl-C/Ctrl-D
                print("\nerror: no password given (type it, or pipe it with --password-stdin)", file=sys.stderr)
                return 2
        try:
            check_password(password)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    outcome = asyncio.run(_run(settings, args, password))
    if not outcome.accepted:
        reason = outcome.rejection.message if outcome.rejection else "refused"
        if outcome.rejection and outcome.rejection.code == "not_found":  # the handler names the id, not the name
            reason = f"no user named {args.username!r}"
        print(f"error: {reason}", file=sys.stderr)
        return 1
    print(f"ok: {args.action} {args.username} (user id {outcome.aggregate_id}, version {outcome.version})")
    return 0


async def _run(settings: Settings, args: argparse.Namespace, password: str) -> Outcome:
    container = await build_api(settings)
    try:
        user_id = str(user_id_for(args.username))
        if args.action == "create":
            return await register(container, args.username, password, args.role)
        change = {"role": args.role} if args.action == "set-role" else {"disabled": args.action == "disable"}
        outcome = await change_user(container, system_command, user_id, **change)
        assert outcome is not None  # one change was asked
        return outcome
    finally:
        await container.close()

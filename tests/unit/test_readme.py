"""The README documents every setting the code reads, with its real environment variables and default."""

from __future__ import annotations

import re
from pathlib import Path

from infra.runtime.settings import ENV_ALIASES, env_name, iter_settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
ROW = re.compile(
    r"^\| `(?P<name>[a-z_]+\.[a-z_]+)` \| (?P<env>[^|]+) \| `(?P<default>[^`]*)`[^|]* \| (?P<meaning>[^|]+) \|$"
)


def settings_table() -> list[re.Match[str]]:
    """The rows of the Configuration section's table, in order (each must parse: a malformed row fails)."""
    section = README.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| `")]
    rows = [ROW.match(line) for line in lines]
    assert all(rows), f"malformed rows: {[line for line, row in zip(lines, rows, strict=True) if not row]}"
    return [row for row in rows if row]


def shown(value: object) -> str:
    """A default as the table writes it: tuples comma-separated, the empty string as (empty)."""
    text = ",".join(value) if isinstance(value, tuple) else str(value)
    return text or "(empty)"


def test_the_settings_table_lists_every_setting_once_in_declaration_order() -> None:
    documented = [row["name"] for row in settings_table()]
    declared = [f"{section}.{key}" for section, key, _ in iter_settings()]
    assert documented == declared, (
        f"only in the README: {sorted(set(documented) - set(declared))}; only in settings.py:"
        f" {sorted(set(declared) - set(documented))}; duplicates or order differ otherwise"
    )


def test_the_settings_table_gives_each_setting_its_true_default() -> None:
    defaults = {f"{section}.{key}": shown(value) for section, key, value in iter_settings()}
    wrong = {row["name"]: (row["default"], defaults[row["name"]]) for row in settings_table()}
    wrong = {name: pair for name, pair in wrong.items() if pair[0] != pair[1]}
    assert not wrong, f"README default != settings.py default: {wrong}"


def test_the_settings_table_names_each_environment_variable_and_a_meaning() -> None:
    aliases = {target: name for name, target in ENV_ALIASES.items()}
    for row in settings_table():
        section, key = row["name"].split(".")
        names = re.findall(r"`([A-Z_]+)`", row["env"])
        expected = ([aliases[(section, key)]] if (section, key) in aliases else []) + [env_name(section, key)]
        assert names == expected, f"{row['name']}: README names {names}, the code reads {expected}"
        assert len(row["meaning"].strip()) > 5, f"{row['name']} has no meaning in the README"


def test_readme_names_the_two_set_up_commands() -> None:
    assert "make run" in README and "make test" in README


def api_table() -> set[tuple[str, str]]:
    """(method, path) of every row of the API section's table; query strings dropped, `/ws` as WS."""
    section = README.split("\n## API\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([A-Z/]+) \| `([^`?]+)[^`]*` \|", section, re.MULTILINE)
    return {(method, re.sub(r"\{\w+\}", "{}", path)) for methods, path in rows for method in methods.split("/")}


def test_every_route_of_the_api_is_a_row_of_the_readmes_api_table() -> None:
    from litestar.routes import WebSocketRoute

    from api.app import create_app
    from infra.runtime.settings import load_settings

    app = create_app(load_settings(environ={"SECRET_KEY": "k" * 32}))
    documented = api_table()
    missing = []
    for route in app.routes:
        path = re.sub(r"\{\w+:[^}]+\}", "{}", route.path)
        if path.startswith(("/api/docs/", "/api/redoc", "/openapi.json")):  # the docs pages' own (the /api/docs row)
            continue
        methods = {"WS"} if isinstance(route, WebSocketRoute) else set(route.methods) - {"OPTIONS", "HEAD"}
        missing += [f"{method} {path}" for method in sorted(methods) if (method, path) not in documented]
    assert not missing, f"routes missing from the README's API table: {missing}"


def reasons_in_code() -> set[str]:
    """Every error `reason` the code can answer, found in the source (a new one cannot be missed)."""
    from api.errors import HTTP_REASONS, REJECTION_STATUS

    root = Path(__file__).resolve().parents[2]
    calls = (
        r"(?:ApiError|envelope|_error|refuse_websocket|error_response)\("
        r"\s*(?:request,\s*|scope,\s*send,\s*)?\w+,\s*\"([a-z_]+)\""
    )
    found = {"http_error", *REJECTION_STATUS, *HTTP_REASONS.values()}
    for path in [*(root / "api").rglob("*.py"), root / "infra" / "runtime" / "http_protocol.py"]:
        text = path.read_text()
        found |= set(re.findall(calls, text))
        found |= set(re.findall(r"\"code\": \d{3}, \"reason\": \"([a-z_]+)\"", text))  # GraphQL extensions
        found |= set(re.findall(r"reason=\"([a-z_]+)\"", text))
    for folder in ("domain", "commands"):  # a refused command's code is its reason (api/errors.py rejection_error)
        for path in (root / folder).glob("*.py"):
            found |= set(re.findall(r"^    code = \"([a-z_]+)\"", path.read_text(), re.MULTILINE))
    return found


def test_every_error_reason_is_in_the_readmes_table() -> None:
    section = README.split("\n## API\n", 1)[1].split("\n## ", 1)[0]
    documented = {
        reason
        for row in re.findall(r"^  \| (`[a-z_]+`(?:, `[a-z_]+`)*) \| (?:[0-9]|other)", section, re.MULTILINE)
        for reason in re.findall(r"`([a-z_]+)`", row)
    }
    assert "validation_error" in documented
    missing = reasons_in_code() - documented
    assert not missing, f"reasons the API answers that the README's table lacks: {sorted(missing)}"


def test_every_ws_message_type_and_error_code_is_in_the_readme() -> None:
    """What /ws sends and the codes of its errors, found in the source, are each named in the README."""
    root = Path(__file__).resolve().parents[2]
    found: set[str] = set()
    for name in ("ws.py", "hub.py", "ws_expiry.py", "chat_service.py"):
        text = (root / "api" / name).read_text()
        found |= set(re.findall(r"\"type\": \"([a-z_]+)\"", text))
        found |= set(re.findall(r"(?:\berror\(|\"code\": )\"([a-z_]+)\"", text))
    found -= {"close"}  # the hub's internal end-of-outbox marker, never sent
    assert {"subscribed", "data_change", "invalid_topic"} <= found
    missing = {kind for kind in found if f"`{kind}`" not in README}
    assert not missing, f"/ws message types or error codes the README does not name: {sorted(missing)}"


def test_every_graphql_root_field_is_named_in_the_readme() -> None:
    from graphql import GraphQLObjectType

    from api.graphql.schema import build_schema
    from infra.runtime.settings import load_settings

    schema = build_schema(load_settings(environ={}).graphql)._schema
    roots = [schema.get_type(root) for root in ("Query", "Mutation", "Subscription")]
    fields = [name for root in roots if isinstance(root, GraphQLObjectType) for name in root.fields]
    assert "dataObject" in fields
    missing = [name for name in fields if f"`{name}" not in README]
    assert not missing, f"GraphQL root fields the README does not name: {missing}"


def test_every_setting_is_read_somewhere_outside_the_settings_module() -> None:
    """A documented setting nothing reads is a promise the system does not keep."""
    root = Path(__file__).resolve().parents[2]
    sources = [
        path.read_text()
        for folder in ("api", "commands", "projections", "infra", "domain")
        for path in (root / folder).rglob("*.py")
        if path != root / "infra" / "runtime" / "settings.py"
    ]
    code = "\n".join(sources)
    unread = [f"{s}.{k}" for s, k, _ in iter_settings() if not re.search(rf"\.{k}\b", code)]
    unread = [name for name in unread if name != "storage.blob_dir"]  # read through StorageSettings.blob_path
    assert not unread, f"settings no code reads: {unread}"

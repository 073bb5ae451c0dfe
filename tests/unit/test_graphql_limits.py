"""GraphQL document limits and error masking, on the schema itself (no I/O: refused before anything runs)."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import psycopg
import pytest

from api.auth import Principal
from api.graphql.schema import build_schema
from infra.runtime.settings import GraphQLSettings

SCHEMA = build_schema(GraphQLSettings(max_depth=1, max_aliases=5, max_tokens=200, max_costly_fields=3))


async def errors_of(document: str, context: Any = None) -> list[dict[str, Any]]:
    result = await SCHEMA.execute(document, context_value=context)
    assert not any((result.data or {}).values())
    assert result.errors
    return [dict(error.formatted) for error in result.errors]


async def test_depth_over_the_limit_is_refused() -> None:
    [error] = await errors_of('{ dataObject(objectId: "x") { annotations { content } } }')
    assert "exceeds maximum operation depth of 1" in error["message"]
    assert error["extensions"] == {"code": 400, "reason": "invalid_query"}


async def test_aliases_over_the_limit_are_refused() -> None:
    [error] = await errors_of("{" + " ".join(f"a{i}: availableNodes" for i in range(6)) + "}")
    assert error["message"] == "6 aliases found. Allowed: 5"


async def test_tokens_over_the_limit_are_refused_while_parsing() -> None:
    [error] = await errors_of("{" + " availableNodes" * 201 + "}")
    assert "more than 200 tokens" in error["message"] and error["extensions"]["code"] == 400


@pytest.mark.parametrize(
    "document",
    [
        'mutation { a: deleteDataObject(objectId: "x") { version } b: deleteDataObject(objectId: "y") { version }'
        ' ...More } fragment More on Mutation { c: deleteDataObject(objectId: "z") { version }'
        ' d: deleteDataObject(objectId: "w") { version } }',
        "{" + " ".join(f'a{i}: searchObjects(query: "q") {{ objectId }}' for i in range(4)) + "}",
    ],
)
async def test_more_costly_fields_than_allowed_are_refused_whole(document: str) -> None:
    [error] = await errors_of(document)
    assert error["extensions"]["code"] == 400 and error["extensions"]["reason"] == "too_costly"


class Connection:
    scope: ClassVar[dict[str, Any]] = {"user": Principal("u1", "admin", "admin", "t1"), "state": {"request_id": "r1"}}


class FailingContext:
    """An admin's context whose database fails as PostgreSQL does for a malformed uuid."""

    connection = Connection()

    @property
    def container(self) -> Any:
        raise psycopg.errors.InvalidTextRepresentation('invalid input syntax for type uuid: "x"')


async def test_an_unexpected_error_is_masked_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="pipeline.graphql"):
        [error] = await errors_of('{ dataObject(objectId: "x") { objectId } }', FailingContext())
    assert "uuid" not in str(error) and "syntax" not in str(error)
    assert error["extensions"] == {"code": 400, "reason": "validation_error", "request_id": "r1"}
    logged = [r for r in caplog.records if "invalid input syntax" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING


async def test_a_clients_malformed_document_is_logged_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        await errors_of("{ nothingHere }")
    assert all(r.levelno <= logging.DEBUG for r in caplog.records if "nothingHere" in r.getMessage())


async def test_a_document_sent_again_is_judged_the_same() -> None:
    """Parse and validation are cached per document text: a refused document stays refused, every time."""
    deep = '{ dataObject(objectId: "x") { annotations { content } } }'
    for _ in range(3):
        [error] = await errors_of(deep)
        assert error["extensions"] == {"code": 400, "reason": "invalid_query"}
    over = "{" + " availableNodes" * 201 + "}"
    for _ in range(2):
        [error] = await errors_of(over)
        assert "more than 200 tokens" in error["message"] and error["extensions"]["code"] == 400


async def test_a_cached_document_keeps_the_limits_of_its_own_schema() -> None:
    """Two schemas with other limits share no verdicts (the caches are keyed by the limit rules too)."""
    document = "{" + " ".join(f"a{i}: availableNodes" for i in range(6)) + "}"
    await errors_of(document)  # refused by SCHEMA (5 aliases allowed)
    lenient = build_schema(GraphQLSettings(max_aliases=10))
    result = await lenient.execute(document)  # runs (its fields fail here for want of a caller)
    assert result.errors and not any("aliases" in error.message for error in result.errors)

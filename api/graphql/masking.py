"""GraphQL errors a client may see: the envelope's fields in ``extensions``, never a server's internals.

Three kinds of error reach a GraphQL response:

- *expected* failures a resolver raises as a ``GraphQLError`` with ``extensions.code`` (see
  ``api.graphql.errors.answer``, the rate and size limits): sent as they are, not logged;
- *the client's* malformed document (syntax, unknown field, wrong argument type, a limit of
  ``api.graphql.limits``): sent with ``extensions`` ``{"code": 400, "reason": "invalid_query"}``,
  logged at DEBUG only, since a server cannot act on them;
- *unexpected* exceptions: masked. The client gets a fixed message and the REST table's status for the
  exception's kind (503 for an unreachable Kafka or PostgreSQL, 400 for a value PostgreSQL refuses as
  data, 500 otherwise) with the request id; the text, which may quote SQL or a database's error,
  goes only to the log, once, with its traceback (a 503 or 400 without it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import psycopg
from aiokafka.errors import KafkaError
from graphql import GraphQLError
from psycopg_pool import PoolTimeout
from strawberry import Schema
from strawberry.extensions import MaskErrors
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.graphql import OperationType

log = logging.getLogger("pipeline.graphql")

# Unexpected exception kind -> (status, reason, message, log level, log the traceback).
_UNAVAILABLE = (503, "unavailable", "a backing service is unavailable; retry shortly", logging.WARNING, False)
_BAD_VALUE = (400, "validation_error", "a value in the request is not valid", logging.WARNING, False)
_INTERNAL = (500, "internal_error", "internal server error", logging.ERROR, True)


def unexpected_cause(error: GraphQLError) -> BaseException | None:
    """The non-GraphQL exception behind ``error``, if the server (not the client's input) caused it."""
    cause = error.original_error
    while isinstance(cause, GraphQLError):
        cause = cause.original_error
    if error.path is None and isinstance(cause, ValueError | TypeError):
        return None  # a variable's value a scalar refused while coercing it, before any field ran
    return cause


def classify(cause: BaseException) -> tuple[int, str, str, int, bool]:
    """How an unexpected exception is answered and logged (the same kinds as api.errors' table)."""
    if isinstance(cause, KafkaError | psycopg.OperationalError | PoolTimeout):
        return _UNAVAILABLE
    if isinstance(cause, psycopg.DataError):  # e.g. a string where a uuid column wants a UUID
        return _BAD_VALUE
    return _INTERNAL


def _request_id(context: ExecutionContext | None) -> str | None:
    connection = getattr(getattr(context, "context", None), "connection", None)
    if connection is None:
        return None
    request_id = connection.scope.get("state", {}).get("request_id")
    return request_id if isinstance(request_id, str) else None


class ErrorEnvelope(MaskErrors):
    """strawberry's MaskErrors, giving every error the envelope's ``code`` and ``reason``."""

    def __init__(self) -> None:
        super().__init__(should_mask_error=lambda _: True)  # every error passes through ``anonymise_error``

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        """Keep expected errors; give client errors a 400; replace unexpected ones by the envelope."""
        extensions: dict[str, Any] = dict(error.extensions or {})
        cause = unexpected_cause(error)
        if cause is None:
            if "code" in extensions:
                return error
            extensions.update(code=400, reason="invalid_query")
            message = error.message
        else:
            status, reason, message, _, _ = classify(cause)
            extensions = {"code": status, "reason": reason, "request_id": _request_id(self.execution_context)}
        return GraphQLError(
            message, error.nodes, error.source, error.positions, error.path, original_error=None, extensions=extensions
        )


class LoggedSchema(Schema):
    """A strawberry Schema that logs each unexpected error once, and client errors at DEBUG only."""

    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        """Queries and mutations only: a subscription sent as a plain HTTP request would run its generator
        as a field and fail with a 500; refused, it is strawberry's 400 (subscriptions go over WebSocket)."""
        allowed = set(allowed_operation_types or (OperationType.QUERY, OperationType.MUTATION))
        allowed.discard(OperationType.SUBSCRIPTION)
        return await super().execute(
            query, variable_values, context_value, root_value, operation_name, allowed, operation_extensions
        )

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        """Called by strawberry with the original errors, before ``ErrorEnvelope`` masks them."""
        for error in errors:
            cause = unexpected_cause(error)
            if cause is None:
                log.debug("GraphQL error for the client: %s", error.message)
                continue
            _, reason, _, level, traceback = classify(cause)
            log.log(
                level,
                "GraphQL field %s failed (%s, request %s): %r",
                ".".join(str(p) for p in error.path or ()) or "-",
                reason,
                _request_id(execution_context),
                cause,
                exc_info=cause if traceback else None,
            )

"""What one GraphQL request may cost: depth, aliases, tokens, costly fields, rate limits, response size.

A GraphQL request can hold many root fields (``a: ingestData(...) b: ingestData(...)``), so the
once-per-HTTP-request rate limit in ``api.auth`` would let one request do the work of hundreds.
Three layers stop that, cheapest first:

1. While parsing and validating, before anything runs: the document's token count
   (``MaxTokensLimiter``), its nesting depth (``QueryDepthLimiter``), its aliases
   (``MaxAliasesLimiter``) and its *costly* root fields (every mutation field and
   ``searchObjects``, the fields that do a REST request's work) are capped; a request over a cap is
   refused whole, with nothing run. 5,000 aliased ``availableNodes`` stop at the token limit.
2. While running: each costly root field counts once against the caller's rate limits (its role's
   limit, and ``ingestData`` also the per-user ingest burst limit), exactly as the REST request
   doing the same work would, on top of the one count of the HTTP request itself. A field over a
   limit is not run and answers a GraphQL error with ``extensions.code`` 429; the fields before it
   (mutations run one after another) keep their effects. The same counting applies to operations
   sent over the GraphQL WebSocket, whose messages the HTTP middleware never sees.
3. After running: a result whose JSON is larger than ``graphql.max_response_bytes`` is replaced by a
   413 error and never sent (mutations in it have taken effect; their ids are lost to the client, so
   the cap is set well above any single field's answer).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from graphql import (
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLResolveInfo,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    ValidationRule,
)
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)

from api.auth import Principal
from api.ratelimit import RateLimiter
from infra.settings import GraphQLSettings

log = logging.getLogger("pipeline.graphql")

COSTLY_QUERY_FIELDS = frozenset({"searchObjects"})  # every mutation field is costly too
BURST_FIELDS = frozenset({"ingestData"})  # like REST's POST /ingest (route opt "burst")


def limit_extensions(settings: GraphQLSettings) -> list[Callable[[], SchemaExtension]]:
    """Factories of the extensions enforcing ``settings`` (one fresh instance per operation)."""
    return [
        functools.partial(MaxTokensLimiter, max_token_count=settings.max_tokens),
        functools.partial(QueryDepthLimiter, max_depth=settings.max_depth),
        functools.partial(MaxAliasesLimiter, max_alias_count=settings.max_aliases),
        functools.partial(AddValidationRules, [costly_fields_rule(settings.max_costly_fields)]),
        FieldRateLimits,
        functools.partial(ResponseSizeCap, max_bytes=settings.max_response_bytes),
    ]


def costly_fields_rule(max_fields: int) -> type[ValidationRule]:
    """A validation rule refusing an operation that names more than ``max_fields`` costly root fields."""

    class MaxCostlyFields(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            count = self._count(node.selection_set, node.operation == OperationType.MUTATION, frozenset())
            if count > max_fields:
                self.report_error(
                    GraphQLError(
                        f"{count} costly fields (mutations, searchObjects) in one operation; allowed: {max_fields}",
                        node,
                        extensions={"code": 400, "reason": "too_costly", "details": {"max_costly_fields": max_fields}},
                    )
                )

        def _count(self, selections: SelectionSetNode, mutation: bool, seen: frozenset[str]) -> int:
            count = 0
            for selection in selections.selections:
                if isinstance(selection, FieldNode):
                    count += mutation or selection.name.value in COSTLY_QUERY_FIELDS
                elif isinstance(selection, InlineFragmentNode):
                    count += self._count(selection.selection_set, mutation, seen)
                elif isinstance(selection, FragmentSpreadNode) and selection.name.value not in seen:
                    fragment = self.context.get_fragment(selection.name.value)
                    if fragment is not None:
                        count += self._count(fragment.selection_set, mutation, seen | {selection.name.value})
            return count

    return MaxCostlyFields


def is_costly(info: GraphQLResolveInfo) -> bool:
    """A root field that does a REST request's work."""
    if info.path.prev is not None:
        return False
    return info.operation.operation == OperationType.MUTATION or info.field_name in COSTLY_QUERY_FIELDS


class FieldRateLimits(SchemaExtension):
    """Counts each costly root field against the caller's rate limits before it runs."""

    def resolve(self, _next: Callable[..., Any], root: Any, info: GraphQLResolveInfo, *args: Any, **kwargs: Any) -> Any:
        """Pass other fields straight through; count a costly one first."""
        if not is_costly(info):
            return _next(root, info, *args, **kwargs)
        return self._counted(_next, root, info, *args, **kwargs)

    async def _counted(
        self, _next: Callable[..., Any], root: Any, info: GraphQLResolveInfo, *args: Any, **kwargs: Any
    ) -> Any:
        connection = info.context.connection
        principal = connection.scope.get("user")
        if isinstance(principal, Principal):  # without one the field's own permission check answers 401
            limiter: RateLimiter = connection.app.state.limiter
            verdict = await limiter.hit(principal.role, principal.user_id, burst=info.field_name in BURST_FIELDS)
            if not verdict.allowed:
                raise GraphQLError(
                    "rate limit exceeded; retry later",
                    extensions={
                        "code": 429,
                        "reason": "rate_limited",
                        "details": {"limit": verdict.limit, "retry_after": max(verdict.reset, 1)},
                    },
                )
        result = _next(root, info, *args, **kwargs)
        return await result if inspect.isawaitable(result) else result


class ResponseSizeCap(SchemaExtension):
    """Replaces a result whose JSON exceeds ``max_bytes`` by one 413 error."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def on_operation(self) -> Iterator[None]:
        """After the operation: measure the result's data as the client would receive it."""
        yield
        result = self.execution_context.result
        data = getattr(result, "data", None)
        if result is None or data is None:
            return
        size = len(orjson.dumps(data, default=str))  # ~10 ms for 4 MB; the data is in memory already
        if size <= self.max_bytes:
            return
        log.info("GraphQL response of %d bytes refused (limit %d)", size, self.max_bytes)
        result.data = None
        result.errors = [
            GraphQLError(
                f"the response would be {size} bytes; the limit is {self.max_bytes}: ask for fewer fields or objects",
                extensions={"code": 413, "reason": "response_too_large", "details": {"max_bytes": self.max_bytes}},
            )
        ]

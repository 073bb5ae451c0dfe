"""What one GraphQL request may cost: depth, aliases, tokens, costly fields, rate limits, response size.

A GraphQL request can hold many root fields (``a: ingestData(...) b: ingestData(...)``), so the
once-per-HTTP-request rate limit in ``api.auth`` would let one request do the work of hundreds.
Three layers stop that, cheapest first:

1. While parsing and validating, before anything runs: the document's token count
   (``MaxTokensLimiter``), its nesting depth (``QueryDepthLimiter``), its aliases
   (``MaxAliasesLimiter``) and its *costly* root fields (every mutation field and
   ``searchObjects``, the fields that do a REST request's work) are capped; a request over a cap is
   refused whole, with nothing run. 5,000 aliased ``availableNodes`` stop at the token limit.
2. Just before running: each costly root field counts once against the caller's rate limits (its
   role's limit, and ``ingestData`` also the per-user ingest burst limit), exactly as the REST request
   doing the same work would, on top of the one count of the HTTP request itself. The count is taken
   at once, all or nothing (one Redis round trip): if any limit has no room for every field, no
   field runs and the operation answers one error with ``extensions.code`` 429. Counting field by
   field would let the first fields run and then lose their answers: a refused non-null mutation
   field nulls the whole ``data`` and stops the fields after it. The same counting applies to
   operations sent over the GraphQL WebSocket, whose messages the HTTP middleware never sees.
3. After running: a result whose JSON is larger than ``graphql.max_response_bytes`` is replaced by a
   413 error and never sent (mutations in it have taken effect; their ids are lost to the client, so
   the cap is set well above any single field's answer).
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from typing import Any, TypeGuard

import orjson
from graphql import (
    ASTValidationRule,
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    ValidationRule,
    get_operation_ast,
)
from strawberry.extensions import (
    AddValidationRules,
    MaxTokensLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.extensions.max_aliases import create_validator as aliases_rule
from strawberry.extensions.query_depth_limiter import create_validator as depth_rule

from api.auth import Principal
from api.ratelimit import RateLimiter
from infra.runtime.settings import GraphQLSettings

log = logging.getLogger("pipeline.graphql")

COSTLY_QUERY_FIELDS = frozenset({"searchObjects"})  # every mutation field is costly too
BURST_FIELDS = frozenset({"ingestData"})  # like REST's POST /ingest (route opt "burst")
DOCUMENT_CACHE_SIZE = 256  # distinct documents whose parse and validation are kept (LRU)


def limit_extensions(settings: GraphQLSettings) -> list[Callable[[], SchemaExtension]]:
    """Factories of the extensions enforcing ``settings`` (one fresh instance per operation).

    The limits of layer 1 are validation rules, created once here (strawberry's QueryDepthLimiter and
    MaxAliasesLimiter would make new rule classes for every operation), so that the parse and the
    validation of a document sent again (clients send the same few documents with new variables)
    are taken from bounded caches keyed by the document's text, the parse options (the token limit)
    and the rules: parsing and validating were about half of a small query's cost.
    """
    rules: list[type[ASTValidationRule]] = [
        depth_rule(settings.max_depth, None),
        aliases_rule(settings.max_aliases),
        costly_fields_rule(settings.max_costly_fields),
    ]
    return [
        functools.partial(MaxTokensLimiter, max_token_count=settings.max_tokens),
        functools.partial(AddValidationRules, rules),
        functools.partial(ParsedDocuments, documents=LRU(DOCUMENT_CACHE_SIZE)),
        functools.partial(ValidationCache, maxsize=DOCUMENT_CACHE_SIZE),
        CostlyFieldRateLimits,
        functools.partial(ResponseSizeCap, max_bytes=settings.max_response_bytes),
    ]


def costly_fields_rule(max_fields: int) -> type[ValidationRule]:
    """A validation rule refusing an operation that names more than ``max_fields`` costly root fields."""

    class MaxCostlyFields(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            fragments = {f.name.value: f for f in self.context.document.definitions if _is_fragment(f)}
            count = len(costly_root_fields(node, fragments))
            if count > max_fields:
                self.report_error(
                    GraphQLError(
                        f"{count} costly fields (mutations, searchObjects) in one operation; allowed: {max_fields}",
                        node,
                        extensions={"code": 400, "reason": "too_costly", "details": {"max_costly_fields": max_fields}},
                    )
                )

    return MaxCostlyFields


def _is_fragment(node: Any) -> TypeGuard[FragmentDefinitionNode]:
    return isinstance(node, FragmentDefinitionNode)


def costly_root_fields(operation: OperationDefinitionNode, fragments: dict[str, FragmentDefinitionNode]) -> list[str]:
    """The names of the costly root fields ``operation`` runs, once per occurrence (fragments expanded)."""
    mutation = operation.operation == OperationType.MUTATION

    def walk(selections: SelectionSetNode, seen: frozenset[str]) -> Iterator[str]:
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                if mutation or selection.name.value in COSTLY_QUERY_FIELDS:
                    yield selection.name.value
            elif isinstance(selection, InlineFragmentNode):
                yield from walk(selection.selection_set, seen)
            elif isinstance(selection, FragmentSpreadNode) and selection.name.value not in seen:
                fragment = fragments.get(selection.name.value)
                if fragment is not None:
                    yield from walk(fragment.selection_set, seen | {selection.name.value})

    return list(walk(operation.selection_set, frozenset()))


class LRU(OrderedDict[Hashable, Any]):
    """A dict that keeps its ``size`` most recently used entries (``get`` counts as a use)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get(self, key: Hashable, default: Any = None) -> Any:
        if key not in self:
            return default
        self.move_to_end(key)
        return self[key]

    def __setitem__(self, key: Hashable, value: Any) -> None:
        super().__setitem__(key, value)
        if len(self) > self.size:
            self.popitem(last=False)


class ParsedDocuments(SchemaExtension):
    """The parsed document of a query text seen before (and parsed under the same options).

    Unlike strawberry's ParserCache, which parses in its own hook, a document not seen before is
    parsed by strawberry as usual, so a syntax error or one over the token limit is reported like
    any other (api.graphql.masking); only documents that parsed are kept.
    """

    def __init__(self, documents: LRU) -> None:
        self.documents = documents

    def _key(self) -> Hashable:
        ctx = self.execution_context
        return (ctx.query, tuple(sorted(ctx.parse_options.items())))

    def on_operation(self) -> Iterator[None]:
        """Before parsing (after MaxTokensLimiter set its parse option): a known text's document."""
        ctx = self.execution_context
        if ctx.graphql_document is None and ctx.query:
            ctx.graphql_document = self.documents.get(self._key())
        yield

    def on_parse(self) -> Iterator[None]:
        """After parsing: keep the document."""
        yield
        ctx = self.execution_context
        if ctx.graphql_document is not None and ctx.query:
            self.documents[self._key()] = ctx.graphql_document


class CostlyFieldRateLimits(SchemaExtension):
    """Counts the operation's costly root fields against the caller's rate limits, before any runs."""

    async def on_execute(self) -> AsyncIterator[None]:
        """All or nothing: if the limits have no room for every costly field, none runs (429)."""
        refusal = await self._count()
        if refusal is not None:
            self.execution_context.result = ExecutionResult(data=None, errors=[refusal])  # strawberry skips execution
        yield

    async def _count(self) -> GraphQLError | None:
        ctx = self.execution_context
        connection = getattr(ctx.context, "connection", None)
        principal = connection.scope.get("user") if connection is not None else None
        document = ctx.graphql_document
        operation = get_operation_ast(document, ctx.operation_name) if document is not None else None
        if connection is None or not isinstance(principal, Principal) or document is None or operation is None:
            return None  # without a principal each field's own permission check answers 401
        fragments = {f.name.value: f for f in document.definitions if _is_fragment(f)}
        fields = costly_root_fields(operation, fragments)
        if not fields:
            return None
        bursts = sum(name in BURST_FIELDS for name in fields)
        limiter: RateLimiter = connection.app.state.limiter
        verdict = await limiter.hit(
            principal.role, principal.user_id, burst=bursts > 0, cost=len(fields), burst_cost=bursts
        )
        if verdict.allowed:
            return None
        details = {"limit": verdict.limit, "cost": len(fields), "retry_after": max(verdict.reset, 1)}
        return GraphQLError(
            f"rate limit exceeded: this operation counts as {len(fields)} requests; retry later",
            extensions={"code": 429, "reason": "rate_limited", "details": details},
        )


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

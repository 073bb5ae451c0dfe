"""REST: full-text search across ingested data objects."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.params import Parameter

from api.auth import actor_of
from api.errors import ApiError
from api.inputs import checked_json
from api.rbac import Permission, requires
from api.rest.data import DataObject
from commands.envelope import Actor
from infra.bootstrap import ApiContainer
from projections.data_objects import SEARCH_FILTERS, search_data_objects

SUPPORTED_MODALITIES = {"text"}
MAX_QUERY_LENGTH = 500
# Words to search for: no control characters (PostgreSQL text takes no NUL) and not only spaces.
QUERY_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
QUERY_RULE = re.compile(QUERY_PATTERN)


class SearchHit(DataObject):
    score: float = 0.0


class SearchResults(msgspec.Struct):
    results: list[SearchHit]
    total: int
    query: str
    filters: dict[str, Any]


# A filter value is a word to match: bounded, without control characters (PostgreSQL text takes no NUL).
FilterValue = Annotated[str, msgspec.Meta(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")]


class SearchFilters(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The spec's ``filters``: a JSON object over known keys, all optional."""

    content_type: FilterValue | None = None
    object_type: FilterValue | None = None
    owner: FilterValue | None = None
    metadata: dict[str, Any] | None = None  # containment: objects whose metadata includes this


def parse_filters(raw: str | None) -> dict[str, Any]:
    """The spec's ``filters`` query parameter: a JSON object over known keys."""
    if not raw:
        return {}
    try:
        filters = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ApiError(400, "validation_error", "filters must be a JSON object", {"field": "filters"}) from exc
    return check_filters(filters)


def check_filters(filters: Any) -> dict[str, Any]:
    """Filters as a JSON object over known keys (shared by REST and GraphQL)."""
    if not isinstance(filters, dict):
        raise ApiError(400, "validation_error", "filters must be a JSON object", {"field": "filters"})
    unknown = set(filters) - SEARCH_FILTERS
    if unknown:
        raise ApiError(
            400, "validation_error", f"unknown filters {sorted(unknown)}", {"allowed": sorted(SEARCH_FILTERS)}
        )
    try:
        checked = msgspec.convert(filters, SearchFilters)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "validation_error", f"filters: {exc}", {"field": "filters"}) from exc
    if checked.metadata is not None:  # compared as jsonb: the same rules as stored metadata
        checked_json(checked.metadata, "filters.metadata")
    result: dict[str, Any] = msgspec.to_builtins(checked)
    return result


async def run_search(
    container: ApiContainer, actor: Actor, query: str, modality: str, limit: int, offset: int, filters: dict[str, Any]
) -> SearchResults:
    """Search shared by REST and GraphQL; a non-admin only ever finds their own objects (visibility rule)."""
    if modality not in SUPPORTED_MODALITIES:
        raise ApiError(
            422, "unsupported_modality", f"modality {modality!r} is not supported", sorted(SUPPORTED_MODALITIES)
        )
    if len(query) > MAX_QUERY_LENGTH or not QUERY_RULE.match(query):
        raise ApiError(
            400,
            "validation_error",
            f"query must be 1..{MAX_QUERY_LENGTH} characters with a word in it and no control characters",
            {"field": "query"},
        )
    scoped = filters if actor.role == "admin" else {**filters, "owner": actor.user_id}
    async with container.pool.connection() as conn:
        rows, total = await search_data_objects(conn, query, scoped, limit, offset)
    hits = [SearchHit(**row, annotations=[]) for row in rows]
    return SearchResults(results=hits, total=total, query=query, filters=filters)


class SearchController(Controller):
    path = "/api/v1"
    tags = ["search"]

    @get(
        "/search",
        operation_id="searchData",
        summary="Search across ingested data (the caller's own objects; admins: all)",
        guards=[requires(Permission.READ)],
        opt={"json_query": {"filters": SearchFilters}},
    )
    async def search(
        self,
        request: Request[Any, Any, Any],
        container: ApiContainer,
        # `query` is a reserved litestar parameter name (the whole query string), hence the alias.
        search_query: Annotated[str, Parameter(query="query", max_length=MAX_QUERY_LENGTH, pattern=QUERY_PATTERN)],
        modality: Annotated[str, Parameter(schema_extra={"enum": sorted(SUPPORTED_MODALITIES)})] = "text",
        limit: Annotated[int, Parameter(ge=1, le=100)] = 10,
        offset: Annotated[int, Parameter(ge=0, le=10_000)] = 0,
        filters: Annotated[
            str | None, Parameter(description="A JSON object: content_type, object_type, owner, metadata (containment)")
        ] = None,
    ) -> SearchResults:
        return await run_search(
            container, actor_of(request), search_query, modality, limit, offset, parse_filters(filters)
        )

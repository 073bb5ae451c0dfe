"""REST: search over data objects (projections.search), shared with GraphQL's searchObjects."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from api.auth import actor_of
from api.data_service import wait_for_token
from api.errors import ApiError
from api.inputs import checked_json, json_object_text
from api.rbac import Permission, requires
from api.rest.data import ConsistencyToken, DataObject
from commands.envelope import Actor
from infra.runtime.bootstrap import ApiContainer
from projections.search import FILTER_KEYS, MODALITIES, SearchRequest, search

MAX_QUERY_LENGTH = 500
# Words to search for: no control characters (PostgreSQL text takes no NUL) and not only spaces.
QUERY_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
QUERY_RULE = re.compile(QUERY_PATTERN)


class SearchHit(DataObject):
    score: float = 0.0
    snippet: str = ""  # ts_headline of the matching text, matches in <b>...</b>; "" for modality metadata


class SearchResults(msgspec.Struct):
    results: list[SearchHit]
    total: int
    query: str | None
    modality: str
    filters: dict[str, Any]


# A filter value is a word to match: bounded, without control characters (PostgreSQL text takes no NUL).
FilterValue = Annotated[str, msgspec.Meta(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")]


class SearchFilters(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The spec's ``filters``: a JSON object over known keys, all optional."""

    content_type: FilterValue | None = None
    object_type: FilterValue | None = None
    owner: FilterValue | None = None
    metadata: dict[str, Any] | None = None  # containment: objects whose metadata includes this
    created_after: datetime | None = None  # inclusive; RFC 3339 with a time zone
    created_before: datetime | None = None  # exclusive
    annotation_type: FilterValue | None = None  # objects with an annotation of this type
    label: FilterValue | None = None  # objects with this label annotation


def parse_filters(raw: str | None) -> dict[str, Any]:
    """The spec's ``filters`` query parameter: a JSON object over known keys."""
    if not raw:
        return {}
    return check_filters(json_object_text(raw, "filters"))


def check_filters(filters: Any) -> dict[str, Any]:
    """Filters as a JSON object over known keys (shared by REST and GraphQL)."""
    if not isinstance(filters, dict):
        raise ApiError(400, "validation_error", "filters must be a JSON object", {"field": "filters"})
    unknown = set(filters) - FILTER_KEYS
    if unknown:
        raise ApiError(
            400,
            "validation_error",
            f"unknown filters {sorted(unknown)}",
            {"field": "filters", "allowed": sorted(FILTER_KEYS)},
        )
    try:
        checked = msgspec.convert(filters, SearchFilters)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "validation_error", f"filters: {exc}", {"field": "filters"}) from exc
    for moment in (checked.created_after, checked.created_before):
        if moment is not None and moment.tzinfo is None:
            raise ApiError(
                400, "validation_error", "created_after/created_before need a time zone", {"field": "filters"}
            )
    if checked.metadata is not None:  # compared as jsonb: the same rules as stored metadata
        checked_json(checked.metadata, "filters.metadata")
    result: dict[str, Any] = msgspec.to_builtins(checked)
    if checked.created_after is not None:
        result["created_after"] = checked.created_after
    if checked.created_before is not None:
        result["created_before"] = checked.created_before
    return result


def check_query(query: str | None, modality: str) -> str | None:
    """The query as the modality needs it: words for text, none for metadata (filters alone select)."""
    if modality not in MODALITIES:
        raise ApiError(
            400,
            "unsupported_modality",
            f"modality {modality!r} is not supported; use one of {', '.join(MODALITIES)}",
            {"field": "modality", "supported": list(MODALITIES)},
        )
    if modality == "metadata":
        if query is not None:
            raise ApiError(
                400,
                "validation_error",
                "modality metadata selects by filters alone: leave out query",
                {"field": "query"},
            )
        return None
    if query is None or len(query) > MAX_QUERY_LENGTH or not QUERY_RULE.match(query):
        raise ApiError(
            400,
            "validation_error",
            f"query must be 1..{MAX_QUERY_LENGTH} characters with a word in it and no control characters",
            {"field": "query"},
        )
    return query


async def run_search(
    container: ApiContainer,
    actor: Actor,
    query: str | None,
    modality: str,
    limit: int,
    offset: int,
    filters: dict[str, Any],
    token: str | None = None,
) -> SearchResults:
    """Search shared by REST and GraphQL; a non-admin only ever finds their own objects (visibility rule).
    With ``token`` (a write's position) it waits until the read models have applied that write."""
    checked = check_query(query, modality)
    await wait_for_token(container, token)
    request = SearchRequest(
        query=checked,
        modality=modality,
        filters=filters,
        limit=limit,
        offset=offset,
        owner_scope=None if actor.role == "admin" else actor.user_id,
        language=container.settings.search.language,
    )
    async with container.pool.connection() as conn:
        rows, total = await search(conn, request)
    hits = [msgspec.convert(row, SearchHit, from_attributes=True) for row in rows]
    shown = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in filters.items()}
    return SearchResults(results=hits, total=total, query=checked, modality=modality, filters=shown)


class SearchController(Controller):
    path = "/api/v1"
    tags = ["search"]

    @get(
        "/search",
        operation_id="searchData",
        summary="Search across ingested data (the caller's own objects; admins: all)",
        description='modality=text: full text with web-search syntax ("a phrase", or, -word) and word* prefixes,'
        " best first, with a highlighted snippet; modality=metadata: the filters alone, newest first (no query).",
        opt={**requires(Permission.READ), "json_query": {"filters": SearchFilters}},
    )
    async def search(
        self,
        request: Request[Any, Any, Any],
        container: NamedDependency[ApiContainer],
        # `query` is a reserved litestar parameter name (the whole query string), hence the alias.
        search_query: Annotated[
            str | None,
            QueryParameter(name="query", required=False, max_length=MAX_QUERY_LENGTH, pattern=QUERY_PATTERN),
        ] = None,
        modality: Annotated[str, QueryParameter(schema_extra={"enum": list(MODALITIES)})] = "text",
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 10,
        offset: Annotated[int, QueryParameter(ge=0, le=10_000)] = 0,
        filters: Annotated[
            str | None,
            QueryParameter(
                description="A JSON object: content_type, object_type, owner, metadata (containment),"
                " created_after, created_before, annotation_type, label"
            ),
        ] = None,
        consistency_token: ConsistencyToken = None,
    ) -> SearchResults:
        token = consistency_token or request.headers.get("x-consistency-token")
        return await run_search(
            container, actor_of(request), search_query, modality, limit, offset, parse_filters(filters), token
        )

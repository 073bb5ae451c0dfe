"""The spec's ``dataChanges(filters: JSON): DataObject`` subscription.

Each delivery is the object as the read model has it after the change, with ``changeType``
(INGESTED, ANNOTATED, DELETED) and ``version``. A deletion removes the row, so it delivers the
last state this subscription saw of the object, with the deletion's version: a subscriber only ever
hears of the deletion of an object it was shown (the object is gone, so its owner cannot be
checked any more), and a deletion of an object this subscription never saw is not delivered.

``filters`` (all optional, all must match): ``object_id``, ``content_type``, ``owner``,
``metadata`` (JSON containment, as PostgreSQL's ``@>``) and ``change_type`` (one name or a list,
any case). Unknown keys or wrong types answer a 400 before anything is delivered.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncGenerator
from typing import Any

import msgspec
import strawberry
from graphql import GraphQLError
from strawberry.scalars import JSON

from api.auth import actor_of
from api.graphql.errors import require
from api.graphql.live import live_caller, missed
from api.graphql.objects import ChangeType, DataObject, GqlInfo, to_object
from api.inputs import checked_json
from api.live_rights import mentions_user
from api.rbac import Permission, can_see
from projections.data_objects import get_data_object

LAST_SEEN_LIMIT = 10_000  # objects whose last state one subscription keeps, to deliver their deletion


class ChangeFilters(msgspec.Struct, forbid_unknown_fields=True):
    object_id: str | None = None
    content_type: str | None = None
    owner: str | None = None
    metadata: dict[str, Any] | None = None
    change_type: str | list[str] | None = None


def parse_filters(filters: Any) -> tuple[ChangeFilters, set[ChangeType] | None]:
    """The subscription's filters, checked; GraphQLError (400) when they are malformed."""
    try:
        parsed = msgspec.convert(filters or {}, ChangeFilters)
        if parsed.metadata is not None:
            checked_json(parsed.metadata, "filters.metadata")
        kinds = None
        if parsed.change_type is not None:
            names = [parsed.change_type] if isinstance(parsed.change_type, str) else parsed.change_type
            kinds = {ChangeType(name.upper()) for name in names}
    except (msgspec.ValidationError, ValueError) as exc:
        allowed = sorted(ChangeFilters.__struct_fields__)
        extensions = {"code": 400, "reason": "validation_error", "details": {"field": "filters", "allowed": allowed}}
        raise GraphQLError(f"filters: {exc}", extensions=extensions) from exc
    except Exception as exc:  # checked_json's ApiError: the same envelope
        raise GraphQLError(f"filters: {exc}", extensions={"code": 400, "reason": "validation_error"}) from exc
    return parsed, kinds


def contains(whole: Any, part: Any) -> bool:
    """JSON containment as jsonb's ``@>``: objects by key, arrays by element, scalars by equality."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(k in whole and contains(whole[k], v) for k, v in part.items())
    if isinstance(part, list):
        if not isinstance(whole, list):
            return False
        return all(any(contains(w, p) for w in whole) for p in part)
    return bool(whole == part and type(whole) is type(part))


def matches(row: dict[str, Any], kind: ChangeType, filters: ChangeFilters, kinds: set[ChangeType] | None) -> bool:
    """Does the object's state (after the change; the last state for a deletion) pass the filters?"""
    if kinds is not None and kind not in kinds:
        return False
    for key in ("object_id", "content_type", "owner"):
        wanted = getattr(filters, key)
        if wanted is not None and str(row[key]) != wanted:
            return False
    return filters.metadata is None or contains(row["metadata"], filters.metadata)


@strawberry.type
class DataChangeSubscription:
    @strawberry.subscription(
        description="Data objects as they change, with changeType and version; "
        "filters: {object_id, content_type, owner, metadata (containment), change_type}"
    )
    async def data_changes(self, info: GqlInfo, filters: JSON | None = None) -> AsyncGenerator[DataObject, None]:
        require(info.context.connection, Permission.READ)
        wanted, kinds = parse_filters(filters)
        container = info.context.container
        actor = actor_of(info.context.connection)
        last_seen: OrderedDict[str, dict[str, Any]] = OrderedDict()  # object id -> last row shown
        queue = container.changes.subscribe()
        try:
            while True:
                message = await queue.get()
                missed(message)
                changes = [c for c in message.get("changes", []) if c["type"].startswith("DataObject.")]
                if not changes and not mentions_user(message, actor.user_id):
                    continue
                now = await live_caller(info.context.connection, message)  # a disabled caller ends here
                if now != actor:
                    last_seen.clear()  # what an admin saw is not what a user may hear deleted
                    actor = now
                for change in changes:
                    kind = ChangeType(change["type"].partition(".")[2].upper())
                    async with container.pool.connection() as conn:
                        row = await get_data_object(conn, change["id"])
                    if row is not None:
                        if not can_see(actor.role, actor.user_id, row["owner"]):
                            continue
                        last_seen[change["id"]] = row
                        last_seen.move_to_end(change["id"])
                        while len(last_seen) > LAST_SEEN_LIMIT:
                            last_seen.popitem(last=False)
                    elif kind is ChangeType.DELETED and change["id"] in last_seen:
                        row = last_seen.pop(change["id"])
                    else:
                        continue
                    row = {**row, "version": change["version"]}  # the change's own version
                    if matches(row, kind, wanted, kinds):
                        yield to_object(row, kind)
        finally:
            container.changes.unsubscribe(queue)

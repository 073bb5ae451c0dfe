"""A data object as it was at a time or version: its events folded again by the domain's own aggregate.

The events come from the ``audit_log`` read model (the log's events with their stored state), are
decoded by the one mapper (infra.adapters.codec; upcast like any read) and applied in version order
to ``domain.data_object.DataObject``, so the object is what the domain itself made of them, not a
reading of the current row. The aggregate keeps only what decisions need (owner, deletion,
version, times); the fields it does not keep (content type, metadata, annotations) are taken from
the same events as they are folded. A deleted object is visible as of any moment before its
deletion, to its owner (from its events) and admins; before its creation, or from its deletion on,
there is nothing to see (404).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eventsourcing.persistence import StoredEvent

from api.audit_service import Connection, instant
from api.auth import actor_of
from api.data_service import wait_for_token
from api.errors import ApiError
from api.rbac import can_see
from domain.data_object import DataObject
from infra.adapters.codec import make_mapper
from infra.runtime.bootstrap import ApiContainer
from projections.audit_log import stored_events
from projections.data_objects import object_type

_MAPPER = make_mapper()
_TOPIC_MODULE = DataObject.__module__  # stored topics are "<module>:<Class.Event>"; the audit log keeps the latter
_VERSION = re.compile(r"^[0-9]{1,10}$")
MAX_VERSION = 2**31 - 1


@dataclass(frozen=True)
class AsOf:
    """A point in an object's life: a version number, or a moment."""

    version: int | None = None
    moment: datetime | None = None


def parse_as_of(value: str) -> AsOf:
    """``as_of``: a version number (1..2^31-1) or an RFC 3339 time with a time zone; 400 otherwise."""
    if _VERSION.match(value):
        version = int(value)
        if not 1 <= version <= MAX_VERSION:
            raise ApiError(400, "validation_error", "as_of version must be 1 or more", {"field": "as_of"})
        return AsOf(version=version)
    try:
        moment = instant(value, "as_of")
    except ApiError:
        moment = None
    if moment is None:  # unparsable, or empty
        message = "as_of must be a version number or an RFC 3339 time"
        raise ApiError(400, "validation_error", message, {"field": "as_of"})
    return AsOf(moment=moment)


async def object_as_of(
    connection: Connection, container: ApiContainer, object_id: str, as_of: str, token: str | None = None
) -> dict[str, Any]:
    """The object's row (as GET shows it, with "annotations") as of ``as_of`` (``parse_as_of``); 404 when it
    was not there then or is not the caller's to see, 400 for a bad ``as_of``."""
    at = parse_as_of(as_of)
    await wait_for_token(container, token)
    try:
        object_id = str(uuid.UUID(object_id))
    except ValueError as exc:
        raise ApiError(404, "not_found", "data object does not exist") from exc
    async with container.pool.connection() as conn:
        events = await stored_events(conn, object_id, at.version)
    row = fold(object_id, events, at.moment)
    actor = actor_of(connection)
    if row is None or not can_see(actor.role, actor.user_id, row["owner"]):
        raise ApiError(404, "not_found", f"data object {object_id} did not exist then")
    if at.version is not None and row["version"] < at.version:
        raise ApiError(404, "not_found", f"data object {object_id} has no version {at.version}")
    if row.pop("deleted"):
        raise ApiError(404, "not_found", f"data object {object_id} was deleted by then")
    return row


def fold(
    object_id: str, events: list[tuple[int, str, datetime, bytes]], until: datetime | None = None
) -> dict[str, Any] | None:
    """The object after its events up to ``until`` (all when None), or None if it did not exist yet.

    The row has the read model's columns, ``annotations`` and ``deleted``.
    """
    aggregate: DataObject | None = None
    created: Any = None
    annotations: list[dict[str, Any]] = []
    for version, event_type, occurred_at, state in events:
        if until is not None and occurred_at > until:
            break
        stored = StoredEvent(
            originator_id=uuid.UUID(object_id),
            originator_version=version,
            topic=f"{_TOPIC_MODULE}:{event_type}",
            state=state,
        )
        try:
            event: Any = _MAPPER.to_domain_event(stored)
            aggregate = event.mutate(aggregate)
        except Exception as exc:  # e.g. a version the audit log lacks (dead-lettered): not the caller's fault
            raise ApiError(
                422,
                "history_incomplete",
                f"the history of data object {object_id} cannot be folded at version {version}: {type(exc).__name__}",
                {"object_id": object_id, "version": version},
            ) from exc
        if isinstance(event, DataObject.Ingested):
            created = event
        elif isinstance(event, DataObject.Annotated):
            annotations.append(
                {
                    "annotation_id": event.annotation_id,
                    "annotator_id": event.annotator,
                    "annotation_type": event.annotation_type,
                    "content": event.content,
                    "confidence": event.confidence,
                    "source": event.source,
                    "created_at": event.timestamp,
                }
            )
    if aggregate is None or created is None:
        return None
    annotations.sort(key=lambda a: (a["created_at"], a["annotation_id"]))  # the read model's order
    return {
        "object_id": object_id,
        "object_type": object_type(created.content_type),
        "content_type": created.content_type,
        "content_hash": aggregate.content_hash,
        "storage_location": created.location,
        "content": created.content,  # small content travels in the event (None when the blob store has it)
        "size": created.size,
        "metadata": created.metadata,
        "owner": aggregate.owner,
        "version": aggregate.version,
        "created_at": aggregate.created_on,
        "updated_at": aggregate.modified_on,
        "annotations": annotations,
        "deleted": aggregate.deleted,
    }

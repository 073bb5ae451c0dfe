"""Data object commands and their handlers: load the aggregate, call one method."""

from __future__ import annotations

import hashlib
from typing import Any
from uuid import UUID, uuid5

import msgspec

from commands.envelope import CommandEnvelope
from commands.limits import (
    DEFAULT_LIMITS,
    AnnotationSource,
    AnnotationType,
    CommandLimits,
    Confidence,
    ContentType,
    Label,
)
from domain.data_object import DataObject
from domain.errors import DomainError


class IngestData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    content_type: ContentType
    content_hash: str
    size: int
    location: str
    metadata: dict[str, Any] = {}
    annotations: list[Label] = []
    content: str | None = None  # the content itself when it travels in the log (see inline_content)


class AnnotateObject(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    annotation_id: str
    annotation_type: AnnotationType
    content: Any
    confidence: Confidence = 1.0
    source: AnnotationSource = "user"  # the API never sets it; the executor says "graph:<execution id>"


class DeleteObject(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class ObjectNotFound(DomainError):
    code = "not_found"


class ObjectExists(DomainError):
    code = "conflict"


class Forbidden(DomainError):
    code = "forbidden"


class ContentMismatch(DomainError):
    code = "invalid"


INLINE_PREFIX = "inline://sha256/"


def inline_content(text: str, limit: int) -> dict[str, Any] | None:
    """IngestData's content fields for ``text`` carried in the log itself, or None above ``limit`` bytes.

    Small content travels in the command and its ``Ingested`` event (location
    ``inline://sha256/<hash>``): the event log is then its durable store and the read model keeps a
    copy, so no blob file is written and fsynced before the command is sent (issue 8: that fsync was
    the API's largest cost) and the projection reads nothing back. Larger content goes to the blob
    store; the caller puts it there when this answers None.
    """
    data = text.encode()
    if len(data) > limit:
        return None
    digest = hashlib.sha256(data).hexdigest()
    return {"content_hash": digest, "size": len(data), "location": INLINE_PREFIX + digest, "content": text}


def initial_annotation_id(object_id: UUID, index: int) -> str:
    """Ids of the annotations given at ingest are derived, so a replay yields the same ids."""
    return str(uuid5(object_id, f"initial-annotation-{index}"))


def ingest_data(
    aggregate: DataObject | None, command: IngestData, envelope: CommandEnvelope, limits: CommandLimits = DEFAULT_LIMITS
) -> DataObject:
    _require_writer(envelope)
    if aggregate is not None:
        raise ObjectExists(f"data object {envelope.aggregate_id} already exists")
    if command.content is not None:
        _check_inline(command)
    object_id = UUID(envelope.aggregate_id)
    obj = DataObject(
        id=object_id,
        content_type=command.content_type,
        content_hash=command.content_hash,
        size=command.size,
        location=command.location,
        metadata=command.metadata,
        owner=envelope.actor.user_id,
        content=command.content,
    )
    for index, label in enumerate(command.annotations):
        annotation_id = initial_annotation_id(object_id, index)
        actor = envelope.actor.user_id
        obj.annotate(annotation_id, "label", label, 1.0, actor, "ingest", limits.max_annotations_per_object)
    return obj


def may_change(aggregate: DataObject | None, envelope: CommandEnvelope) -> None:
    """Run before the expected-version check (commands/registry.py): a caller who may not change the
    object learns nothing of it, its version included (a 409 with the current version would tell)."""
    _owned(_existing(aggregate, envelope), envelope)


def annotate_object(
    aggregate: DataObject | None,
    command: AnnotateObject,
    envelope: CommandEnvelope,
    limits: CommandLimits = DEFAULT_LIMITS,
) -> DataObject:
    obj = _owned(_existing(aggregate, envelope), envelope)
    obj.annotate(
        command.annotation_id,
        command.annotation_type,
        command.content,
        command.confidence,
        envelope.actor.user_id,
        command.source,
        limits.max_annotations_per_object,
    )
    return obj


def delete_object(aggregate: DataObject | None, command: DeleteObject, envelope: CommandEnvelope) -> DataObject:
    obj = _owned(_existing(aggregate, envelope), envelope)
    obj.delete(envelope.actor.user_id)
    return obj


def _existing(aggregate: DataObject | None, envelope: CommandEnvelope) -> DataObject:
    if not isinstance(aggregate, DataObject):  # absent, or another kind of aggregate under this id
        raise ObjectNotFound(f"data object {envelope.aggregate_id} does not exist")
    return aggregate


def _owned(obj: DataObject, envelope: CommandEnvelope) -> DataObject:
    """Only the owner or an admin may change an object (see README "Authentication": visibility); to
    anyone else it does not exist (404, as reading it), so ids cannot be probed by writing to them."""
    _require_writer(envelope)
    if envelope.actor.role != "admin" and envelope.actor.user_id != obj.owner:
        raise ObjectNotFound(f"data object {envelope.aggregate_id} does not exist")
    return obj


def _check_inline(command: IngestData) -> None:
    """Content carried inline must be what its hash, size and location say (readers trust them)."""
    assert command.content is not None
    expected = inline_content(command.content, command.size)
    if expected is None or any(getattr(command, key) != value for key, value in expected.items()):
        raise ContentMismatch("inline content does not match its content_hash, size or location")


def _require_writer(envelope: CommandEnvelope) -> None:
    if envelope.actor.role not in ("admin", "user"):
        raise Forbidden(f"the {envelope.actor.role} role may not write", {"role": envelope.actor.role})

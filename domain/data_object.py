"""The data object aggregate: ingested content (by hash, small content itself), its annotations, its deletion."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError

# Who or what made an annotation (DataObject.Annotated.source): "user" (the API), "ingest" (labels
# given with the content), "graph:<execution id>" (a graph's sink); events written before the field
# existed (class_version 1) read as UNKNOWN_SOURCE.
ANNOTATION_SOURCE_PATTERN = r"^(user|ingest|unknown|graph:[0-9a-f-]{36})$"
UNKNOWN_SOURCE = "unknown"
# An annotation's type is a word naming a kind of note (label, keyword, sentiment:score), not text.
ANNOTATION_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.:/+-]{0,99}$"
# type/subtype with optional printable parameters: no markup, no control characters.
_MEDIA_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
CONTENT_TYPE_PATTERN = rf"^{_MEDIA_TOKEN}/{_MEDIA_TOKEN}(;[ -~]{{0,200}})?$"
# Annotations one object may have (setting storage.max_annotations_per_object): without a bound a client
# grows one aggregate, its state record and its read-model rows for ever.
MAX_ANNOTATIONS_PER_OBJECT = 1000


class DataObject(Aggregate):
    class Ingested(Aggregate.Created):
        content_type: str
        content_hash: str
        size: int
        location: str
        metadata: dict[str, Any]
        owner: str
        # The content itself (UTF-8 text) when it is small enough to travel in the log instead of the
        # blob store (location "inline://sha256/<hash>"); None when the blob store holds it. Added
        # later: older events have none.
        content: str | None = None

    class Annotated(Aggregate.Event):
        class_version = 2  # v2 added ``source``

        annotation_id: str
        annotation_type: str
        content: Any
        confidence: float
        annotator: str
        source: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            # v1 did not say who made it: the API, ingest labels and graph sinks all wrote the same shape.
            state["source"] = UNKNOWN_SOURCE

    class Deleted(Aggregate.Event):
        deleted_by: str

    @event(Ingested)
    def __init__(
        self,
        id: UUID,  # eventsourcing takes the aggregate id from an `id` parameter
        content_type: str,
        content_hash: str,
        size: int,
        location: str,
        metadata: dict[str, Any],
        owner: str,
        content: str | None = None,
    ) -> None:
        # Only what later decisions need is kept: the read model holds the rest.
        self.owner = owner
        self.content_hash = content_hash
        self.annotation_count = 0
        self.deleted = False

    def annotate(
        self,
        annotation_id: str,
        annotation_type: str,
        content: Any,
        confidence: float,
        annotator: str,
        source: str = "user",
        max_annotations: int = MAX_ANNOTATIONS_PER_OBJECT,
    ) -> None:
        self._require_live()
        if self.annotation_count >= max_annotations:
            raise TooManyAnnotations(
                f"data object {self.id} has {self.annotation_count} annotations, the most one object may have",
                {"object_id": str(self.id), "limit": max_annotations},
            )
        self._annotated(annotation_id, annotation_type, content, confidence, annotator, source)

    @event(Annotated)
    def _annotated(
        self, annotation_id: str, annotation_type: str, content: Any, confidence: float, annotator: str, source: str
    ) -> None:
        self.annotation_count += 1

    def delete(self, deleted_by: str) -> None:
        self._require_live()
        self._deleted(deleted_by)

    @event(Deleted)
    def _deleted(self, deleted_by: str) -> None:
        self.deleted = True

    def _require_live(self) -> None:
        if self.deleted:
            raise ObjectDeleted(f"data object {self.id} was deleted", {"object_id": str(self.id)})


class ObjectDeleted(DomainError):
    code = "gone"


class TooManyAnnotations(DomainError):
    code = "limit_reached"

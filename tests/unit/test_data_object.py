"""DataObject as Given (past events) / When (command) / Then (new events or refusal)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID, uuid4

import pytest

from commands.data import inline_content
from commands.envelope import Actor, CommandEnvelope
from commands.registry import VersionConflict, execute
from domain.data_object import DataObject, ObjectDeleted
from domain.errors import DomainError

ALICE = Actor("alice", "user")


def envelope(command: str, aggregate_id: UUID, payload: dict, expected: int | None = None) -> CommandEnvelope:
    return CommandEnvelope(
        command_id=str(uuid4()),
        type=command,
        aggregate_id=str(aggregate_id),
        payload=payload,
        actor=ALICE,
        expected_version=expected,
    )


INGEST = {"content_type": "text/plain", "content_hash": "ab" * 32, "size": 5, "location": "blob://sha256/x"}


def given_ingested(object_id: UUID) -> DataObject:
    obj = execute(envelope("IngestData", object_id, INGEST), None)
    obj.collect_events()
    return obj  # type: ignore[return-value]


def test_ingest_with_labels_records_ingested_then_one_annotation_per_label() -> None:
    object_id = uuid4()
    obj = execute(envelope("IngestData", object_id, {**INGEST, "annotations": ["red", "blue"]}), None)
    events: Sequence[Any] = obj.collect_events()
    assert [type(e).__name__ for e in events] == ["Ingested", "Annotated", "Annotated"]
    assert [e.originator_version for e in events] == [1, 2, 3]
    assert events[0].owner == "alice"
    assert [e.content for e in events[1:]] == ["red", "blue"]


def test_small_content_travels_in_the_ingested_event_with_its_hash() -> None:
    stored = inline_content("héllo", 16)
    assert stored is not None and stored["size"] == len("héllo".encode())
    assert stored["location"] == f"inline://sha256/{stored['content_hash']}"
    obj = execute(envelope("IngestData", uuid4(), {"content_type": "text/plain", **stored}), None)
    (event,) = obj.collect_events()
    assert event.content == "héllo" and event.content_hash == stored["content_hash"]  # type: ignore[attr-defined]


def test_content_over_the_inline_limit_is_left_to_the_blob_store() -> None:
    assert inline_content("x" * 17, 16) is None
    assert inline_content("", 0) is not None


@pytest.mark.parametrize(
    "change",
    [{"content_hash": "ab" * 32}, {"size": 4}, {"location": "blob://sha256/x"}, {"content": "hellO"}],
    ids=["hash", "size", "location", "content"],
)
def test_inline_content_that_does_not_match_its_hash_size_or_location_is_refused(change: dict[str, Any]) -> None:
    stored = inline_content("hello", 16)
    assert stored is not None
    with pytest.raises(DomainError) as refused:
        execute(envelope("IngestData", uuid4(), {"content_type": "text/plain", **stored, **change}), None)
    assert refused.value.code == "invalid"


def test_ingest_of_an_existing_id_is_refused() -> None:
    object_id = uuid4()
    obj = given_ingested(object_id)
    with pytest.raises(DomainError) as refused:
        execute(envelope("IngestData", object_id, INGEST), obj)
    assert refused.value.code == "conflict"


def test_annotate_records_annotated_with_the_caller_as_annotator() -> None:
    object_id = uuid4()
    obj = given_ingested(object_id)
    payload = {"annotation_id": "a1", "annotation_type": "label", "content": {"x": 1}, "confidence": 0.5}
    events: Sequence[Any] = execute(envelope("AnnotateObject", object_id, payload), obj).collect_events()
    assert len(events) == 1
    assert (events[0].annotator, events[0].confidence, events[0].originator_version) == ("alice", 0.5, 2)


def test_annotating_a_missing_object_is_not_found() -> None:
    payload = {"annotation_id": "a1", "annotation_type": "label", "content": 1}
    with pytest.raises(DomainError) as refused:
        execute(envelope("AnnotateObject", uuid4(), payload), None)
    assert refused.value.code == "not_found"


def test_deleted_object_refuses_annotation_and_second_delete() -> None:
    object_id = uuid4()
    obj = given_ingested(object_id)
    events = execute(envelope("DeleteObject", object_id, {}), obj).collect_events()
    assert [type(e).__name__ for e in events] == ["Deleted"]
    with pytest.raises(ObjectDeleted):
        execute(envelope("DeleteObject", object_id, {}), obj)
    with pytest.raises(ObjectDeleted):
        execute(
            envelope("AnnotateObject", object_id, {"annotation_id": "a", "annotation_type": "t", "content": 1}), obj
        )


def test_stale_expected_version_is_a_conflict_and_changes_nothing() -> None:
    object_id = uuid4()
    obj = given_ingested(object_id)
    with pytest.raises(VersionConflict) as refused:
        execute(envelope("DeleteObject", object_id, {}, expected=7), obj)
    assert refused.value.details == {"expected_version": 7, "current_version": 1}
    assert obj.collect_events() == [] and not obj.deleted


def test_unknown_payload_fields_are_invalid() -> None:
    with pytest.raises(DomainError) as refused:
        execute(envelope("IngestData", uuid4(), {**INGEST, "surprise": 1}), None)
    assert refused.value.code == "invalid"


def test_processor_puts_back_an_aggregate_that_a_refusing_handler_changed() -> None:
    """A handler that triggers an event and then refuses must leave no trace in the processor's state."""
    from pathlib import Path
    from tempfile import TemporaryDirectory

    from commands.processor import CommandProcessor, ProcessorConfig, _EventOffsets, _Step, fingerprint
    from commands.state_store import AggregateState
    from infra.adapters.codec import make_mapper

    def half_then_refuse(env: CommandEnvelope, aggregate: Any) -> Any:
        aggregate.annotate("x", "label", "half", 1.0, "alice")
        raise DomainError("refused after a change")

    object_id = uuid4()
    with TemporaryDirectory() as tmp:
        config = ProcessorConfig("unused", "c", "e", "o", "s", "d", "g", "t", Path(tmp))
        processor = CommandProcessor(config, make_mapper(), run_command=half_then_refuse)
        state = AggregateState(given_ingested(object_id))
        step = _Step(envelope("AnnotateObject", object_id, {}), "f")
        step.fingerprint = fingerprint(step.envelope)
        import asyncio

        asyncio.run(processor._apply(None, 0, step, state, _EventOffsets(None)))
    assert step.rejection is not None and step.rejection.message == "refused after a change"
    assert state.aggregate is not None
    restored: Any = state.aggregate
    assert restored.annotation_count == 0 and restored.version == 1
    assert state.aggregate.collect_events() == []

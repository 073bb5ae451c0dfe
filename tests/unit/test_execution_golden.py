"""Golden serialized examples of every Execution event type."""

from __future__ import annotations

from typing import Any

import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import StoredEvent

from domain.execution import Execution
from infra.adapters.codec import make_mapper
from tests.unit.test_event_golden import AT, ID, TS

E: Any = Execution  # event classes are made at runtime; mypy cannot see their fields
GRAPH = {"nodes": [{"id": "a", "type": "input", "params": {"name": "t"}}], "edges": []}
SUMMARY = {"value": {"kind": "str", "length": 2, "preview": '"hi"'}}

GOLDEN: list[tuple[Aggregate.Event, str]] = [
    (
        E.Submitted(
            originator_id=ID,
            originator_version=1,
            timestamp=AT,
            originator_topic="domain.execution:Execution",
            graph=GRAPH,
            inputs={"t": "hi"},
            options={},
            node_order=["a"],
            estimated_time_seconds=0.51,
            submitter="alice",
            submitter_role="user",
        ),
        '{"timestamp":' + TS + ',"originator_topic":"domain.execution:Execution",'
        '"graph":{"nodes":[{"id":"a","type":"input","params":{"name":"t"}}],"edges":[]},"inputs":{"t":"hi"},'
        '"options":{},"node_order":["a"],"estimated_time_seconds":0.51,"submitter":"alice","submitter_role":"user"}',
    ),
    (
        E.NodeStarted(originator_id=ID, originator_version=2, timestamp=AT, node_id="a"),
        '{"timestamp":' + TS + ',"node_id":"a"}',
    ),
    (
        E.NodeCompleted(
            originator_id=ID,
            originator_version=3,
            timestamp=AT,
            node_id="a",
            summary=SUMMARY,
            output={"value": "hi"},
            output_location=None,
        ),
        '{"timestamp":' + TS + ',"node_id":"a","summary":{"value":{"kind":"str","length":2,"preview":"\\"hi\\""}},'
        '"output":{"value":"hi"},"output_location":null}',
    ),
    (
        E.NodeFailed(originator_id=ID, originator_version=3, timestamp=AT, node_id="a", error="boom"),
        '{"timestamp":' + TS + ',"node_id":"a","error":"boom"}',
    ),
    (E.Completed(originator_id=ID, originator_version=4, timestamp=AT), '{"timestamp":' + TS + "}"),
    (
        E.Failed(originator_id=ID, originator_version=4, timestamp=AT, error="node a failed: boom"),
        '{"timestamp":' + TS + ',"error":"node a failed: boom"}',
    ),
    (
        E.Cancelled(originator_id=ID, originator_version=4, timestamp=AT, cancelled_by="alice"),
        '{"timestamp":' + TS + ',"cancelled_by":"alice"}',
    ),
]


# Shapes stored before an optional field was added: they must still read, with the field's default.
LEGACY: list[tuple[str, str, dict[str, Any]]] = [
    (
        "Submitted",
        '{"timestamp":' + TS + ',"originator_topic":"domain.execution:Execution",'
        '"graph":{"nodes":[{"id":"a","type":"input","params":{"name":"t"}}],"edges":[]},"inputs":{"t":"hi"},'
        '"options":{},"node_order":["a"],"estimated_time_seconds":0.51,"submitter":"alice"}',
        {"submitter": "alice", "submitter_role": None},
    ),
]


@pytest.mark.parametrize(("event", "golden"), GOLDEN, ids=lambda v: type(v).__qualname__)
def test_execution_event_serializes_to_its_golden_example(event: Aggregate.Event, golden: str) -> None:
    stored = make_mapper().to_stored_event(event)
    assert stored.state.decode() == golden
    assert stored.topic == f"domain.execution:{type(event).__qualname__}"


@pytest.mark.parametrize(("event", "golden"), GOLDEN, ids=lambda v: type(v).__qualname__)
def test_execution_golden_example_deserializes_to_the_same_event(event: Aggregate.Event, golden: str) -> None:
    stored = StoredEvent(ID, event.originator_version, f"domain.execution:{type(event).__qualname__}", golden.encode())
    assert make_mapper().to_domain_event(stored) == event


def test_every_execution_event_type_has_a_golden_example() -> None:
    declared = {
        name
        for name, value in vars(Execution).items()
        if isinstance(value, type) and issubclass(value, Aggregate.Event) and name not in {"Event", "Created"}
    }
    assert declared == {type(event).__name__ for event, _ in GOLDEN}


@pytest.mark.parametrize(("name", "stored", "expected"), LEGACY, ids=lambda v: v if isinstance(v, str) else "")
def test_execution_events_stored_before_an_optional_field_still_read(
    name: str, stored: str, expected: dict[str, Any]
) -> None:
    event = make_mapper().to_domain_event(StoredEvent(ID, 1, f"domain.execution:Execution.{name}", stored.encode()))
    assert {key: getattr(event, key) for key in expected} == expected


def test_an_execution_submitted_before_roles_were_recorded_rebuilds_with_no_recorded_role() -> None:
    stored = StoredEvent(ID, 1, "domain.execution:Execution.Submitted", LEGACY[0][1].encode())
    event: Any = make_mapper().to_domain_event(stored)
    execution: Any = event.mutate(None)
    assert execution.submitter == "alice" and execution.submitter_role is None

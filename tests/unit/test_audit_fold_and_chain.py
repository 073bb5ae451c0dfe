"""Pure parts of the audit: folding a data object as of a point, checking a hash chain, parsing as_of."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
import pytest

from api.as_of import fold, parse_as_of
from api.errors import ApiError
from commands.state_store import chain_hash
from domain.data_object import DataObject
from infra.adapters.codec import make_mapper
from infra.runtime.audit_verify import VerifyReport, _Chains

MAPPER = make_mapper()


def logged_events(object_id: uuid.UUID) -> list[tuple[int, str, Any, bytes]]:
    """An object's events as the audit log keeps them: (version, short type, timestamp, stored state)."""
    obj = DataObject(
        id=object_id, content_type="text/plain", content_hash="ab" * 32, size=5, location="blob", metadata={}, owner="u"
    )
    obj.annotate("a1", "label", "first", 1.0, "u")
    obj.annotate("a2", "sentiment", {"score": 0.5}, 0.5, "u")
    obj.delete("u")
    out = []
    for event in obj.collect_events():
        stored = MAPPER.to_stored_event(event)
        # the read model keeps the state as jsonb: its text comes back reformatted
        state = orjson.dumps(orjson.loads(stored.state), option=orjson.OPT_SORT_KEYS)
        out.append((stored.originator_version, stored.topic.rsplit(":", 1)[-1], event.timestamp, state))
    return out


def test_fold_gives_the_object_at_each_version_and_time() -> None:
    object_id = uuid.uuid4()
    events = logged_events(object_id)
    at_two = fold(str(object_id), events[:2])
    assert at_two is not None
    assert at_two["version"] == 2 and at_two["owner"] == "u" and not at_two["deleted"]
    assert at_two["object_type"] == "text" and at_two["storage_location"] == "blob"
    assert [a["annotation_id"] for a in at_two["annotations"]] == ["a1"]
    assert at_two["created_at"] == events[0][2] and at_two["updated_at"] == events[1][2]
    by_time = fold(str(object_id), events, until=events[2][2])
    assert by_time is not None and by_time["version"] == 3 and len(by_time["annotations"]) == 2
    everything = fold(str(object_id), events)
    assert everything is not None and everything["deleted"] and everything["version"] == 4
    assert fold(str(object_id), events, until=events[0][2] - timedelta(microseconds=1)) is None


def test_fold_refuses_a_history_with_a_gap() -> None:
    object_id = uuid.uuid4()
    events = logged_events(object_id)
    with pytest.raises(ApiError) as refused:
        fold(str(object_id), [events[0], events[2]])
    assert refused.value.reason == "history_incomplete"


@pytest.mark.parametrize("value", ["", "0", "-1", "soon", "2026-12-01", "2026-12-01T10:00:00", "99999999999"])
def test_bad_as_of_is_refused(value: str) -> None:
    with pytest.raises(ApiError) as refused:
        parse_as_of(value)
    assert refused.value.status == 400


def test_as_of_takes_versions_and_times_with_a_zone() -> None:
    assert parse_as_of("3").version == 3
    moment = parse_as_of("2026-12-01T10:00:00Z").moment
    assert moment is not None and moment.utcoffset() == timedelta(0)


@dataclass
class Record:
    value: bytes
    partition: int = 0
    offset: int = 0
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def chain(aggregate_id: str, states: list[bytes]) -> list[tuple[Record, dict[str, str]]]:
    """Records chained as the command processor chains them (commands.state_store.chain_hash)."""
    out, previous = [], ""
    for version, state in enumerate(states, start=1):
        topic = "domain.data_object:DataObject.Annotated"
        digest = chain_hash(previous, topic, aggregate_id, version, state)
        headers = {
            "aggregate_id": aggregate_id,
            "aggregate_version": str(version),
            "event_type": topic,
            "prev_hash": previous,
            "hash": digest,
        }
        out.append((Record(state, offset=version), headers))
        previous = digest
    return out


def check(records: list[tuple[Record, dict[str, str]]]) -> VerifyReport:
    report = VerifyReport()
    chains = _Chains(report, from_start=True)
    for record, headers in records:
        chains.check(record, headers)
    return report


def test_an_intact_chain_passes() -> None:
    assert check(chain("a", [b"{}", b'{"x":1}', b'{"x":2}'])).broken == []


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda rs: rs[1][0].__setattr__("value", b'{"x":9}'), "hash does not match"),
        (lambda rs: rs[1][1].__setitem__("prev_hash", "0" * 64), "prev_hash is not the hash of version 1"),
        (lambda rs: rs[2][1].__setitem__("aggregate_version", "4"), "version 4 follows version 2"),
        (lambda rs: rs.pop(0), "the first event has version 2"),
    ],
)
def test_a_broken_link_is_named_once(tamper: Any, reason: str) -> None:
    records = chain("a", [b"{}", b'{"x":1}', b'{"x":2}'])
    tamper(records)
    broken = check(records).broken
    assert len(broken) == 1 and broken[0].aggregate_id == "a" and broken[0].reason.startswith(reason)

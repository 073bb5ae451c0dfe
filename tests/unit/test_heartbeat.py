"""The watchdog's judgement (infra.runtime.heartbeat.stall_reason) and the restart backoff."""

from __future__ import annotations

from infra.provision.services import Backoff
from infra.runtime.heartbeat import Beat, describe, stall_reason

NOW = 10_000.0
STALL = 60.0


def beat(*, written: float = 1, progress: float = 1, lag: int = 0, pid: int = 7) -> Beat:
    """A heartbeat written ``written`` s ago, with progress ``progress`` s ago."""
    return Beat("projections", pid, NOW - written, NOW - written, NOW - progress, lag)


def test_a_worker_with_records_waiting_and_no_progress_is_stuck() -> None:
    assert stall_reason(beat(progress=61, lag=5), 7, NOW, since=0, stall_seconds=STALL) is not None


def test_an_idle_worker_is_not_stuck_however_long_since_its_last_batch() -> None:
    assert stall_reason(beat(progress=3600, lag=0), 7, NOW, since=0, stall_seconds=STALL) is None


def test_a_worker_that_stopped_writing_heartbeats_is_stuck() -> None:
    assert "no heartbeat" in (stall_reason(beat(written=61), 7, NOW, since=0, stall_seconds=STALL) or "")


def test_time_before_since_does_not_count() -> None:
    # The broker was back only 10 s ago: the worker has had 10 s, not 61, to make progress.
    assert stall_reason(beat(progress=61, lag=5), 7, NOW, since=NOW - 10, stall_seconds=STALL) is None


def test_a_heartbeat_of_an_earlier_process_is_not_this_ones() -> None:
    old = beat(written=1, lag=0, pid=6)
    assert stall_reason(old, 7, NOW, since=NOW - 30, stall_seconds=STALL) is None  # still starting
    assert stall_reason(old, 7, NOW, since=NOW - 61, stall_seconds=STALL) is not None


def test_health_describes_stalled_down_and_unknown_workers() -> None:
    assert describe(beat(progress=61, lag=5), NOW, STALL)["status"] == "stalled"
    assert describe(beat(written=30), NOW, STALL)["status"] == "down"
    assert describe(beat(), NOW, STALL)["status"] == "ok"
    assert describe(None, NOW, STALL) == {"status": "unknown"}


def test_backoff_doubles_up_to_its_limit() -> None:
    backoff = Backoff(first=1.0, limit=30.0)
    assert [backoff.delay(n) for n in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_health_says_retrying_while_a_partition_keeps_failing_though_others_progress() -> None:
    # Found in the fourth hardening sweep: a projection partition retried one event for ever while the
    # other partition progressed, and /health said "ok".
    failing = Beat("projections", 7, NOW - 1, NOW - 1, NOW - 1, 2, failing={"1": 9, "0": 1})
    described = describe(failing, NOW, STALL)
    assert described["status"] == "retrying" and described["failing_partitions"] == {"1": 9}, described
    briefly = Beat("projections", 7, NOW - 1, NOW - 1, NOW - 1, 2, failing={"1": 2})
    assert describe(briefly, NOW, STALL)["status"] == "ok"  # a blip: backing off, not stuck

"""Execution as Given (past commands) / When (command) / Then (new events or refusal)."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest

from commands.envelope import Actor, CommandEnvelope
from commands.registry import execute
from domain.errors import DomainError
from domain.execution import Execution

ALICE = Actor("alice", "user")
GRAPH = {
    "nodes": [{"id": "a", "type": "input", "params": {"name": "t"}}, {"id": "b", "type": "word_count"}],
    "edges": [{"from": "a.value", "to": "b.text"}],
}


def envelope(command: str, execution_id: UUID, payload: dict, actor: Actor = ALICE) -> CommandEnvelope:
    return CommandEnvelope(
        command_id=str(uuid4()), type=command, aggregate_id=str(execution_id), payload=payload, actor=actor
    )


def given(execution_id: UUID, *commands: tuple[str, dict]) -> Execution:
    execution: Any = execute(envelope("ExecuteGraph", execution_id, {"graph": GRAPH, "inputs": {"t": "x"}}), None)
    for command, payload in commands:
        execution = execute(envelope(command, execution_id, payload), execution)
    execution.collect_events()
    return execution


def when(execution: Execution, command: str, payload: dict, actor: Actor = ALICE) -> list[str]:
    changed = execute(envelope(command, execution.id, payload, actor), execution)
    return [type(e).__qualname__ for e in changed.collect_events()]


def refusal(execution: Execution | None, command: str, payload: dict, actor: Actor = ALICE) -> DomainError:
    with pytest.raises(DomainError) as caught:
        execute(envelope(command, execution.id if execution else uuid4(), payload, actor), execution)
    return caught.value


def test_valid_graph_is_submitted_with_its_order_and_estimate() -> None:
    execution_id = uuid4()
    execution: Any = execute(envelope("ExecuteGraph", execution_id, {"graph": GRAPH}), None)
    [submitted] = execution.collect_events()
    assert type(submitted).__qualname__ == "Execution.Submitted"
    assert submitted.node_order == ["a", "b"] and submitted.submitter == "alice"
    assert submitted.submitter_role == "user"
    assert submitted.estimated_time_seconds > 0


@pytest.mark.parametrize("role", ["viewer", "system", ""])
def test_only_users_and_admins_may_submit_a_graph(role: str) -> None:
    error = refusal(None, "ExecuteGraph", {"graph": GRAPH}, Actor("vic", role))
    assert error.code == "forbidden" and error.details == {"role": role}


def test_invalid_graph_is_refused_with_every_problem_and_no_event() -> None:
    graph = {"nodes": [{"id": "a", "type": "nope"}, {"id": "b", "type": "word_count"}], "edges": []}
    error = refusal(None, "ExecuteGraph", {"graph": graph})
    assert error.code == "invalid_graph"
    found: Any = error.details["problems"]
    assert [(p["node_id"], p["port"]) for p in found] == [("a", None), ("b", "text")]


def test_node_steps_record_progress_and_completion() -> None:
    execution = given(uuid4(), ("StartNode", {"node_id": "a"}))
    assert when(execution, "CompleteNode", {"node_id": "a", "summary": {}, "output": {"value": "x"}}) == [
        "Execution.NodeCompleted"
    ]
    assert execution.progress == 0.5
    when(execution, "StartNode", {"node_id": "b"})
    when(execution, "CompleteNode", {"node_id": "b", "summary": {}})
    assert when(execution, "CompleteExecution", {}) == ["Execution.Completed"]
    assert execution.status == "completed"


def test_a_claimed_nodes_result_with_finish_completes_the_execution_once_it_is_the_last() -> None:
    execution = given(uuid4(), ("StartNode", {"node_id": "a"}), ("StartNode", {"node_id": "b"}))
    finishing = {"summary": {}, "finish": True}
    assert when(execution, "CompleteNode", {"node_id": "a", **finishing}) == ["Execution.NodeCompleted"]
    assert execution.status == "running"
    assert when(execution, "CompleteNode", {"node_id": "b", **finishing}) == [
        "Execution.NodeCompleted",
        "Execution.Completed",
    ]


def test_a_recorded_node_is_started_and_completed_by_one_command() -> None:
    execution = given(uuid4())
    record = {"node_id": "a", "summary": {}, "output": {"value": "x"}, "finish": True}
    # Not the last node: finish does not complete the execution yet.
    assert when(execution, "RecordNode", record) == ["Execution.NodeStarted", "Execution.NodeCompleted"]
    assert execution.status == "running"
    assert refusal(execution, "RecordNode", record).details == {"node_id": "a"}  # recorded once
    assert when(execution, "RecordNode", {**record, "node_id": "b"}) == [
        "Execution.NodeStarted",
        "Execution.NodeCompleted",
        "Execution.Completed",
    ]
    assert refusal(execution, "RecordNode", {**record, "node_id": "b"}).code == "conflict"


def test_recorded_nodes_are_started_and_completed_by_one_command_and_a_repeat_skips_them() -> None:
    execution = given(uuid4())
    a = {"node_id": "a", "summary": {}, "output": {"value": "x"}}
    b = {"node_id": "b", "summary": {}, "output": {"count": 1}}
    assert when(execution, "RecordNodes", {"nodes": [a]}) == ["Execution.NodeStarted", "Execution.NodeCompleted"]
    # An executor that resumed groups the results otherwise: what is recorded already is skipped.
    assert when(execution, "RecordNodes", {"nodes": [a, b], "finish": True}) == [
        "Execution.NodeStarted",
        "Execution.NodeCompleted",
        "Execution.Completed",
    ]
    assert execution.status == "completed"
    assert refusal(execution, "RecordNodes", {"nodes": [a, b]}).code == "conflict"


def test_recording_nothing_new_is_a_conflict_naming_the_node_and_an_unknown_node_is_refused() -> None:
    execution = given(uuid4())
    a = {"node_id": "a", "summary": {}, "output": {"value": "x"}}
    when(execution, "RecordNodes", {"nodes": [a]})
    assert refusal(execution, "RecordNodes", {"nodes": [a]}).details == {"node_id": "a"}
    unknown = refusal(execution, "RecordNodes", {"nodes": [{**a, "node_id": "zz"}]})
    assert unknown.details == {"node_id": "zz"}
    assert refusal(execution, "RecordNodes", {"nodes": []}).code == "invalid"
    assert execution.nodes == {"a": "completed", "b": "pending"}


def test_completed_node_is_not_started_again() -> None:
    execution = given(uuid4(), ("StartNode", {"node_id": "a"}), ("CompleteNode", {"node_id": "a", "summary": {}}))
    assert refusal(execution, "StartNode", {"node_id": "a"}).code == "conflict"


def test_started_node_may_start_again_after_an_executor_crash() -> None:
    execution = given(uuid4(), ("StartNode", {"node_id": "a"}))
    assert when(execution, "StartNode", {"node_id": "a"}) == ["Execution.NodeStarted"]


def test_failed_node_fails_the_execution() -> None:
    execution = given(uuid4(), ("StartNode", {"node_id": "a"}))
    assert when(execution, "FailNode", {"node_id": "a", "error": "boom"}) == [
        "Execution.NodeFailed",
        "Execution.Failed",
    ]
    assert refusal(execution, "StartNode", {"node_id": "b"}).code == "conflict"


def test_completion_with_unfinished_nodes_is_refused() -> None:
    assert refusal(given(uuid4()), "CompleteExecution", {}).code == "conflict"


def test_only_the_submitter_or_an_admin_cancels_and_others_are_told_it_does_not_exist() -> None:
    execution = given(uuid4())
    assert refusal(execution, "CancelExecution", {}, Actor("mallory", "user")).code == "not_found"
    assert when(execution, "CancelExecution", {}, Actor("root", "admin")) == ["Execution.Cancelled"]
    assert refusal(execution, "CancelExecution", {}).code == "conflict"


def test_unknown_node_and_unknown_execution_are_refused() -> None:
    assert refusal(given(uuid4()), "StartNode", {"node_id": "zz"}).code == "invalid"
    assert refusal(None, "StartNode", {"node_id": "a"}).code == "not_found"


def test_data_object_commands_on_an_execution_id_are_not_found() -> None:
    execution = given(uuid4())
    payload = {"annotation_id": "a", "annotation_type": "t", "content": 1}
    assert refusal(execution, "AnnotateObject", payload).code == "not_found"
    assert refusal(execution, "DeleteObject", {}).code == "not_found"


def test_an_execution_that_cannot_run_is_failed_as_a_whole() -> None:
    execution = given(uuid4())
    assert when(execution, "FailExecution", {"error": "graph no longer valid"}) == ["Execution.Failed"]
    assert refusal(execution, "FailExecution", {"error": "again"}).code == "conflict"


def test_options_the_system_reads_are_checked() -> None:
    error = refusal(None, "ExecuteGraph", {"graph": GRAPH, "options": {"node_timeout_seconds": -1, "tag": "x"}})
    assert error.code == "invalid"
    assert error.details["problems"] == [
        {"node_id": None, "port": None, "message": "option node_timeout_seconds must be >= 0.1"}
    ]

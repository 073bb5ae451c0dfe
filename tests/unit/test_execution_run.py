"""The executor's run of one execution, against the real command handlers and in-memory fakes of I/O."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any
from uuid import uuid4

import pytest

from commands.envelope import Actor, CommandEnvelope, Outcome, Rejection
from commands.execution_run import DISABLED, ExecutionRun, ExecutionView, RunDeps, acting_role
from commands.registry import execute
from domain.errors import DomainError
from domain.graph import parse_graph

OBJECT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
GRAPH = {
    "nodes": [
        {"id": "src", "type": "input", "params": {"name": "text"}},
        {"id": "kw", "type": "keywords", "params": {"top_k": 2}},
        {"id": "note", "type": "annotate", "params": {"object_id": OBJECT_ID, "each": True}},
    ],
    "edges": [{"from": "src.value", "to": "kw.text"}, {"from": "kw.keywords", "to": "note.content"}],
}
TEXT = "Rivers carry water. Rivers carry boats. Boats carry people across rivers."


ALICE = Actor("alice", "user")


def envelope(kind: str, aggregate_id: str, payload: dict[str, Any], command_id: str) -> CommandEnvelope:
    return CommandEnvelope(command_id=command_id, type=kind, aggregate_id=aggregate_id, payload=payload, actor=ALICE)


class World:
    """The command path in memory: aggregates by id, outcomes remembered by command id, blobs by hash."""

    def __init__(self) -> None:
        self.aggregates: dict[str, Any] = {}
        self.outcomes: dict[str, Outcome] = {}
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.blobs: dict[str, bytes] = {}
        self.view: ExecutionView | None = None
        self.users: dict[str, tuple[str, bool]] = {"alice": ("user", False)}  # the users read model

    async def submit(self, envelope: CommandEnvelope) -> Outcome:
        if envelope.command_id in self.outcomes:
            return self.outcomes[envelope.command_id]
        self.commands.append((envelope.type, envelope.payload))
        try:
            aggregate = execute(envelope, self.aggregates.get(envelope.aggregate_id))
        except DomainError as exc:
            return Outcome(
                command_id=envelope.command_id,
                aggregate_id=envelope.aggregate_id,
                accepted=False,
                rejection=Rejection(exc.code, exc.message, dict(exc.details)),
            )
        self.aggregates[envelope.aggregate_id] = aggregate
        for event in aggregate.collect_events():
            self.fold(type(event).__name__, event)
        outcome = Outcome(command_id=envelope.command_id, aggregate_id=envelope.aggregate_id, accepted=True)
        self.outcomes[envelope.command_id] = outcome
        return outcome

    def fold(self, kind: str, event: Any) -> None:
        """What the executor's consumer does with the execution's events."""
        if self.view is None or str(event.originator_id) != self.view.execution_id:
            return
        if kind == "NodeCompleted":
            self.view.completed[event.node_id] = (event.output, event.output_location)
        elif kind in {"Completed", "Failed", "Cancelled"}:
            self.view.status = kind.lower()

    def put_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return f"blob://sha256/{digest}"

    def deps(self, **overrides: Any) -> RunDeps:
        async def load_object(submitter: Actor, object_id: str) -> str:
            return TEXT

        async def search(submitter: Actor, query: str, limit: int) -> list[dict[str, Any]]:
            return []

        async def lookup_user(user_id: str) -> tuple[str, bool] | None:
            return self.users.get(user_id)

        fields: dict[str, Any] = {
            "submit": self.submit,
            "put_blob": self.put_blob,
            "get_blob": lambda location: self.blobs[location.rsplit("/", 1)[-1]],
            "load_object": load_object,
            "search": search,
            "lookup_user": lookup_user,
            "record_linger": 60.0,  # results are sent together before a sink's claim or at the end
            **overrides,
        }
        return RunDeps(**fields)

    async def given_submitted(self, graph: dict[str, Any], inputs: dict[str, Any]) -> ExecutionView:
        execution_id = str(uuid4())
        ingest = {"content_type": "text/plain", "content_hash": "ab" * 32, "size": 1, "location": "blob://x"}
        await self.submit(envelope("IngestData", OBJECT_ID, ingest, "ingest"))
        self.view = ExecutionView(execution_id, graph, inputs, "alice", 0, 0, submitter_role="user")
        submitted = await self.submit(envelope("ExecuteGraph", execution_id, {"graph": graph, "inputs": inputs}, "s"))
        assert submitted.accepted
        self.commands.clear()
        return self.view


def kinds(world: World) -> list[str]:
    return [kind for kind, _ in world.commands]


async def test_run_reports_each_node_then_completes_and_annotates() -> None:
    world = World()
    view = await world.given_submitted(GRAPH, {"text": TEXT})
    await ExecutionRun(view, world.deps()).run()
    # Side-effect-free nodes: start and result in one command for all that finished before the sink,
    # not waited for. The sink claims its node first (StartNode), since its effects must not be issued
    # twice; its result (the last node's) completes the execution too.
    assert kinds(world) == ["RecordNodes", "StartNode", "AnnotateObject", "AnnotateObject", "CompleteNode"]
    assert world.commands[-1][1]["finish"] is True
    recorded = [[n["node_id"] for n in p["nodes"]] for kind, p in world.commands if kind == "RecordNodes"]
    assert recorded == [["src", "kw"]]
    assert view.status == "completed"
    notes = [p["content"]["term"] for kind, p in world.commands if kind == "AnnotateObject"]
    assert notes == ["carry", "rivers"]
    assert world.aggregates[OBJECT_ID].annotation_count == 2


async def test_a_second_run_resumes_without_repeating_completed_nodes() -> None:
    world = World()
    view = await world.given_submitted(GRAPH, {"text": TEXT})
    # An executor that recorded the first node, then died.
    first = ExecutionRun(view, world.deps())
    await first._run_node(parse_graph(GRAPH), "src", {})
    first._flush()
    await asyncio.gather(*first.recording)
    world.commands.clear()
    await ExecutionRun(view, world.deps()).run()
    ran = [n["node_id"] for kind, p in world.commands if kind == "RecordNodes" for n in p["nodes"]]
    ran += [p["node_id"] for kind, p in world.commands if kind == "StartNode"]
    assert ran == ["kw", "note"]
    assert view.status == "completed"


PURE = {
    "nodes": [
        {"id": "src", "type": "input", "params": {"name": "text"}},
        {"id": "kw", "type": "keywords", "params": {"top_k": 2}},
        {"id": "count", "type": "word_count"},
    ],
    "edges": [{"from": "src.value", "to": "kw.text"}, {"from": "src.value", "to": "count.text"}],
}


async def test_side_effect_free_nodes_are_recorded_with_the_completion_by_one_command() -> None:
    world = World()
    view = await world.given_submitted(PURE, {"text": TEXT})
    await ExecutionRun(view, world.deps()).run()
    [(kind, payload)] = world.commands
    assert kind == "RecordNodes" and payload["finish"] is True
    assert [n["node_id"] for n in payload["nodes"]] == ["src", "kw", "count"]
    assert view.status == "completed" and set(view.completed) == {"src", "kw", "count"}


async def test_without_a_linger_each_node_is_recorded_by_itself_and_the_last_level_completes() -> None:
    world = World()
    view = await world.given_submitted(PURE, {"text": TEXT})
    await ExecutionRun(view, world.deps(record_linger=0)).run()
    recorded = [([n["node_id"] for n in p["nodes"]], p["finish"]) for _, p in world.commands]
    assert kinds(world) == ["RecordNodes"] * 3  # no CompleteExecution
    assert recorded[0] == (["src"], False)
    assert sorted(recorded[1:]) == [(["count"], True), (["kw"], True)]
    assert view.status == "completed"


async def test_results_recorded_by_an_earlier_owner_in_another_grouping_are_skipped() -> None:
    world = World()
    view = await world.given_submitted(PURE, {"text": TEXT})
    earlier = ExecutionRun(view, world.deps(record_linger=0))
    await earlier._run_node(parse_graph(PURE), "src", {})
    await asyncio.gather(*earlier.recording)
    view.completed.clear()  # this owner read the log before that recording
    world.commands.clear()
    await ExecutionRun(view, world.deps()).run()
    [(kind, payload)] = world.commands
    assert kind == "RecordNodes"
    assert [n["node_id"] for n in payload["nodes"]] == ["src", "kw", "count"]
    assert view.status == "completed"


async def test_large_outputs_go_to_the_blob_store_and_are_read_back_on_resume() -> None:
    world = World()
    view = await world.given_submitted(GRAPH, {"text": TEXT})
    await ExecutionRun(view, world.deps(inline_output_bytes=10)).run()
    completed = [p for kind, p in world.commands if kind == "CompleteNode"]
    assert all(p["output"] is None and p["output_location"].startswith("blob://") for p in completed)
    assert view.status == "completed"


async def test_a_node_over_its_time_limit_fails_the_execution() -> None:
    async def slow(submitter: Actor, object_id: str) -> str:
        await asyncio.sleep(10)
        return ""

    world = World()
    graph = {"nodes": [{"id": "doc", "type": "object", "params": {"object_id": OBJECT_ID}}], "edges": []}
    view = await world.given_submitted(graph, {})
    await ExecutionRun(view, world.deps(load_object=slow, node_timeout=0.2)).run()
    assert kinds(world) == ["FailNode"]
    assert "timed out" in world.commands[-1][1]["error"] and view.status == "failed"


async def test_a_cancelled_execution_stops_before_its_next_node() -> None:
    world = World()
    view = await world.given_submitted(GRAPH, {"text": TEXT})
    await world.submit(envelope("CancelExecution", view.execution_id, {}, "cancel"))
    world.commands.clear()
    await ExecutionRun(view, world.deps()).run()
    assert world.commands == []


async def test_a_graph_the_catalog_no_longer_accepts_fails_the_execution() -> None:
    world = World()
    view = await world.given_submitted(GRAPH, {"text": TEXT})
    view.graph = {"nodes": [{"id": "x", "type": "retired-node"}], "edges": []}
    await ExecutionRun(view, world.deps()).run()
    assert kinds(world) == ["FailExecution"] and view.status == "failed"


async def test_an_execution_may_shorten_the_node_time_limit() -> None:
    async def slow(submitter: Actor, object_id: str) -> str:
        await asyncio.sleep(10)
        return ""

    world = World()
    graph = {"nodes": [{"id": "doc", "type": "object", "params": {"object_id": OBJECT_ID}}], "edges": []}
    view = await world.given_submitted(graph, {})
    view.options = {"node_timeout_seconds": 0.2}
    await ExecutionRun(view, world.deps(load_object=slow, node_timeout=60)).run()
    assert world.commands[-1][1]["error"] == "timed out after 0.2s"


@pytest.mark.parametrize(
    ("recorded", "current", "acting"),
    [
        ("user", ("user", False), "user"),
        ("admin", ("admin", False), "admin"),
        ("admin", ("viewer", False), "viewer"),  # demoted since submitting: the demotion applies
        ("user", ("admin", False), "user"),  # promoted since: the graph keeps what it was submitted with
        (None, ("admin", False), "user"),  # submitted before roles were recorded: as before, a user
        ("user", ("user", True), DISABLED),
        ("user", None, DISABLED),  # the submitter no longer exists
        ("user", ("auditor", False), DISABLED),  # a role this code does not know grants nothing
    ],
)
def test_a_graph_acts_with_the_weaker_of_its_recorded_and_current_role(
    recorded: str | None, current: tuple[str, bool] | None, acting: str
) -> None:
    assert acting_role(recorded, current) == acting


@pytest.mark.parametrize(("role", "disabled"), [("viewer", False), ("user", True)])
async def test_a_sink_of_a_demoted_or_disabled_submitter_is_refused_and_fails_the_execution(
    role: str, disabled: bool
) -> None:
    world = World()
    view = await world.given_submitted(GRAPH, {"text": TEXT})
    world.users["alice"] = (role, disabled)  # demoted or disabled after submitting
    await ExecutionRun(view, world.deps()).run()
    assert kinds(world) == ["RecordNodes", "StartNode", "AnnotateObject", "FailNode"]
    annotate = world.commands[-2]
    assert annotate[0] == "AnnotateObject"
    error = world.commands[-1][1]["error"]
    expected = "viewer" if role == "viewer" else DISABLED
    assert f"the {expected} role may not write" in error
    assert view.status == "failed" and world.aggregates[OBJECT_ID].annotation_count == 0


async def test_an_object_node_reads_as_the_acting_submitter() -> None:
    seen: list[Actor] = []

    async def load_object(actor: Actor, object_id: str) -> str:
        seen.append(actor)
        return TEXT

    world = World()
    world.users["alice"] = ("admin", False)
    graph = {"nodes": [{"id": "doc", "type": "object", "params": {"object_id": OBJECT_ID}}], "edges": []}
    view = await world.given_submitted(graph, {})
    view.submitter_role = "admin"
    await ExecutionRun(view, world.deps(load_object=load_object)).run()
    assert seen == [Actor("alice", "admin")] and view.status == "completed"


async def test_a_disabled_submitters_graph_reads_nothing() -> None:
    async def load_object(actor: Actor, object_id: str) -> str:
        raise AssertionError("read as a disabled user")

    world = World()
    graph = {"nodes": [{"id": "doc", "type": "object", "params": {"object_id": OBJECT_ID}}], "edges": []}
    view = await world.given_submitted(graph, {})
    world.users["alice"] = ("user", True)
    await ExecutionRun(view, world.deps(load_object=load_object)).run()
    assert kinds(world) == ["FailNode"] and "disabled" in world.commands[-1][1]["error"]

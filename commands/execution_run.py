"""One execution's run: nodes in topological order, each step reported as a command.

Everything the run needs from outside comes in ``RunDeps`` (submit a command, blobs, object
loading, search), so the process manager is testable and knows nothing of Kafka or PostgreSQL.
A run resumes: nodes whose completion is already recorded are skipped and their outputs reused;
every command id is derived from (execution id, node id, step), so a repeated step is a duplicate.

Rights are checked when the effect happens: before each read of objects and each sink's command the
run looks up the submitter's current role and disabled flag, and acts with the weaker of that role
and the one recorded at submission (``acting_role``). A sink's command carries that role, so the
command handler refuses it when the submitter was demoted to viewer or disabled meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, NoReturn
from uuid import UUID, uuid5

import orjson

from commands.data import inline_content
from commands.envelope import Actor, CommandEnvelope, Outcome
from commands.isolation import run_isolated
from domain.graph import Graph, InvalidGraph, parse_graph
from domain.nodes import CATALOG
from domain.nodes.catalog import Effect, NodeContext, NodeError, NodeResult, run_node

log = logging.getLogger("pipeline.executor")
EXECUTOR = Actor(user_id="system:executor", role="system")
# Weakest first. "disabled" is no role: it is what a disabled or deleted submitter acts as, and no
# handler lets it write; reads refuse it too.
ROLE_RANK = {"viewer": 0, "user": 1, "admin": 2}
DISABLED = "disabled"
# Executions submitted before the role was recorded ran as "user"; they keep that ceiling.
LEGACY_ROLE = "user"
PREVIEW_CHARS = 300
# A RecordNodes command carries at most this much (node outputs are inline up to
# execution.inline_output_bytes each): the command, and its events, stay far below a Kafka record's limit.
MAX_RECORDS_BYTES = 256 * 1024


@dataclass
class RunDeps:
    submit: Callable[[CommandEnvelope], Awaitable[Outcome]]
    put_blob: Callable[[bytes], str]  # -> location
    get_blob: Callable[[str], bytes]  # location -> bytes
    # Both read as the acting submitter: (actor, object id) and (actor, query, limit), so a graph sees
    # only what its submitter may see now.
    load_object: Callable[[Actor, str], Coroutine[Any, Any, str]]
    search: Callable[[Actor, str, int], Coroutine[Any, Any, list[dict[str, Any]]]]
    # user id -> (current role, disabled), or None for an unknown user: the users read model.
    lookup_user: Callable[[str], Coroutine[Any, Any, tuple[str, bool] | None]]
    node_timeout: float = 30.0
    inline_output_bytes: int = 16 * 1024
    # Side-effect-free nodes finished within this long of each other are recorded by one command
    # (RecordNodes); the last level's go at once, with the execution's completion.
    record_linger: float = 0.05
    event_content_bytes: int = 0  # a stored object's content up to this travels in its event (inline_content)
    # Nodes run and their compute time by node type, for the metrics (the executor's heartbeat writes them).
    counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def count(self, name: str, labels: tuple[tuple[str, str], ...], value: float = 1.0) -> None:
        key = (name, labels)
        self.counters[key] = self.counters.get(key, 0.0) + value


@dataclass
class ExecutionView:
    """What the executor knows of one execution, folded from its events."""

    execution_id: str
    graph: dict[str, Any]
    inputs: dict[str, Any]
    submitter: str
    partition: int
    first_offset: int
    options: dict[str, Any] = field(default_factory=dict)
    submitter_role: str | None = None  # as recorded at submission (None: submitted before it was)
    status: str = "submitted"
    completed: dict[str, tuple[dict[str, Any] | None, str | None]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.status in {"completed", "failed", "cancelled"}


def acting_role(recorded: str | None, current: tuple[str, bool] | None) -> str:
    """The role a graph acts with now: the weaker of its submitter's recorded and current roles.

    A demotion applies to a running graph; a promotion does not (the graph was submitted with less).
    A disabled or unknown submitter acts as ``DISABLED``.
    """
    if current is None or current[1] or current[0] not in ROLE_RANK:
        return DISABLED
    ceiling = recorded if recorded in ROLE_RANK else LEGACY_ROLE
    return min(ceiling, current[0], key=ROLE_RANK.__getitem__)


class StopRun(Exception):
    """The execution cannot go on (cancelled, or finished elsewhere)."""


def summarize_outputs(outputs: dict[str, Any]) -> dict[str, Any]:
    """A bounded summary of a node's outputs: kind, length and a short JSON preview per port."""
    summary = {}
    for port, value in outputs.items():
        encoded = orjson.dumps(value, default=str).decode()
        summary[port] = {
            "kind": type(value).__name__,
            "length": len(value) if isinstance(value, str | list | dict) else None,
            "preview": encoded[:PREVIEW_CHARS] + ("…" if len(encoded) > PREVIEW_CHARS else ""),
        }
    return summary


class ExecutionRun:
    def __init__(self, view: ExecutionView, deps: RunDeps) -> None:
        self.view = view
        self.deps = deps
        self.id = UUID(view.execution_id)
        # The execution may ask for a shorter node time limit than the executor's, never a longer one.
        self.timeout = min(float(view.options.get("node_timeout_seconds", deps.node_timeout)), deps.node_timeout)
        # Results of side-effect-free nodes on their way to the processor: the next level starts at
        # once instead of after a Kafka round trip (they reach the execution's partition in order).
        self.recording: list[asyncio.Task[Outcome]] = []
        # Results not sent yet (with their encoded size): sent together after deps.record_linger, or
        # before anything else about the execution is (a sink's claim, a failure, the completion).
        self.unsent: list[tuple[dict[str, Any], int]] = []
        self.linger: asyncio.TimerHandle | None = None
        # Running the last level: every recording may complete the execution (once its last node is).
        self.finishing = False

    def command(
        self, kind: str, payload: dict[str, Any], step: str, aggregate_id: str | None = None, actor: Actor | None = None
    ) -> CommandEnvelope:
        """A command about this execution (as the executor), or a sink's effect on behalf of ``actor``."""
        return CommandEnvelope(
            command_id=str(uuid5(self.id, step)),
            type=kind,
            aggregate_id=aggregate_id or self.view.execution_id,
            payload=payload,
            actor=actor or EXECUTOR,
            correlation_id=self.view.execution_id,
        )

    async def acting_as(self) -> Actor:
        """The submitter with the role the graph acts with at this moment (looked up now, not cached)."""
        current = await self.deps.lookup_user(self.view.submitter)
        return Actor(self.view.submitter, acting_role(self.view.submitter_role, current))

    async def reader(self) -> Actor:
        """``acting_as`` for a read: a disabled submitter's graph reads nothing."""
        actor = await self.acting_as()
        if actor.role == DISABLED:
            raise NodeError(f"the submitter {actor.user_id} is disabled or no longer exists; the graph may not read")
        return actor

    async def send(self, envelope: CommandEnvelope) -> Outcome:
        return await self.deps.submit(envelope)

    async def run(self, slot: asyncio.Semaphore | None = None) -> None:
        """Run the nodes not recorded yet, holding ``slot`` (the executor's bound on executions it
        runs at once) while they run but not while their recordings are on their way."""
        try:
            async with slot or contextlib.nullcontext():
                ran = await self._run_levels()
            outcomes = await asyncio.gather(*self.recording) if ran else []
        except asyncio.CancelledError:  # e.g. the partition moved: stop waiting (ids make a resend a duplicate)
            for task in self.recording:
                task.cancel()
            raise
        finally:
            if self.linger is not None:
                self.linger.cancel()
            # A run that stops early still lets its recordings finish: they are the record of the work.
            await asyncio.gather(*self.recording, return_exceptions=True)
        if not ran or self._refused():
            return
        if not self.view.finished and not any("Completed" in o.event_types for o in outcomes):
            await self.send(self.command("CompleteExecution", {}, "complete"))

    async def _run_levels(self) -> bool:
        """Every level's nodes (independent branches of one level side by side); False: the run stopped."""
        try:
            graph = parse_graph(self.view.graph)
        except InvalidGraph as exc:  # valid when submitted; the catalog has changed since
            await self.send(self.command("FailExecution", {"error": f"{exc.message}: {exc.details}"}, "invalid"))
            return False
        outputs: dict[str, dict[str, Any]] = {}
        levels = graph.levels()
        for index, level in enumerate(levels):
            self.finishing = index == len(levels) - 1
            if self.view.finished or self._refused():
                return False
            for node_id in level:
                if node_id in self.view.completed:
                    outputs[node_id] = self._recorded_output(node_id)
            todo = [node_id for node_id in level if node_id not in outputs]
            results = await asyncio.gather(*(self._run_node(graph, n, outputs) for n in todo), return_exceptions=True)
            stopped = False
            for node_id, result in zip(todo, results, strict=True):
                if isinstance(result, StopRun):
                    log.info("execution %s stops: %s", self.view.execution_id, result)
                    stopped = True
                elif isinstance(result, BaseException):
                    raise result
                else:
                    outputs[node_id] = result
            if stopped:
                self._flush()
                return False
        self._flush()
        return True

    def _refused(self) -> bool:
        """Did the processor refuse a recording (e.g. the execution was cancelled meanwhile)?"""
        for task in self.recording:
            if not task.done() or task.cancelled() or task.exception() is not None:
                continue
            outcome = task.result()
            rejection = outcome.rejection
            # Recorded already (by an earlier owner): the same output, since such nodes are deterministic.
            if not outcome.accepted and rejection is not None and "node_id" not in rejection.details:
                log.info("execution %s stops: %s", self.view.execution_id, rejection.message)
                return True
        return False

    def _recorded_output(self, node_id: str) -> dict[str, Any]:
        output, location = self.view.completed[node_id]
        if output is not None:
            return output
        assert location is not None
        loaded: dict[str, Any] = orjson.loads(self.deps.get_blob(location))
        return loaded

    async def _run_node(self, graph: Graph, node_id: str, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        node = graph.nodes[node_id]
        if CATALOG[node.type].category != "sink":
            return await self._run_pure_node(graph, node_id, outputs)
        await self._flush_first()  # what its inputs recorded goes first
        started = await self.send(self.command("StartNode", {"node_id": node_id}, f"{node_id}:start"))
        if not started.accepted:
            assert started.rejection is not None
            if started.rejection.code == "conflict" and "node_id" in started.rejection.details:
                # Recorded by an earlier owner after this one read the log: use its output.
                await self._wait(lambda: node_id in self.view.completed)
                return self._recorded_output(node_id)
            raise StopRun(started.rejection.message)
        inputs = _node_inputs(graph, node_id, outputs)
        result = await self._computed(node_id, node.type, inputs, node.params)
        produced = dict(result.outputs)
        # Effects are commands, outside the node's time limit. A refusal fails the node; a command
        # timeout propagates, and the run is resumed later (effect command ids make a retry a duplicate).
        try:
            for index, effect in enumerate(result.effects):
                produced.update(await self._apply(effect, node_id, index))
        except NodeError as exc:
            await self._fail(node_id, exc.message)
        # The result, like a pure node's, is not waited for: its effects are issued, and a refusal
        # (the execution was cancelled meanwhile) stops the run at the next level (``_refused``).
        payload = {**await self._result_payload(node_id, produced), "finish": self.finishing}
        complete = self.command("CompleteNode", payload, f"{node_id}:complete")
        self.recording.append(asyncio.create_task(self.send(complete)))
        return produced

    async def _run_pure_node(self, graph: Graph, node_id: str, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Run a node without effects; its start and result are recorded later, not awaited (``_record``)."""
        node = graph.nodes[node_id]
        inputs = _node_inputs(graph, node_id, outputs)
        result = await self._computed(node_id, node.type, inputs, node.params)
        produced = dict(result.outputs)
        self._record(await self._result_payload(node_id, produced))
        return produced

    def _record(self, payload: dict[str, Any]) -> None:
        """Keep a node's result to send with the others that finish within ``deps.record_linger``."""
        size = len(orjson.dumps(payload))
        if self.unsent and sum(s for _, s in self.unsent) + size > MAX_RECORDS_BYTES:
            self._flush()
        self.unsent.append((payload, size))
        if self.deps.record_linger <= 0:
            self._flush()
        elif self.linger is None:
            self.linger = asyncio.get_running_loop().call_later(self.deps.record_linger, self._flush)

    def _flush(self) -> None:
        """Send the results kept so far as one RecordNodes command (not awaited: see ``recording``);
        in the last level it completes the execution once every node is recorded.

        Its id derives from the nodes it records: sent again, the same results are a duplicate; an
        executor that resumes and groups them otherwise finds the ones recorded already skipped.
        """
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None
        if not self.unsent:
            return
        nodes = [payload for payload, _ in self.unsent]
        self.unsent = []
        finish = self.finishing
        step = "record:" + ",".join(node["node_id"] for node in nodes) + (":finish" if finish else "")
        command = self.command("RecordNodes", {"nodes": nodes, "finish": finish}, step)
        self.recording.append(asyncio.create_task(self.send(command)))

    async def _flush_first(self) -> None:
        """``_flush``, and let the recording reach the producer before the command that follows it
        (a task runs from the loop's next turn; the bus hands a command over before its first wait)."""
        self._flush()
        await asyncio.sleep(0)

    async def _computed(
        self, node_id: str, node_type: str, inputs: dict[str, Any], params: dict[str, Any]
    ) -> NodeResult:
        """The node's result within its time limit, counted for the metrics; a failure fails the node."""
        computing = time.monotonic()
        outcome = "failed"
        try:
            result = await asyncio.wait_for(self._compute(node_type, inputs, params), self.timeout)
            outcome = "completed"
            return result
        except TimeoutError:
            outcome = "timed_out"
            await self._fail(node_id, f"timed out after {self.timeout:g}s")
        except NodeError as exc:
            await self._fail(node_id, exc.message)
        except Exception as exc:  # a node bug fails its execution, not the executor
            log.exception("node %s of %s crashed", node_id, self.view.execution_id)
            await self._fail(node_id, f"{type(exc).__name__}: {exc}")
        finally:
            self.deps.count("pipeline_executor_nodes", (("outcome", outcome), ("type", node_type)))
            self.deps.count("pipeline_executor_node_seconds", (("type", node_type),), time.monotonic() - computing)

    async def _result_payload(self, node_id: str, produced: dict[str, Any]) -> dict[str, Any]:
        encoded = orjson.dumps(produced)
        inline = len(encoded) <= self.deps.inline_output_bytes
        return {
            "node_id": node_id,
            "summary": summarize_outputs(produced),
            "output": produced if inline else None,
            "output_location": None if inline else await asyncio.to_thread(self.deps.put_blob, encoded),
        }

    async def _compute(self, node_type: str, inputs: dict[str, Any], params: dict[str, Any]) -> NodeResult:
        loop = asyncio.get_running_loop()
        timeout = self.timeout

        async def read_object(object_id: str) -> str:
            return await self.deps.load_object(await self.reader(), object_id)

        async def find(query: str, limit: int) -> list[dict[str, Any]]:
            return await self.deps.search(await self.reader(), query, limit)

        def load_object(object_id: str) -> str:
            return asyncio.run_coroutine_threadsafe(read_object(object_id), loop).result(timeout)

        def search(query: str, limit: int) -> list[dict[str, Any]]:
            return asyncio.run_coroutine_threadsafe(find(query, limit), loop).result(timeout)

        if CATALOG[node_type].isolated:
            return await asyncio.to_thread(run_isolated, node_type, inputs, params, self.view.inputs, timeout)
        context = NodeContext(self.view.inputs, load_object, search)
        return await asyncio.to_thread(run_node, CATALOG[node_type], inputs, params, context)

    async def _apply(self, effect: Effect, node_id: str, index: int) -> dict[str, Any]:
        """Issue a sink's effect as a command on behalf of the submitter; ids derive from the node.

        The command carries the submitter's role as of now (``acting_as``); the handler decides.
        """
        actor = await self.acting_as()
        if effect.kind == "annotate":
            object_id = _uuid(effect.payload["object_id"])
            payload = {k: effect.payload[k] for k in ("annotation_type", "content", "confidence")}
            payload["annotation_id"] = str(uuid5(self.id, f"{node_id}:annotation:{index}"))
            payload["source"] = f"graph:{self.view.execution_id}"
            step = f"{node_id}:annotate:{index}"
            outcome = await self.send(self.command("AnnotateObject", payload, step, object_id, actor))
            if not outcome.accepted and outcome.rejection is not None:
                raise NodeError(f"annotating {object_id}: {outcome.rejection.message}")
            return {}
        text = effect.payload["content"]
        stored = inline_content(text, self.deps.event_content_bytes)
        if stored is None:
            content = text.encode()
            location = await asyncio.to_thread(self.deps.put_blob, content)
            stored = {"content_hash": location.rsplit("/", 1)[-1], "size": len(content), "location": location}
        object_id = str(uuid5(self.id, f"{node_id}:store:{index}"))
        metadata = {**effect.payload["metadata"], "execution_id": self.view.execution_id, "node_id": node_id}
        payload = {"content_type": effect.payload["content_type"], **stored, "metadata": metadata}
        outcome = await self.send(self.command("IngestData", payload, f"{node_id}:store:{index}", object_id, actor))
        if not outcome.accepted and outcome.rejection is not None and outcome.rejection.code != "conflict":
            raise NodeError(f"storing the result: {outcome.rejection.message}")
        return {"object_id": object_id}

    async def _fail(self, node_id: str, error: str) -> NoReturn:
        await self._flush_first()  # the nodes that completed before this one failed
        await self.send(self.command("FailNode", {"node_id": node_id, "error": error}, f"{node_id}:fail"))
        raise StopRun(f"node {node_id} failed: {error}")

    async def _wait(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self.view.changed.clear()
                await self.view.changed.wait()


def _uuid(value: str) -> str:
    try:
        return str(UUID(value))
    except (ValueError, TypeError, AttributeError) as exc:
        raise NodeError(f"{value!r} is not an object id") from exc


def _node_inputs(graph: Graph, node_id: str, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The node's input ports, each from the output of the edge wired to it (when that output exists)."""
    return {
        edge.input: outputs[edge.source][edge.output]
        for edge in graph.incoming(node_id)
        if edge.output in outputs.get(edge.source, {})
    }

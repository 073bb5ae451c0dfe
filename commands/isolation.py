"""Running a node in a child process that is killed when its time is up.

Python threads cannot be interrupted, so a node that might run away (a regular expression, despite
the static guards) runs in a process of its own; the forkserver start method keeps the child free
of the parent's threads and event loop. Only the node's name, inputs, params and the execution's
inputs cross the boundary; such nodes need no I/O callables.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import TimeoutError as PoolTimeout
from typing import Any

from domain.nodes import CATALOG
from domain.nodes.catalog import NodeContext, NodeError, NodeResult, run_node

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["domain.nodes"])


def _run(node_type: str, inputs: dict[str, Any], params: dict[str, Any], execution_inputs: dict[str, Any]) -> Any:
    try:
        return run_node(CATALOG[node_type], inputs, params, NodeContext(execution_inputs))
    except NodeError as exc:
        return exc.message  # NodeError does not survive pickling with its fields; its message does


def run_isolated(
    node_type: str, inputs: dict[str, Any], params: dict[str, Any], execution_inputs: dict[str, Any], timeout: float
) -> NodeResult:
    """Run the node in a child process; NodeError if it fails or outlives ``timeout`` (the child is killed)."""
    with _CONTEXT.Pool(1) as pool:  # leaving the block terminates the child, finished or not
        pending = pool.apply_async(_run, (node_type, inputs, params, execution_inputs))
        try:
            result = pending.get(timeout)
        except PoolTimeout as exc:
            raise NodeError(f"{node_type} ran longer than {timeout:g}s and was stopped") from exc
    if isinstance(result, str):
        raise NodeError(result)
    assert isinstance(result, NodeResult)
    return result

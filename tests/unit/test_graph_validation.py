"""Each kind of bad graph is reported, with the node, the port and a message; valid graphs get an order."""

from __future__ import annotations

from typing import Any

import pytest

from domain.graph import MAX_NODES, InvalidGraph, check_graph, parse_graph


def problems(graph: Any) -> list[tuple[str | None, str | None, str]]:
    _, found = check_graph(graph)
    return [(p["node_id"], p["port"], p["message"]) for p in found]


def node(node_id: str, node_type: str, **params: Any) -> dict[str, Any]:
    return {"id": node_id, "type": node_type, "params": params}


def edge(source: str, target: str) -> dict[str, str]:
    return {"from": source, "to": target}


def test_valid_graph_runs_in_topological_order() -> None:
    graph = parse_graph(
        {
            "nodes": [node("kw", "keywords"), node("c", "chunk"), node("src", "input", name="t")],
            "edges": [edge("c.chunks", "kw.text"), edge("src.value", "c.text")],
        }
    )
    assert graph.order == ["src", "c", "kw"]
    assert graph.estimated_seconds() > 0


def test_unknown_node_type() -> None:
    assert problems({"nodes": [node("a", "teleport")]}) == [("a", None, "unknown node type 'teleport'")]


def test_duplicate_node_ids() -> None:
    found = problems({"nodes": [node("a", "input", name="x"), node("a", "input", name="y")]})
    assert found == [("a", None, "duplicate node id")]


def test_unknown_ports_and_nodes_in_edges() -> None:
    graph = {
        "nodes": [node("a", "input", name="x"), node("b", "word_count")],
        "edges": [edge("a.nope", "b.text"), edge("a.value", "b.nope"), edge("ghost.value", "b.text")],
    }
    found = problems(graph)
    assert ("a", "nope", "input has no output port 'nope'") in found
    assert ("b", "nope", "word_count has no input port 'nope'") in found
    assert ("ghost", "value", "edge #2 names an unknown or invalid node") in found


def test_unwired_required_input() -> None:
    assert problems({"nodes": [node("b", "word_count")]}) == [("b", "text", "required input is not wired")]


def test_type_mismatch() -> None:
    graph = {
        "nodes": [node("a", "input", name="x"), node("w", "word_count"), node("f", "filter")],
        "edges": [edge("a.value", "w.text"), edge("w.count", "f.items")],
    }
    assert problems(graph) == [("f", "items", "type mismatch: w.count is number, needs list")]


def test_input_wired_twice() -> None:
    graph = {
        "nodes": [node("a", "input", name="x"), node("b", "input", name="y"), node("w", "word_count")],
        "edges": [edge("a.value", "w.text"), edge("b.value", "w.text")],
    }
    assert problems(graph) == [("w", "text", "input port is wired more than once")]


def test_cycle_names_its_nodes() -> None:
    graph = {
        "nodes": [node("a", "normalize"), node("b", "normalize")],
        "edges": [edge("a.text", "b.text"), edge("b.text", "a.text")],
    }
    assert sorted(problems(graph)) == [
        ("a", None, "node is part of a cycle (or depends on one)"),
        ("b", None, "node is part of a cycle (or depends on one)"),
    ]


def test_params_failing_their_schema_are_all_listed() -> None:
    graph = {
        "nodes": [
            node("c", "chunk", size="big", colour="red"),
            node("s", "summarize", sentences=0),
            node("src", "input"),
        ],
        "edges": [edge("src.value", "c.text"), edge("src.value", "s.text")],
    }
    found = problems(graph)
    assert ("c", None, "param size must be of type integer") in found
    assert ("c", None, "param colour is not a known parameter") in found
    assert ("s", None, "param sentences must be >= 1") in found
    assert ("src", None, "param name is required") in found


def test_node_rules_beyond_the_schema() -> None:
    graph = {
        "nodes": [
            node("src", "input", name="t"),
            node("c", "chunk", size=100, overlap=100),
            node("r", "regex_extract", pattern="(a+)+$"),
            node("j", "json_path", path="$..evil"),
            node("o", "object"),
        ],
        "edges": [edge("src.value", "c.text"), edge("src.value", "r.text"), edge("src.value", "j.data")],
    }
    messages = {(n, m.split(" (")[0].split(":")[0]) for n, _, m in problems(graph)}
    assert ("c", "overlap must be smaller than size") in messages
    assert ("r", "pattern repeats a group that itself repeats or alternates") in messages
    assert ("j", "unsupported path syntax at '..evil'") in messages
    assert ("o", "needs the object_id param or a wired object_id input") in messages


@pytest.mark.parametrize(
    "raw",
    [None, [], {"nodes": "x"}, {"nodes": [], "edges": []}, {"nodes": [{"id": "bad id!", "type": "input"}]}],
)
def test_malformed_graphs_are_problems_not_crashes(raw: Any) -> None:
    assert problems(raw)


def test_size_limits() -> None:
    graph = {"nodes": [node(f"n{i}", "input", name="x") for i in range(MAX_NODES + 1)]}
    assert (None, None, f"at most {MAX_NODES} nodes") in problems(graph)
    assert problems({"nodes": [node("a", "template", template="x" * 300_000)]})[0][2].startswith("the graph is larger")


def test_parse_graph_raises_with_every_problem() -> None:
    with pytest.raises(InvalidGraph) as caught:
        parse_graph({"nodes": [node("a", "teleport"), node("b", "word_count")]})
    assert caught.value.code == "invalid_graph"
    assert len(caught.value.details["problems"]) == 2  # type: ignore[arg-type]


def test_levels_group_independent_branches() -> None:
    graph = parse_graph(
        {
            "nodes": [
                node("src", "input", name="t"),
                node("a", "word_count"),
                node("b", "summarize"),
                node("m", "merge"),
            ],
            "edges": [
                edge("src.value", "a.text"),
                edge("src.value", "b.text"),
                edge("a.count", "m.a"),
                edge("b.summary", "m.b"),
            ],
        }
    )
    assert graph.levels() == [["src"], ["a", "b"], ["m"]]

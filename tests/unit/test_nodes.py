"""Every node on real text and data: deterministic outputs, limits, and refusals as NodeError."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from domain.nodes import CATALOG, available_nodes
from domain.nodes.catalog import MAX_INPUT_BYTES, NodeContext, NodeError, NodeResult, run_node

ARTICLE = (
    "The river Thames flows through London. London is the capital of England and a global city. "
    "The Thames was once heavily polluted, but the river has recovered and seals now live in it. "
    "Bridges across the Thames connect the north and south of London. Tower Bridge opened in 1894."
)
GERMAN = "Der Hund läuft schnell über die Wiese und ist sehr glücklich, weil die Sonne scheint."
FRENCH = "Le chat dort sur le canapé et il ne veut pas se lever pour manger avec nous."


def run(node: str, inputs: dict[str, Any], context: NodeContext | None = None, **params: Any) -> NodeResult:
    return run_node(CATALOG[node], inputs, params, context or NodeContext())


def out(node: str, inputs: dict[str, Any], **params: Any) -> dict[str, Any]:
    return run(node, inputs, **params).outputs


def test_catalog_lists_every_required_node_with_ports_and_schema() -> None:
    required = {"input", "object", "search", "normalize", "regex_extract", "chunk", "keywords", "language_detect"}
    required |= {"summarize", "word_count", "template", "json_path", "filter", "map_field", "merge", "annotate"}
    assert required | {"store"} <= set(CATALOG)
    listing = available_nodes()
    assert all({"type", "category", "description", "inputs", "outputs", "params"} <= set(n) for n in listing)
    assert {n["type"] for n in available_nodes("sink")} == {"annotate", "store"}


def test_input_reads_the_execution_inputs() -> None:
    assert run("input", {}, NodeContext({"doc": ARTICLE}), name="doc").outputs == {"value": ARTICLE}
    with pytest.raises(NodeError, match="no input named 'other'"):
        run("input", {}, NodeContext({"doc": ARTICLE}), name="other")


def test_object_and_search_use_the_callables_the_executor_supplies() -> None:
    context = NodeContext(load_object=lambda i: f"content of {i}", search=lambda q, n: [{"object_id": q}] * n)
    object_id = "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert run("object", {}, context, object_id=object_id).outputs["text"] == f"content of {object_id}"
    assert run("search", {"query": "x"}, context, limit=2).outputs["ids"] == ["x", "x"]


def test_normalize() -> None:
    assert out("normalize", {"text": "  \uff26\uff55\uff4c\uff4c\u00a0width,   TEXT!\n"}) == {
        "text": "full width, text!"
    }
    assert out("normalize", {"text": "Hello, World!"}, strip_punctuation=True) == {"text": "hello world"}


def test_regex_extract_groups_and_guards() -> None:
    assert out("regex_extract", {"text": ARTICLE}, pattern=r"\b(1[0-9]{3})\b", group=1)["matches"] == ["1894"]
    assert out("regex_extract", {"text": ARTICLE}, pattern="thames", ignore_case=True)["count"] == 3
    started = time.perf_counter()
    for evil in ("(a+)+$", "(a|aa)*b", "(x*)*y", r"(\w+\s?)+$"):
        with pytest.raises(NodeError, match="catastrophic"):
            run("regex_extract", {"text": "a" * 5000 + "!"}, pattern=evil)
    assert time.perf_counter() - started < 1
    with pytest.raises(NodeError, match="at most 200 characters"):
        run("regex_extract", {"text": "x"}, pattern="x" * 201)


def test_chunk_splits_at_words_with_overlap() -> None:
    chunks = out("chunk", {"text": ARTICLE}, size=80, overlap=20)["chunks"]
    assert all(len(c) <= 80 for c in chunks) and len(chunks) >= 4
    assert " ".join(chunks).count("Tower Bridge") >= 1
    for first, second in itertools.pairwise(chunks):
        assert second.split()[0] in first  # each chunk starts inside the previous one's tail
    assert out("chunk", {"text": "short"}, size=80, overlap=10)["chunks"] == ["short"]


def test_keywords_by_tf_idf() -> None:
    terms = [k["term"] for k in out("keywords", {"text": ARTICLE}, top_k=3)["keywords"]]
    assert set(terms[:2]) == {"thames", "london"}
    assert out("keywords", {"text": ["the and of", ""]})["keywords"] == []


def test_language_detect() -> None:
    assert out("language_detect", {"text": ARTICLE})["language"] == "en"
    assert out("language_detect", {"text": GERMAN})["language"] == "de"
    assert out("language_detect", {"text": FRENCH})["language"] == "fr"
    assert out("language_detect", {"text": "12345"}) == {"language": "unknown", "confidence": 0.0}


def test_summarize_keeps_the_best_sentences_in_order() -> None:
    summary = out("summarize", {"text": ARTICLE}, sentences=2)["summary"]
    assert summary.count(".") == 2 and "Thames" in summary
    assert ARTICLE.index(summary.split(". ")[0]) < ARTICLE.index(summary.split(". ")[1])


def test_word_count() -> None:
    assert out("word_count", {"text": "One two, two three! Four?"}) == {"count": 5, "unique": 4, "sentences": 2}


def test_template_substitutes_without_evaluating() -> None:
    result = out(
        "template", {"values": {"name": "Ada", "n": 3}}, template="$name has ${n} items, $missing {0.__class__}"
    )
    assert result == {"text": "Ada has 3 items, $missing {0.__class__}"}


def test_json_path_filter_map_field_merge() -> None:
    data = {"items": [{"name": "a", "score": 3}, {"name": "b", "score": 9}, {"name": "c"}]}
    assert out("json_path", {"data": data}, path="$.items[1].name") == {"value": "b"}
    assert out("json_path", {"data": data}, path="$.items[*].name") == {"value": ["a", "b", "c"]}
    assert out("json_path", {"data": data}, path="$.nope", default=0) == {"value": 0}
    kept = out("filter", {"items": data["items"]}, path="$.score", op="gt", value=5)
    assert kept == {"items": [{"name": "b", "score": 9}], "count": 1}
    assert out("filter", {"items": data["items"]}, path="$.score", op="exists")["count"] == 2
    assert out("map_field", {"items": data["items"]}, path="$.score") == {"values": [3, 9]}
    assert out("map_field", {"items": data["items"]}, path="$.name", **{"as": "n"})["values"][0] == {"n": "a"}
    assert out("merge", {"a": {"x": 1}, "b": {"y": 2}}) == {"value": {"x": 1, "y": 2}}
    assert out("merge", {"a": [1], "b": 2}, mode="concat") == {"value": [1, 2]}
    assert out("merge", {"a": "x", "b": "y"}, mode="text", separator="-") == {"value": "x-y"}


def test_sinks_return_effects_instead_of_writing() -> None:
    object_id = "0f8fad5b-d9cb-469f-a165-70867728950e"
    result = run("annotate", {"content": ["a", "b"], "object_id": object_id}, each=True, annotation_type="kw")
    assert [e.kind for e in result.effects] == ["annotate", "annotate"]
    assert result.effects[1].payload == {
        "object_id": object_id,
        "annotation_type": "kw",
        "content": "b",
        "confidence": 1.0,
    }
    stored = run("store", {"content": {"k": 1}}, metadata={"from": "test"})
    assert stored.effects[0].payload == {
        "content": '{"k":1}',
        "content_type": "application/json",
        "metadata": {"from": "test"},
    }


def test_inputs_over_the_limit_are_refused() -> None:
    with pytest.raises(NodeError, match="exceed"):
        run("word_count", {"text": "x" * (MAX_INPUT_BYTES + 1)})


def test_nodes_are_deterministic() -> None:
    for name in ("keywords", "summarize", "chunk", "language_detect"):
        assert out(name, {"text": ARTICLE}) == out(name, {"text": ARTICLE})

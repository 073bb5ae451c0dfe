"""Text nodes: normalize, chunk, keywords, language_detect, summarize, word_count, template."""

from __future__ import annotations

import string
import unicodedata
from typing import Any

from domain.nodes.catalog import NodeContext, NodeError, NodeType, Port, as_text, params_schema
from domain.nodes.language import detect_language, keywords, sentences, summarize, words


def _normalize(inputs: dict[str, Any], p: dict[str, Any], _: NodeContext) -> dict[str, Any]:
    text = unicodedata.normalize(p["unicode_form"], as_text(inputs["text"]))
    if p["lowercase"]:
        text = text.lower()
    if p["strip_punctuation"]:
        text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    if p["collapse_whitespace"]:
        text = " ".join(text.split())
    return {"text": text}


def chunk_text(text: str, size: int, overlap: int) -> list[str]:
    """Chunks of at most ``size`` characters, consecutive ones sharing ``overlap`` characters,
    cut at whitespace when there is some in the second half of a chunk."""
    chunks: list[str] = []
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind(" ", start + size // 2, end)
            end = cut if cut > start else end
        chunks.append(text[start:end].strip())
        if end >= len(text):
            break
        following = max(end - overlap, start + 1)
        space = text.find(" ", following, end) if overlap else -1
        start = space + 1 if space != -1 else following  # begin the overlap at a word
    return [c for c in chunks if c]


def _chunk(inputs: dict[str, Any], p: dict[str, Any], _: NodeContext) -> dict[str, Any]:
    chunks = chunk_text(as_text(inputs["text"]), p["size"], p["overlap"])
    return {"chunks": chunks, "count": len(chunks)}


def _check_chunk(params: dict[str, Any], _: set[str]) -> list[str]:
    size, overlap = params.get("size", 500), params.get("overlap", 50)
    if isinstance(size, int) and isinstance(overlap, int) and overlap >= size:
        return ["overlap must be smaller than size"]
    return []


def _word_count(inputs: dict[str, Any], _: dict[str, Any], __: NodeContext) -> dict[str, Any]:
    tokens = words(as_text(inputs["text"]))
    return {"count": len(tokens), "unique": len(set(tokens)), "sentences": len(sentences(as_text(inputs["text"])))}


def _template(inputs: dict[str, Any], p: dict[str, Any], _: NodeContext) -> dict[str, Any]:
    values = inputs.get("values", {})
    if not isinstance(values, dict):
        raise NodeError("input 'values' must be an object")
    # $name substitution only: no attribute access, no format specs, no code.
    mapping = {str(k): v if isinstance(v, str) else str(v) for k, v in values.items()}
    if "text" in inputs:
        mapping.setdefault("text", as_text(inputs["text"]))
    return {"text": string.Template(p["template"]).safe_substitute(mapping)}


def _keywords(inputs: dict[str, Any], p: dict[str, Any], _: NodeContext) -> dict[str, Any]:
    value = inputs["text"]
    documents = value if isinstance(value, list) else sentences(as_text(value))
    return {"keywords": keywords([as_text(d) for d in documents], p["top_k"], p["min_length"])}


def _language(inputs: dict[str, Any], _: dict[str, Any], __: NodeContext) -> dict[str, Any]:
    language, confidence = detect_language(as_text(inputs["text"]))
    return {"language": language, "confidence": confidence}


def _summarize(inputs: dict[str, Any], p: dict[str, Any], _: NodeContext) -> dict[str, Any]:
    return {"summary": summarize(as_text(inputs["text"]), p["sentences"])}


TEXT = Port("text", "text")
NODES = [
    NodeType(
        "normalize",
        "text",
        "Unicode-normalize text; optionally lowercase, strip punctuation and collapse whitespace.",
        (TEXT,),
        (Port("text", "text"),),
        params_schema(
            {
                "lowercase": {"type": "boolean", "default": True},
                "strip_punctuation": {"type": "boolean", "default": False},
                "collapse_whitespace": {"type": "boolean", "default": True},
                "unicode_form": {"type": "string", "enum": ["NFC", "NFKC", "NFD", "NFKD"], "default": "NFKC"},
            }
        ),
        _normalize,
    ),
    NodeType(
        "chunk",
        "text",
        "Split text into chunks of at most `size` characters overlapping by `overlap` characters.",
        (TEXT,),
        (Port("chunks", "list"), Port("count", "number")),
        params_schema(
            {
                "size": {"type": "integer", "minimum": 10, "maximum": 100_000, "default": 500},
                "overlap": {"type": "integer", "minimum": 0, "maximum": 50_000, "default": 50},
            }
        ),
        _chunk,
        check=_check_chunk,
    ),
    NodeType(
        "keywords",
        "text",
        "Top keywords by TF-IDF over the given chunks (or over the sentences of one text).",
        (Port("text", "any"),),
        (Port("keywords", "list"),),
        params_schema(
            {
                "top_k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                "min_length": {"type": "integer", "minimum": 1, "maximum": 20, "default": 3},
            }
        ),
        _keywords,
        cost_seconds=0.1,
    ),
    NodeType(
        "language_detect",
        "text",
        "The text's language (en, de, fr, es, it, nl, pt) from stop-word frequencies, with a confidence.",
        (TEXT,),
        (Port("language", "text"), Port("confidence", "number")),
        params_schema({}),
        _language,
    ),
    NodeType(
        "summarize",
        "text",
        "Extractive summary: the highest-scoring sentences by word frequency, in their original order.",
        (TEXT,),
        (Port("summary", "text"),),
        params_schema({"sentences": {"type": "integer", "minimum": 1, "maximum": 50, "default": 3}}),
        _summarize,
        cost_seconds=0.1,
    ),
    NodeType(
        "word_count",
        "text",
        "Number of words, distinct words and sentences.",
        (TEXT,),
        (Port("count", "number"), Port("unique", "number"), Port("sentences", "number")),
        params_schema({}),
        _word_count,
    ),
    NodeType(
        "template",
        "text",
        "Fill a $name template from an object of values (and $text from the optional text input).",
        (Port("values", "json", required=False), Port("text", "text", required=False)),
        (Port("text", "text"),),
        params_schema({"template": {"type": "string", "maxLength": 10_000}}, ("template",)),
        _template,
    ),
]

"""Text nodes: normalize, regex_extract, chunk, word_count, template, summarize."""

from __future__ import annotations

import re
import string
import unicodedata
from typing import Any

from domain.nodes.catalog import NodeContext, NodeError, NodeType, Port, as_text, params_schema
from domain.nodes.language import detect_language, keywords, sentences, summarize, words

MAX_PATTERN = 200
# A quantified group that itself contains a quantifier, e.g. (a+)+ or (a|aa)*: the classic shapes
# of catastrophic backtracking. Python's re cannot be interrupted, so such patterns are refused.
_NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)\s*[+*{]")
_ALTERNATION_REPEAT = re.compile(r"\((?:[^()\\]|\\.)*\|(?:[^()\\]|\\.)*\)\s*[+*{]")
MAX_REGEX_INPUT = 200_000  # characters a pattern may scan


def regex_problem(pattern: str) -> str | None:
    """Why a pattern is refused, or None. Length, syntax and nested-quantifier guards."""
    if len(pattern) > MAX_PATTERN:
        return f"pattern longer than {MAX_PATTERN} characters"
    if _NESTED_QUANTIFIER.search(pattern) or _ALTERNATION_REPEAT.search(pattern):
        return "pattern repeats a group that itself repeats or alternates (catastrophic backtracking)"
    if re.search(r"\\[1-9]", pattern) or "(?<" in pattern.replace("(?<=", "").replace("(?<!", ""):
        return "backreferences and named groups are not supported"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"invalid pattern: {exc}"
    return None


def _normalize(inputs: dict[str, Any], p: dict[str, Any], _: NodeContext) -> dict[str, Any]:
    text = unicodedata.normalize(p["unicode_form"], as_text(inputs["text"]))
    if p["lowercase"]:
        text = text.lower()
    if p["strip_punctuation"]:
        text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    if p["collapse_whitespace"]:
        text = " ".join(text.split())
    return {"text": text}


def _regex_extract(inputs: dict[str, Any], p: dict[str, Any], _: NodeContext) -> dict[str, Any]:
    problem = regex_problem(p["pattern"])
    if problem:
        raise NodeError(problem)
    text = as_text(inputs["text"])
    if len(text) > MAX_REGEX_INPUT:
        raise NodeError(f"regex_extract scans at most {MAX_REGEX_INPUT} characters")
    compiled = re.compile(p["pattern"], re.IGNORECASE if p["ignore_case"] else 0)
    if p["group"] > compiled.groups:
        raise NodeError(f"pattern has {compiled.groups} groups, group {p['group']} was asked for")
    matches: list[str] = []
    for match in compiled.finditer(text):
        matches.append(match.group(p["group"]) or "")
        if len(matches) >= p["max_matches"]:
            break
    return {"matches": matches, "count": len(matches)}


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
        "regex_extract",
        "text",
        "All matches of a regular expression (or of one group); guarded against catastrophic patterns.",
        (TEXT,),
        (Port("matches", "list"), Port("count", "number")),
        params_schema(
            {
                "pattern": {"type": "string", "minLength": 1, "maxLength": MAX_PATTERN},
                "group": {"type": "integer", "minimum": 0, "maximum": 20, "default": 0},
                "ignore_case": {"type": "boolean", "default": False},
                "max_matches": {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 1000},
            },
            ("pattern",),
        ),
        _regex_extract,
        isolated=True,
        check=lambda params, _: [m for m in [regex_problem(params.get("pattern", ""))] if m and params.get("pattern")],
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

"""The regex_extract node and its guards against runaway patterns.

Python's re cannot be interrupted, so patterns are checked before they run (length, syntax, the
classic catastrophic shapes) and the node is marked ``isolated``: the executor runs it in a child
process that it kills at the node's time limit, which also stops slow patterns no guard recognises.
"""

from __future__ import annotations

import re
from typing import Any

from domain.nodes.catalog import NodeContext, NodeError, NodeType, Port, as_text, params_schema

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


def _check(params: dict[str, Any], _: set[str]) -> list[str]:
    pattern = params.get("pattern")
    problem = regex_problem(pattern) if isinstance(pattern, str) and pattern else None
    return [problem] if problem else []


NODES = [
    NodeType(
        "regex_extract",
        "text",
        "All matches of a regular expression (or of one group); guarded against catastrophic patterns.",
        (Port("text", "text"),),
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
        check=_check,
    ),
]

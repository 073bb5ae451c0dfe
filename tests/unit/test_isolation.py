"""Nodes that may run away run in a child process that is killed at the time limit."""

from __future__ import annotations

import time

import pytest

from commands.isolation import run_isolated
from domain.nodes.catalog import NodeError
from domain.nodes.regex import regex_problem


def test_isolated_regex_returns_its_matches() -> None:
    result = run_isolated("regex_extract", {"text": "a1 b22 c333"}, {"pattern": r"\d+"}, {}, timeout=20)
    assert result.outputs == {"matches": ["1", "22", "333"], "count": 3}


def test_isolated_node_errors_come_back_as_node_errors() -> None:
    with pytest.raises(NodeError, match="groups"):
        run_isolated("regex_extract", {"text": "abc"}, {"pattern": "b", "group": 2}, {}, timeout=20)


def test_a_runaway_pattern_the_static_guard_misses_is_stopped_at_the_time_limit() -> None:
    slow = "a*a*a*a*a*a*a*a*b"  # polynomial backtracking: no nested quantifier for the guard to see
    assert regex_problem(slow) is None
    run_isolated("regex_extract", {"text": "warm-up"}, {"pattern": "w"}, {}, timeout=20)
    started = time.monotonic()
    with pytest.raises(NodeError, match="longer than"):
        run_isolated("regex_extract", {"text": "a" * 300}, {"pattern": slow}, {}, timeout=1)
    assert time.monotonic() - started < 10

"""How a rebuild shares out the partitions and how projectors turn rows into unnest parameters."""

from __future__ import annotations

import pytest

from infra.runtime.rebuild import partition_shares
from projections.projector import columns


def test_partitions_are_dealt_out_to_at_most_one_worker_each() -> None:
    assert partition_shares([0, 1, 2, 3, 4], 2) == [[0, 2, 4], [1, 3]]
    assert partition_shares([0, 1], 8) == [[0], [1]]  # never a worker without a partition
    assert partition_shares([0, 1, 2], 1) == [[0, 1, 2]]
    assert partition_shares([0, 1, 2], 0) == [[0, 1, 2]]
    assert partition_shares([], 2) == [[]]  # an empty topic: one worker, caught up at once


def test_columns_transposes_rows_and_refuses_a_row_of_another_width() -> None:
    assert columns([("a", 1, None), ("b", 2, 3.5)], 3) == [["a", "b"], [1, 2], [None, 3.5]]
    assert columns(iter([]), 2) == [[], []]
    with pytest.raises(ValueError):
        columns([("a", 1)], 3)
    with pytest.raises(ValueError):
        columns([("a", 1), ("b",)], 2)

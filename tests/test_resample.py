"""The paired block bootstrap the corridor's intervals come from (bench/resample.py)."""
from __future__ import annotations

import numpy as np
import pytest

from structvpr_edge.bench.resample import block_indices, interval, paired_difference, resampled_recall
from structvpr_edge.errors import ConfigError


def test_blocks_are_runs_of_consecutive_queries_that_wrap_around():
    indices = block_indices(10, 4, draws=50, seed=1)
    assert indices.shape == (50, 10)
    steps = np.diff(indices, axis=1)[:, :3]  # inside the first block of each draw
    assert np.all((steps == 1) | (steps == -9))
    assert np.all(indices.min(axis=1) >= 0) and np.all(indices.max(axis=1) <= 9)


def test_correlated_hits_get_a_wider_interval_from_blocks_than_from_single_queries():
    """Hits in runs of 5 (as when neighbouring queries share positives): single queries resampled
    as if independent understate the spread."""
    hits = np.repeat(np.random.default_rng(0).integers(0, 2, 40), 5)[None, :]
    single = interval(resampled_recall(hits, block_indices(200, 1, 4000)))
    blocks = interval(resampled_recall(hits, block_indices(200, 5, 4000)))
    assert blocks[1] - blocks[0] > 1.5 * (single[1] - single[0])


def test_a_row_against_itself_differs_by_exactly_nothing_and_a_better_row_by_its_lead():
    hits = np.random.default_rng(2).integers(0, 2, (3, 111))
    assert paired_difference(hits, hits, block=5) == (0.0, 0.0, 0.0)
    better = hits.copy()
    better[:, ::2] = 1
    mean, low, high = paired_difference(better, hits, block=5)
    assert 0 < low <= mean <= high and mean == pytest.approx(100 * (better.mean() - hits.mean()))


def test_bad_blocks_and_unpaired_rows_are_config_errors():
    with pytest.raises(ConfigError, match="block"):
        block_indices(10, 0, 5)
    with pytest.raises(ConfigError, match="same queries"):
        paired_difference(np.ones((2, 10)), np.ones((2, 11)), block=2)

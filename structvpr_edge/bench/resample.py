"""Paired block bootstrap over the queries of a route: how finely a val set of a few hundred
queries resolves a difference between two rows.

Neighbouring queries of a route share positives (a query's positives span a few frames), so their
hits are correlated and resampling single queries makes intervals too narrow. Resampling circular
blocks of consecutive queries in route order keeps that correlation (Künsch, 1989). Each draw uses
the same query indices for every row (paired) and averages a row's seeds inside the draw.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError


def block_indices(n: int, block: int, draws: int, seed: int = 0) -> np.ndarray:
    """(draws, n) query indices: circular blocks of ``block`` consecutive positions, as many as cover ``n``."""
    if not 1 <= block <= n:
        raise ConfigError(f"a block holds 1 to {n} queries, got {block}")
    starts = np.random.default_rng(seed).integers(0, n, (draws, -(-n // block)))
    return ((starts[..., None] + np.arange(block)) % n).reshape(draws, -1)[:, :n]


def resampled_recall(hits: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Recall@1 in % of each draw: ``hits`` (seeds, queries) of 0/1 in route order, seeds averaged."""
    return np.atleast_2d(hits)[:, indices].mean(axis=(0, 2)) * 100


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval holding ``level`` of the draws."""
    tail = 50 * (1 - level)
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(a: np.ndarray, b: np.ndarray, block: int, draws: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """Mean Recall@1 of row ``a`` minus row ``b`` (hits as for resampled_recall, the same queries in the
    same order) and its 95 % paired block-bootstrap interval."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"paired rows need the same queries, got {a.shape[1]} and {b.shape[1]}")
    indices = block_indices(a.shape[1], block, draws, seed)
    return (float(a.mean() - b.mean()) * 100, *interval(resampled_recall(a, indices) - resampled_recall(b, indices)))

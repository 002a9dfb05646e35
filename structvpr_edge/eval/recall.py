"""Recall@N, computed the standard way.

A query is correct at N if any of its first N retrieved database images lies within the
positive radius. Queries without any positive stay in the denominator (they can never be
correct) and are counted separately so a reader sees them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DatasetError

RECALL_NS: tuple[int, ...] = (1, 5, 10, 20)


def retrieve(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k with FAISS on L2-normalised copies of the descriptors."""
    import faiss  # noqa: PLC0415

    if database.ndim != 2 or queries.ndim != 2 or database.shape[1] != queries.shape[1]:
        raise DatasetError(f"descriptor shapes do not match: database {database.shape}, queries {queries.shape}")
    db = np.ascontiguousarray(database, dtype=np.float32).copy()
    q = np.ascontiguousarray(queries, dtype=np.float32).copy()
    faiss.normalize_L2(db)
    faiss.normalize_L2(q)
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    scores, ids = index.search(q, min(k, len(db)))
    return scores, ids


def recall_at_n(predictions: np.ndarray, positives: Sequence[np.ndarray], ns: Sequence[int] = RECALL_NS) -> dict[str, float]:
    """Fraction of queries with a positive among their first N predictions, for each N."""
    if len(predictions) != len(positives):
        raise DatasetError(f"{len(predictions)} prediction rows for {len(positives)} queries")
    if len(predictions) == 0:
        raise DatasetError("no queries to evaluate")
    first_hit = np.full(len(predictions), np.inf)
    for q, (pred, pos) in enumerate(zip(predictions, positives)):
        hits = np.flatnonzero(np.isin(pred, pos))
        if len(hits):
            first_hit[q] = hits[0]
    return {str(n): float(np.mean(first_hit < n)) for n in ns}


def per_group_recall(
    predictions: np.ndarray, positives: Sequence[np.ndarray], groups: Sequence[str], ns: Sequence[int] = RECALL_NS
) -> dict[str, dict[str, float]]:
    """Recall@N for each distinct value of ``groups`` (e.g. the query condition)."""
    groups = np.asarray(groups)
    return {
        str(g): recall_at_n(predictions[groups == g], [positives[i] for i in np.flatnonzero(groups == g)], ns)
        for g in sorted(set(groups.tolist()))
    }

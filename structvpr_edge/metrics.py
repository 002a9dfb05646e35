"""Recall@N and what "correct" means, in one place: training's validation, evaluation, calibration,
map thresholds, drives and the demo all score here. Torch-free (faiss imported when used).

A retrieval is correct when it lies within the positive radius of the query's true position
(``data.dataset.DEFAULT_POSITIVE_RADIUS_M``, distance <= radius): by index where a query's
positives are listed (``VPRDataset.positives``, the database images within the radius), by
pose where a retrieved position is compared with the true one (``within``: a map's places, a
drive's poses). A query is correct at N if any of its first N retrievals is. Queries without any
positive stay in the denominator (they can never be correct) and are counted apart by the caller.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .errors import DatasetError

RECALL_NS: tuple[int, ...] = (1, 5, 10, 20)


def retrieve(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k with FAISS on L2-normalised copies of the descriptors."""
    import faiss  # noqa: PLC0415

    if database.ndim != 2 or queries.ndim != 2 or database.shape[1] != queries.shape[1]:
        raise DatasetError(f"descriptor shapes do not match: database {database.shape}, queries {queries.shape}")
    db, q = (np.ascontiguousarray(x, dtype=np.float32).copy() for x in (database, queries))
    faiss.normalize_L2(db)
    faiss.normalize_L2(q)
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    return index.search(q, min(k, len(db)))


def within(found, truth, radius: float) -> np.ndarray:
    """Correct by pose: whether each (east, north) of ``found`` lies within ``radius`` metres of
    its row of ``truth`` (or of one true position for all of them, as for a query's ranked matches)."""
    found, truth = np.asarray(found, np.float64).reshape(-1, 2), np.asarray(truth, np.float64).reshape(-1, 2)
    return np.linalg.norm(found - truth, axis=1) <= radius


def recall_of_hits(hits: Iterable[Sequence[bool]], ns: Sequence[int] = RECALL_NS) -> dict[str, float]:
    """Recall@N from each query's ranked retrievals marked correct or not."""
    first_hit = np.array([np.flatnonzero(h)[0] if np.any(h) else np.inf for h in hits], dtype=np.float64)
    if len(first_hit) == 0:
        raise DatasetError("no queries to evaluate")
    return {str(n): float(np.mean(first_hit < n)) for n in ns}


def recall_at_n(predictions: np.ndarray, positives: Sequence[np.ndarray], ns: Sequence[int] = RECALL_NS) -> dict[str, float]:
    """Fraction of queries with a positive among their first N predictions, for each N."""
    if len(predictions) != len(positives):
        raise DatasetError(f"{len(predictions)} prediction rows for {len(positives)} queries")
    return recall_of_hits((np.isin(pred, pos) for pred, pos in zip(predictions, positives)), ns)


def per_group_recall(
    predictions: np.ndarray, positives: Sequence[np.ndarray], groups: Sequence[str], ns: Sequence[int] = RECALL_NS
) -> dict[str, dict[str, float]]:
    """Recall@N for each distinct value of ``groups`` (e.g. the query condition)."""
    groups = np.asarray(groups)
    return {
        str(g): recall_at_n(predictions[groups == g], [positives[i] for i in np.flatnonzero(groups == g)], ns)
        for g in sorted(set(groups.tolist()))
    }

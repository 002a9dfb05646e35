"""Exact top-k search over a flat map that reads a quarter of the bytes per frame.

A single query scans the whole map: at 10k x 512 floats that is 20 MB, read from memory after
the model's inference has pushed the map out of cache, which costs about half the inference
time on a small CPU. This keeps an 8-bit copy (FAISS ``SQ8`` with one range for all
dimensions), scans that instead, and re-scores the best ``k + extra`` entries from the float32
index.

Why the answer is still exact: every entry's 8-bit form differs from it by at most ``error``
(the largest reconstruction-error norm in the map), so its scanned score is off by at most
``|q| * error``. An entry the scan left out scored at most the last
candidate's scan score, so its true score is at most that plus ``|q| * error``; when that is
below the k-th re-scored score, no left-out entry can be in the top k. When it is not (many
near-identical entries), the query is searched again in float32. Entries added later with
values outside the range fitted on the first ones are clipped; those "outliers" are left out of
``error`` and re-scored on every query instead.
"""
from __future__ import annotations

import numpy as np

EXTRA_CANDIDATES = 32
# Below this many entries the float32 scan is as fast: measured per frame inside EdgeVPR on the
# 2-core CPU (benchmarks/scan_crossover.py), 2,048 entries 0.10 (8-bit) vs 0.09 ms (float32),
# 4,096 0.17 vs 0.21, 8,192 0.25 vs 0.44.
MIN_ENTRIES = 4096
MIRROR_BLOCK = 65536  # entries mirrored at a time when a map opens


class QuantizedScan:
    """The 8-bit copy of a float32 ``faiss.IndexFlatIP``; ``search`` answers like the flat index,
    through the float32 scan while the map holds fewer than ``min_entries`` entries."""

    def __init__(self, faiss, flat, min_entries: int = MIN_ENTRIES) -> None:
        self.faiss, self.flat, self.min_entries = faiss, flat, min_entries
        self.index = faiss.IndexScalarQuantizer(flat.d, faiss.ScalarQuantizer.QT_8bit_uniform, faiss.METRIC_INNER_PRODUCT)
        self.error = 0.0  # largest reconstruction-error norm of an entry that is not an outlier
        self.outliers = np.zeros(0, np.int64)  # rows clipped to the 8-bit range: re-scored on every query
        self.fallbacks = 0  # queries answered by the float32 scan after all
        for start in range(0, flat.ntotal, MIRROR_BLOCK):  # in blocks: a float32 copy of a large map would double its memory
            self.add(flat.reconstruct_n(start, min(MIRROR_BLOCK, flat.ntotal - start)))

    def add(self, descriptors: np.ndarray) -> None:
        """Mirror entries just added to the flat index; the first ones fix the 8-bit range."""
        if not self.index.is_trained:
            self.index.train(descriptors)
        low, span = self.faiss.vector_to_array(self.index.sq.trained)
        slack = 1e-3 * span  # a value a rounding past the edge loses nothing; its error counts anyway
        clipped = (descriptors.min(axis=1) < low - slack) | (descriptors.max(axis=1) > low + span + slack)
        codes = self.index.sa_encode(descriptors)
        error = np.linalg.norm(descriptors - self.index.sa_decode(codes), axis=1)
        self.error = max(self.error, float(error[~clipped].max(initial=0.0)))
        self.outliers = np.concatenate([self.outliers, self.index.ntotal + np.flatnonzero(clipped)])
        self.index.add_sa_codes(codes)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.index.ntotal < max(self.min_entries, k + EXTRA_CANDIDATES + 1):
            return self.flat.search(queries, k)
        approx, candidates = self.index.search(queries, k + EXTRA_CANDIDATES)
        scores = np.empty((len(queries), k), np.float32)
        rows = np.empty((len(queries), k), np.int64)
        for i, query in enumerate(queries):
            rescored = np.union1d(candidates[i], self.outliers)
            exact = self.flat.reconstruct_batch(rescored) @ query
            best = np.argsort(-exact, kind="stable")[:k]  # of equal scores the lowest rows, as FAISS keeps them
            best = best[np.lexsort((-rescored[best], -exact[best]))]  # ordered by falling row, as FAISS returns them
            # + 1e-5: float32 rounding of the two scores themselves
            if approx[i, -1] + np.linalg.norm(query) * self.error + 1e-5 <= exact[best[-1]]:
                scores[i], rows[i] = exact[best], rescored[best]
            else:
                self.fallbacks += 1
                scores[i : i + 1], rows[i : i + 1] = self.flat.search(query[None], k)
        return scores, rows

"""The float32 rows of a large (IVF-PQ) map, kept on disk and re-scored exactly.

Why: at millions of places the float32 descriptors (2 KiB each at 512-d) do not belong in a
vehicle's memory, yet 4-bit PQ codes alone rank near-identical places in the wrong order. The
codes pick ``RERANK`` candidates per query; their float32 rows are read from the file with
``pread`` and scored exactly. A map opens without reading the file, and only the page cache
(not the process) holds what was read: a memory map would map whole large folios (2 MiB) per
row touched on current kernels, measured as 2 MiB of resident memory per candidate.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

RERANK = 64  # candidates re-scored per query (benchmarks/city_scale.py measures agreement with exact search)
CHUNK = 1 << 16  # rows per read when a generation is written or checked


class VectorStore:
    """Rows of a saved generation (a read-only file) plus rows added since (a temp file)."""

    def __init__(self, dim: int, path: Path | None = None) -> None:
        self.dim, self.row_bytes = dim, 4 * dim
        self.saved = open(path, "rb") if path is not None else tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the map
        self.count = os.fstat(self.saved.fileno()).st_size // self.row_bytes
        self.spill = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the map
        self.added = 0

    def __len__(self) -> int:
        return self.count + self.added

    def add(self, rows: np.ndarray) -> None:
        self.spill.seek(0, os.SEEK_END)
        self.spill.write(np.ascontiguousarray(rows, np.float32).tobytes())
        self.spill.flush()  # read back with pread, below Python's buffer
        self.added += len(rows)

    def _read(self, row: int, count: int = 1) -> bytes:
        handle, row = (self.saved, row) if row < self.count else (self.spill, row - self.count)
        return os.pread(handle.fileno(), count * self.row_bytes, row * self.row_bytes)

    def block(self, start: int, count: int) -> np.ndarray:
        """Rows start..start+count of the saved generation."""
        return np.frombuffer(self._read(start, count), np.float32).reshape(-1, self.dim)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The float32 rows ``ids``."""
        return np.frombuffer(b"".join(self._read(int(i)) for i in ids), np.float32).reshape(len(ids), self.dim)

    def rerank(self, index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) like a flat index: ``index`` proposes RERANK candidates, their rows decide."""
        _, candidates = index.search(queries, max(k, RERANK))
        scores = np.full((len(queries), k), -np.inf, np.float32)
        rows = np.full((len(queries), k), -1, np.int64)
        for i, query in enumerate(queries):
            found = np.sort(candidates[i][candidates[i] >= 0])
            exact = self.rows(found) @ query
            best = np.argsort(-exact, kind="stable")[:k]
            scores[i, : len(best)], rows[i, : len(best)] = exact[best], found[best]
        return scores, rows

    def write(self, handle) -> str:
        """Copy every row to ``handle`` (an open file); returns the sha256 of what was written."""
        digest = hashlib.sha256()
        for source in (self.saved, self.spill):
            source.seek(0)
            while block := source.read(CHUNK * self.row_bytes):
                digest.update(block)
                handle.write(block)
        return digest.hexdigest()

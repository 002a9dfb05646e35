"""A place-recognition map: descriptors of geo-tagged reference images in a FAISS index.

A map is a directory:

    index.faiss     the FAISS index (inner product on L2-normalised descriptors)
    places.sqlite   id, pose (east, north, heading), timestamp and source path of every entry
    manifest.json   count, descriptor layout hash, model sha256, index type, checksums, threshold

Every file is written to a temporary name and renamed, the manifest last, so a crash mid-save
leaves the previous map readable. A map refuses descriptors of another model or layout.
On an exact (flat) map, a frame's search scans an 8-bit copy and re-scores the candidates in
float32, with a bound that keeps the answer exact (quantized_scan.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MapError
from .quantized_scan import QuantizedScan

FORMAT = "structvpr-edge/map/1"
EXACT_LIMIT = 200_000  # above this many entries "auto" picks an approximate index
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
FEW_QUERIES = 64  # below this many queries per search: one thread, and the int8 scan on flat maps


@dataclass(frozen=True)
class Place:
    """Metadata of one map entry."""

    id: str
    east: float
    north: float
    heading: float = float("nan")
    timestamp: str = ""
    source: str = ""


@dataclass
class Threshold:
    """Confidence rule: top-1 similarity >= score and margin to the best distant entry >= margin."""

    score: float
    margin: float
    precision: float  # measured on validation queries when the threshold was picked
    recall: float


@dataclass
class MapManifest:
    format: str
    count: int
    dim: int
    layout_hash: str
    model_sha256: str
    index_type: str
    index_string: str
    created: str
    checksums: dict[str, str] = field(default_factory=dict)
    threshold: Threshold | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def index_string(index_type: str, count: int, dim: int) -> str:
    """FAISS factory string for the requested index type and map size."""
    if index_type not in INDEX_TYPES:
        raise MapError(f"index type must be one of {INDEX_TYPES}, got {index_type!r}")
    if index_type == "auto":
        index_type = "flat" if count <= EXACT_LIMIT else "ivf"
    if index_type == "flat":
        return "Flat"
    if index_type == "hnsw":
        return "HNSW32,SQfp16"
    nlist = int(min(1024, max(64, np.sqrt(max(count, 1)))))
    return f"IVF{nlist},SQ8"


class PlaceMap:
    """Descriptors + metadata; search returns the best map entries for query descriptors."""

    def __init__(self, dim: int, layout_hash: str, model_sha256: str, index_type: str = "auto", expected_size: int = 0) -> None:
        import faiss  # noqa: PLC0415

        self.faiss = faiss
        self.search_threads = 1
        self.index_type = index_type
        self.factory = index_string(index_type, expected_size, dim)
        self.index = faiss.index_factory(dim, self.factory, faiss.METRIC_INNER_PRODUCT)
        self.scan = self._exact_scan()
        self.manifest = MapManifest(FORMAT, 0, dim, layout_hash, model_sha256, index_type, self.factory, time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.places: list[Place] = []
        self.poses = np.zeros((0, 3))  # east, north, heading per entry, for fast per-frame lookups

    def _exact_scan(self) -> QuantizedScan | None:
        """The 8-bit scan that speeds up single-frame search on an exact (flat) map."""
        return QuantizedScan(self.faiss, self.index) if self.factory == "Flat" else None

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def __len__(self) -> int:
        return self.index.ntotal

    def check_compatible(self, layout_hash: str, model_sha256: str | None = None) -> None:
        """Refuse queries from another layout (and, when given, another model)."""
        if layout_hash != self.manifest.layout_hash:
            raise MapError(
                f"map was built with descriptor layout {self.manifest.layout_hash}, the model has {layout_hash}: "
                "rebuild the map with this model (structvpr-edge build-map)"
            )
        if model_sha256 and self.manifest.model_sha256 and model_sha256 != self.manifest.model_sha256:
            raise MapError(
                f"map was built with model {self.manifest.model_sha256[:12]}, this model is {model_sha256[:12]}: "
                "descriptors of different weights are not comparable; rebuild the map (structvpr-edge build-map)"
            )

    def add(self, descriptors: np.ndarray, places: list[Place]) -> None:
        """Append entries; the first add to an untrained approximate index trains it."""
        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        if descriptors.ndim != 2 or descriptors.shape[1] != self.dim:
            raise MapError(f"descriptors must be (N, {self.dim}), got {descriptors.shape}")
        if len(places) != len(descriptors):
            raise MapError(f"{len(descriptors)} descriptors but {len(places)} places")
        norms = np.linalg.norm(descriptors, axis=1)
        if not np.all(np.isfinite(norms)) or np.any(np.abs(norms - 1) > 1e-2):
            raise MapError("map descriptors must be finite and L2-normalised")
        if not self.index.is_trained:
            ivf = self.faiss.try_extract_index_ivf(self.index)
            if ivf is not None:  # k-means on 64 points per list: seconds, not minutes, for a 1M map
                ivf.cp.max_points_per_centroid = 64
            self.index.train(descriptors)
            self.set_search_effort()
        self.index.add(descriptors)
        if self.scan is not None:
            self.scan.add(descriptors)
        self.places.extend(places)
        new = np.array([[p.east, p.north, p.heading] for p in places], dtype=np.float64).reshape(-1, 3)
        self.poses = np.concatenate([self.poses, new])
        self.manifest.count = len(self.places)

    def set_search_effort(self, nprobe: int | None = None, ef_search: int = 64) -> None:
        """Speed/accuracy knob of approximate indexes (no effect on an exact index).

        Default: an eighth of the inverted lists; on a 1M map that is 128 of 1,000 lists, which
        kept the top-1 equal to exact search on 99.8 % of queries at 4.2 ms (docs/RESULTS.md).
        """
        ivf = self.faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            ivf.nprobe = nprobe or max(16, ivf.nlist // 8)
        if hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = ef_search

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the k best entries per query, best first; rows are -1 where fewer exist."""
        if len(self) == 0:
            raise MapError("the map is empty")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise MapError(f"queries must be (B, {self.dim}), got {queries.shape}")
        # One query per frame: OpenMP fan-out costs more than it saves and fights the inference threads.
        few = len(queries) < FEW_QUERIES
        self.faiss.omp_set_num_threads(self.search_threads if few else max(1, os.cpu_count() or 1))
        if few and self.scan is not None:
            return self.scan.search(queries, min(k, len(self)))
        return self.index.search(queries, min(k, len(self)))

    def to_gpu(self, float16: bool = True) -> bool:
        """Move the index to the GPU when faiss has GPU support; returns whether it moved."""
        if not hasattr(self.faiss, "StandardGpuResources") or self.faiss.get_num_gpus() == 0:
            return False
        options = self.faiss.GpuClonerOptions()
        options.useFloat16 = float16
        self._gpu_resources = self.faiss.StandardGpuResources()
        self.index = self.faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.index, options)
        self.scan = None
        return True

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        index = self.index
        if hasattr(self.faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
            index = self.faiss.index_gpu_to_cpu(index)
        tmp_index = directory / "index.faiss.tmp"
        self.faiss.write_index(index, str(tmp_index))
        tmp_db = directory / "places.sqlite.tmp"
        tmp_db.unlink(missing_ok=True)
        with sqlite3.connect(tmp_db) as db:
            db.execute("CREATE TABLE places (row INTEGER PRIMARY KEY, id TEXT, east REAL, north REAL, heading REAL, timestamp TEXT, source TEXT)")
            db.executemany(
                "INSERT INTO places VALUES (?, ?, ?, ?, ?, ?, ?)",
                ((i, p.id, p.east, p.north, None if np.isnan(p.heading) else p.heading, p.timestamp, p.source) for i, p in enumerate(self.places)),
            )
        db.close()
        os.replace(tmp_index, directory / "index.faiss")
        os.replace(tmp_db, directory / "places.sqlite")
        self.manifest.checksums = {name: _sha256(directory / name) for name in ("index.faiss", "places.sqlite")}
        tmp_manifest = directory / "manifest.json.tmp"
        tmp_manifest.write_text(json.dumps(asdict(self.manifest), indent=2) + "\n")
        os.replace(tmp_manifest, directory / "manifest.json")
        return directory

    @classmethod
    def load(cls, directory: str | Path, verify: bool = True) -> "PlaceMap":
        import faiss  # noqa: PLC0415

        directory = Path(directory)
        manifest_path = directory / "manifest.json"
        if not manifest_path.exists():
            raise MapError(f"{directory} is not a map: no manifest.json (build one with structvpr-edge build-map)")
        try:
            data = json.loads(manifest_path.read_text())
            raw_threshold = data.pop("threshold", None)
            threshold = Threshold(**raw_threshold) if raw_threshold else None
            manifest = MapManifest(**data, threshold=threshold)
        except (ValueError, TypeError) as exc:
            raise MapError(f"{manifest_path} is malformed: {exc}") from exc
        if manifest.format != FORMAT:
            raise MapError(f"{directory}: unsupported map format {manifest.format!r} (expected {FORMAT})")
        for name, expected in manifest.checksums.items():
            if not (directory / name).exists():
                raise MapError(f"{directory}: {name} is missing")
            if verify and _sha256(directory / name) != expected:
                raise MapError(f"{directory}: {name} does not match its checksum; the map is corrupt, rebuild it")
        self = cls.__new__(cls)
        self.faiss = faiss
        self.search_threads = 1
        self.index = faiss.read_index(str(directory / "index.faiss"))
        self.manifest, self.index_type, self.factory = manifest, manifest.index_type, manifest.index_string
        self.scan = self._exact_scan()
        with sqlite3.connect(directory / "places.sqlite") as db:
            rows = db.execute("SELECT id, east, north, heading, timestamp, source FROM places ORDER BY row").fetchall()
        db.close()
        self.places = [Place(r[0], r[1], r[2], float("nan") if r[3] is None else r[3], r[4], r[5]) for r in rows]
        self.poses = np.array([[p.east, p.north, p.heading] for p in self.places], dtype=np.float64).reshape(-1, 3)
        if len(self.places) != self.index.ntotal or manifest.count != len(self.places):
            raise MapError(f"{directory}: index has {self.index.ntotal} entries, metadata {len(self.places)}, manifest {manifest.count}")
        self.set_search_effort()
        return self

"""A place-recognition map: descriptors of geo-tagged reference images in a FAISS index.

A map is a directory of immutable generations and one pointer file:

    CURRENT             the name of the live generation, e.g. ``gen-00000007``
    gen-00000007/       index.faiss, places.sqlite, manifest.json (count, descriptor layout hash,
                        sha256 of the model file, index type, checksums, threshold)
    .lock               taken (flock) by writers only

Why: a vehicle's map is updated in the field, where power cuts and a second writer happen. A
save writes a whole new generation in a hidden folder, fsyncs it, renames it into place and
then replaces CURRENT (temp file + fsync + os.replace + directory fsync): a reader sees the old
generation or the new one, never a mix. Writers hold an inter-process lock; a map loaded from a
folder and saved back re-reads the newest generation under the lock and re-applies its own
additions, so two appenders never lose each other's entries. Leftovers of an interrupted write
are removed by the next writer; loading never creates or deletes a file.

A map refuses descriptors of another layout or of another model file (its bytes are hashed).
On an exact (flat) map, a frame's search scans an 8-bit copy and re-scores the candidates in
float32, with a bound that keeps the answer exact (quantized_scan.py). A large map ("ivfpq",
chosen by "auto" beyond EXACT_LIMIT) holds 4-bit PQ codes (fast scan) and its float32 rows in
vectors.f32, memory-mapped and re-scored per query (vectors.py); it opens without reading them.
"""
from __future__ import annotations

import fcntl
import json
import math
import numbers
import os
import re
import sqlite3
import stat
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.request import pathname2url

import numpy as np

from ..errors import MapError
from ..files import open_regular, sha256_of
from ..modelinfo import sha256_file
from .quantized_scan import QuantizedScan
from .vectors import VectorStore

FORMAT = "structvpr-edge/map/2"
EXACT_LIMIT = 200_000  # above this many entries "auto" picks ivfpq (IVF-PQ, exact re-ranking)
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
FEW_QUERIES = 64  # below this many queries per search: one FAISS thread, and the int8 scan on flat maps
FILES = ("index.faiss", "places.sqlite")  # the checksummed files of a generation
GENERATION = re.compile(r"gen-\d{8,}")  # at least 8 digits: gen-99999999 is followed by gen-100000000
SHA256 = re.compile(r"[0-9a-f]{64}")
LEFTOVERS = re.compile(r"\.gen-tmp-.*|CURRENT\.tmp-.*|gen-\d{8,}")  # removed by a writer unless CURRENT names it
VECTORS = "vectors.f32"  # the float32 rows of an ivfpq map, re-scored per query
GENERATION_FILES = (*FILES, VECTORS, "manifest.json", "places.sqlite-journal")  # every name a writer creates in a generation
LEGACY = ("index.faiss", "places.sqlite", "manifest.json")  # a map of the format before generations
MAX_DIM = 1 << 16
MAX_ENTRIES = 1 << 32
SELECT_PLACES = "SELECT id, east, north, heading, timestamp, source FROM places"
MAX_SMALL_FILE = 1 << 20  # CURRENT, manifest.json
NORM_TOLERANCE = 1e-2  # |norm - 1| of a stored descriptor (5x more for the 8/16-bit codes of approximate indexes)
LOCK_TIMEOUT_S = 60.0
POINTS_PER_LIST = 39  # FAISS wants this many training points per inverted list


@dataclass(frozen=True)
class Place:
    """Metadata of one map entry.

    id: the place's id (the image's pano_id, file stem or drive timestamp)
    east, north: position in metres, in the map's frame (manifest.frame_id; UTM for the VPR layout)
    heading: compass heading in degrees (0 = north, 90 = east), NaN when unknown
    timestamp: when the image was taken, as given (nanoseconds for a drive), "" when unknown
    source: the image file (relative to the dataset) or the drive it came from
    """

    id: str
    east: float
    north: float
    heading: float = float("nan")
    timestamp: str = ""
    source: str = ""


class PlaceTable:
    """The places of a large (ivfpq) map, read from its places.sqlite a row at a time: millions of
    Place objects would outweigh the whole index in memory."""

    def __init__(self, uri: str, count: int) -> None:
        self.db, self.count = sqlite3.connect(uri, uri=True, check_same_thread=False), count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, row: int) -> Place:
        found = self.db.execute(f"{SELECT_PLACES} WHERE row = ?", (int(row),)).fetchone()
        if found is None:
            raise IndexError(row)
        return _place(found)

    def __iter__(self):
        return map(_place, self.db.execute(f"{SELECT_PLACES} ORDER BY row"))


def _place(row: tuple) -> Place:
    return Place(row[0], row[1], row[2], float("nan") if row[3] is None else row[3], row[4], row[5])


def _check_field(owner: str, name: str, value: object, kind: type | tuple[type, ...], valid=lambda v: True, what: str = "") -> None:
    """One field of the manifest's schema: its type (a bool is no number) and its range."""
    if isinstance(value, bool) or not isinstance(value, kind) or not valid(value):
        raise MapError(f"{owner}.{name} must be {what or getattr(kind, '__name__', kind)}, got {value!r:.60}")


def _checked_place(row: int, place: object) -> Place:
    """A place checked field by field before the map changes, with Python floats: sqlite stores a
    numpy float32 as bytes that no load reads back, and a wrong type would fail only at save."""
    if not isinstance(place, Place):
        raise MapError(f"places[{row}] must be a Place, got {type(place).__name__}")
    for name in ("id", "timestamp", "source"):
        _check_field(f"places[{row}]", name, getattr(place, name), str)
    for name in ("east", "north"):
        _check_field(f"places[{row}]", name, getattr(place, name), numbers.Real, math.isfinite, "a finite number")
    _check_field(f"places[{row}]", "heading", place.heading, numbers.Real, lambda v: not math.isinf(v), "a finite number of degrees, or NaN when unknown")
    return replace(place, east=float(place.east), north=float(place.north), heading=float(place.heading))


def _float_rows(values: object, what: str, dim: int, n: str) -> np.ndarray:
    """``values`` as a contiguous (n, dim) float32 array, n >= 1; a MapError for anything else."""
    try:
        rows = np.ascontiguousarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise MapError(f"{what} must be a float array: {exc}") from exc
    if rows.ndim != 2 or rows.shape[1] != dim or len(rows) == 0:
        raise MapError(f"{what} must be ({n}, {dim}) with {n} >= 1, got {rows.shape}")
    return rows


@dataclass
class Threshold:
    """Confidence rule: a frame is confident when both its similarity and its margin reach these.
    Picked by structvpr-edge calibrate-threshold and stored in the map's manifest.

    score: the least cosine similarity of the chosen entry
    margin: the least lead of that similarity over the best entry at another place (> 25 m away)
    precision: fraction of the accepted queries whose match was correct, measured when it was picked
    recall: fraction of all queries accepted and correct
    queries: how many queries precision and recall were measured on (0: not recorded)
    correct: how many of those queries had a correct top-1 match, accepted or not
    """

    score: float
    margin: float
    precision: float
    recall: float
    queries: int = 0
    correct: int = 0

    def __post_init__(self) -> None:
        for name in ("score", "margin", "precision", "recall"):
            _check_field("threshold", name, getattr(self, name), (int, float), math.isfinite, "a finite number")
        for name in ("precision", "recall"):
            _check_field("threshold", name, getattr(self, name), (int, float), lambda v: 0 <= v <= 1, "a number in [0, 1]")
        _check_field("threshold", "queries", self.queries, int, lambda v: v >= 0, "an integer >= 0")
        _check_field("threshold", "correct", self.correct, int, lambda v: 0 <= v <= self.queries, "an integer in 0..queries")


@dataclass
class MapManifest:
    """The schema of manifest.json: every field typed and bounded when it is made (and so when a
    map is loaded), not when a frame first uses it."""

    format: str
    count: int
    dim: int
    layout_hash: str
    model_sha256: str  # sha256 of the bytes of the model file that described the map
    index_type: str
    index_string: str
    created: str
    checksums: dict[str, str] = field(default_factory=dict)
    threshold: Threshold | None = None
    frame_id: str = ""  # the frame of the places' east/north, e.g. utm_32N (the UTM zone) from a drive's GNSS; "" unknown
    weights_sha256: str = ""  # fingerprint of the model's weights (ModelInfo.weights_sha256); "" in maps built before it

    def __post_init__(self) -> None:
        for name in ("format", "layout_hash", "model_sha256", "index_string", "created", "frame_id", "weights_sha256"):
            _check_field("manifest", name, getattr(self, name), str)
        _check_field("manifest", "count", self.count, int, lambda v: 0 <= v <= MAX_ENTRIES, f"an integer in 0..{MAX_ENTRIES}")
        _check_field("manifest", "dim", self.dim, int, lambda v: 1 <= v <= MAX_DIM, f"an integer in 1..{MAX_DIM}")
        _check_field("manifest", "index_type", self.index_type, str, lambda v: v in INDEX_TYPES, f"one of {INDEX_TYPES}")
        _check_field("manifest", "checksums", self.checksums, dict)
        if self.threshold is not None:
            _check_field("manifest", "threshold", self.threshold, Threshold, what="a threshold object or null")


def index_string(index_type: str, count: int, dim: int) -> str:
    """FAISS factory string for the requested index type and map size."""
    if index_type not in INDEX_TYPES:
        raise MapError(f"index type must be one of {INDEX_TYPES}, got {index_type!r}")
    if index_type == "auto":
        index_type = "flat" if count <= EXACT_LIMIT else "ivfpq" if dim % 8 == 0 else "ivf"
    if index_type == "ivfpq" and dim % 8:
        raise MapError(f"an ivfpq index needs a descriptor length divisible by 8, got {dim}: use --index ivf")
    if index_type in ("flat", "hnsw"):  # no lists: the map's expected size may be unknown (None)
        return {"flat": "Flat", "hnsw": "HNSW32,SQfp16"}[index_type]
    lists = ivf_lists(count)
    return f"IVF{lists},SQ8" if index_type == "ivf" else f"IVF{lists},PQ{dim // 8}x4fs"


def files_of(factory: str) -> tuple[str, ...]:
    """The checksummed files of a generation of this index."""
    return (*FILES, VECTORS) if is_reranked(factory) else FILES


def is_reranked(factory: str) -> bool:
    """Whether an index holds PQ codes re-scored from the float32 rows (vectors.py)."""
    return factory.endswith("x4fs")


def ivf_lists(count: int) -> int:
    return int(min(1024, max(64, np.sqrt(max(count, 1)))))


def check_trainable(factory: str, count: int) -> None:
    """An IVF index learns its lists from the first entries: refuse too few before any work."""
    if factory.startswith("IVF") and count < POINTS_PER_LIST * ivf_lists(count):
        raise MapError(
            f"an ivf index needs at least {POINTS_PER_LIST * ivf_lists(count)} entries to train, got {count}: "
            f"use --index flat (exact, fast up to {EXACT_LIMIT:,} entries) or auto"
        )


def is_map_folder(directory: Path) -> bool:
    """Whether a map may be written into this existing folder: it is empty, holds a map (its
    CURRENT, or the files of the format before generations) or only what a writer leaves."""
    names = {p.name for p in directory.iterdir()}
    return "CURRENT" in names or set(LEGACY) <= names or all(n == ".lock" or LEFTOVERS.fullmatch(n) for n in names)


def check_writable(directory: str | Path) -> Path:
    """Fail early, before any long work, when a map cannot be written to ``directory``; creates nothing.
    A folder that is neither empty nor a map is the user's: refused, never written into or cleaned."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise MapError(f"{directory} is a file, not a map folder")
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise MapError(f"cannot write a map to {directory}: {existing} is not a writable folder")
    if existing == directory and not is_map_folder(directory):
        raise MapError(f"{directory} is not empty and holds no map: a map is written into a new or empty folder, or over a map")
    return directory


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's entries to the disk (a rename is durable only after this)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MapLock:
    """Inter-process writer lock on ``DIR/.lock`` (flock: released by the kernel if the writer dies)."""

    def __init__(self, directory: Path, timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.directory, self.timeout_s, self.fd = directory, timeout_s, -1

    def __enter__(self) -> "MapLock":
        lock = self.directory / ".lock"
        try:  # never through a planted link (O_NOFOLLOW), never blocking on a planted FIFO (O_NONBLOCK)
            self.directory.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            reason = "it is a link" if lock.is_symlink() else exc.strerror or exc
            raise MapError(f"cannot write a map to {self.directory}: cannot take {lock} ({reason})") from exc
        if not stat.S_ISREG(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            raise MapError(f"cannot write a map to {self.directory}: {lock} is not a regular file; remove it")
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise MapError(f"{self.directory} is being written by another process (waited {self.timeout_s:g} s); try again") from None
                time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # closing releases the flock


def read_current(directory: Path) -> str:
    """The live generation's name; a clear error for a folder that is not a map."""
    pointer = directory / "CURRENT"
    if not pointer.is_file():
        if (directory / "manifest.json").is_file():
            raise MapError(f"{directory} is a map of an older format (no crash-safe generations): rebuild it with structvpr-edge build-map")
        raise MapError(f"{directory} is not a map: no CURRENT file (build one with structvpr-edge build-map)")
    try:
        with open_regular(pointer, MAX_SMALL_FILE, MapError, follow=False) as handle:
            name = handle.read().decode().strip()
    except UnicodeDecodeError as exc:
        raise MapError(f"{pointer} cannot be read: {exc}") from exc
    if not GENERATION.fullmatch(name):
        raise MapError(f"{pointer} is corrupt (names {name[:40]!r}); rebuild the map")
    return name


def _read_manifest(path: Path) -> MapManifest:
    with open_regular(path, MAX_SMALL_FILE, MapError, follow=False) as handle:
        text = handle.read()
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        raw_threshold = data.pop("threshold", None)
        manifest = MapManifest(**data, threshold=None if raw_threshold is None else Threshold(**raw_threshold))
    except (ValueError, TypeError) as exc:  # a UnicodeDecodeError is a ValueError
        raise MapError(f"{path} is malformed: {exc}") from exc
    if manifest.format != FORMAT:
        raise MapError(f"{path}: unsupported map format {manifest.format!r} (expected {FORMAT}); rebuild the map")
    files = files_of(manifest.index_string)  # checksums and model_sha256 are typed by MapManifest
    if sorted(manifest.checksums) != sorted(files) or not all(isinstance(v, str) and SHA256.fullmatch(v) for v in manifest.checksums.values()):
        raise MapError(f"{path}: the checksums of {files} are missing or malformed; the map cannot be verified, rebuild it")
    if not SHA256.fullmatch(manifest.model_sha256):
        raise MapError(f"{path}: the model's sha256 is missing or malformed; rebuild the map")
    if manifest.weights_sha256 and not SHA256.fullmatch(manifest.weights_sha256):
        raise MapError(f"{path}: the weights fingerprint is malformed; rebuild the map")
    return manifest


class PlaceMap:
    """Descriptors of geo-tagged reference images in a FAISS index, with their places and the
    confidence threshold; search returns the best entries for query descriptors. Built and saved by
    structvpr-edge build-map, opened with PlaceMap.load (a map folder of crash-safe generations).

    dim: descriptor length
    layout_hash: hash of the model's descriptor layout; queries of another layout are refused
    model_sha256: sha256 of the model file whose descriptors the map holds
    index_type: "auto" (exact up to 200,000 entries, else ivfpq), "flat" (exact), "hnsw", "ivf" (8-bit codes)
        or "ivfpq" (4-bit PQ codes, float32 rows on disk re-scoring the candidates exactly)
    expected_size: entries about to be added, to pick and check the "auto"/"ivf" index
    """

    # FAISS's OpenMP thread count is process-wide: set only when a search wants another count
    # than the last one set here, never on every query.
    omp_threads: int | None = None

    def __init__(self, dim: int, layout_hash: str, model_sha256: str, index_type: str = "auto", expected_size: int = 0) -> None:
        import faiss  # noqa: PLC0415

        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= MAX_DIM:
            raise MapError(f"descriptor dimension must be an integer in 1..{MAX_DIM}, got {dim!r}")
        self.faiss = faiss
        self.index_type = index_type
        self.factory = index_string(index_type, expected_size, dim)
        if expected_size:
            check_trainable(self.factory, expected_size)
        self.index = faiss.index_factory(int(dim), self.factory, faiss.METRIC_INNER_PRODUCT)
        self.scan = self._exact_scan()
        self.vectors = VectorStore(int(dim)) if is_reranked(self.factory) else None
        self.manifest = MapManifest(FORMAT, 0, int(dim), layout_hash, model_sha256, index_type, self.factory, time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.places: list[Place] | PlaceTable = []
        self.poses = np.zeros((0, 3))  # east, north, heading per entry, for fast per-frame lookups
        self._origin: Path | None = None  # folder and generation this map was loaded from / saved to
        self._generation: str | None = None
        self._pending: list[tuple[np.ndarray, list[Place]]] = []  # additions since then, re-applied on a merge
        self._threshold_changed = False

    def _check_entries(self, folder: Path, chunk: int = 65536) -> None:
        """Refuse a loaded index whose entries add() would have refused (NaN, inf, not unit norm),
        a chunk at a time; the 8/16-bit codes of approximate indexes get 5x the tolerance, an
        ivfpq map's float32 rows (vectors.f32) none."""
        ivf = None if self.vectors is not None else self.faiss.try_extract_index_ivf(self.index)
        if ivf is not None:  # an IVF index reconstructs rows through a direct map, dropped afterwards
            ivf.make_direct_map(True)
        tolerance = NORM_TOLERANCE * (1 if self.factory == "Flat" or self.vectors is not None else 5)
        rows = self.vectors.block if self.vectors is not None else self.index.reconstruct_n
        try:
            for start in range(0, self.index.ntotal, chunk):
                _check_unit(rows(start, min(chunk, self.index.ntotal - start)), tolerance)
        except MapError:
            raise MapError(f"{folder}/index.faiss holds entries that are not finite unit vectors; the map is corrupt, rebuild it") from None
        finally:
            if ivf is not None:
                ivf.make_direct_map(False)

    def _exact_scan(self) -> QuantizedScan | None:
        """The 8-bit scan that speeds up single-frame search on an exact (flat) map."""
        return QuantizedScan(self.faiss, self.index) if self.factory == "Flat" else None

    @property
    def dim(self) -> int:
        """Descriptor length."""
        return self.manifest.dim

    def __len__(self) -> int:
        return self.index.ntotal

    def check_compatible(self, layout_hash: str, model_sha256: str | None = None, weights_sha256: str = "") -> None:
        """Refuse queries from another layout and from other weights: by the weights fingerprint
        when the map and the model both have one (the same weights as checkpoint, ONNX or engine
        match), else by the model file's sha256 (maps and models from before fingerprints)."""
        if layout_hash != self.manifest.layout_hash:
            raise MapError(
                f"map was built with descriptor layout {self.manifest.layout_hash}, the model has {layout_hash}: "
                "rebuild the map with this model (structvpr-edge build-map)"
            )
        if weights_sha256 and self.manifest.weights_sha256:
            if weights_sha256 != self.manifest.weights_sha256:
                raise MapError(
                    f"map was built with weights {self.manifest.weights_sha256[:12]}, this model's weights are {weights_sha256[:12]}: "
                    "descriptors of different weights are not comparable; rebuild the map (structvpr-edge build-map)"
                )
        elif model_sha256 and self.manifest.model_sha256 and model_sha256 != self.manifest.model_sha256:
            raise MapError(
                f"map was built with model file {self.manifest.model_sha256[:12]}, this model file is {model_sha256[:12]}, and "
                f"{'the map' if not self.manifest.weights_sha256 else 'the model'} records no weights fingerprint (made before them): "
                "use that model file, or rebuild the map with this model (structvpr-edge build-map)"
            )

    def add(self, descriptors: np.ndarray, places: list[Place]) -> None:
        """Append entries; the first add to an untrained approximate index trains it."""
        descriptors = _float_rows(descriptors, "descriptors", self.dim, "N")
        if not isinstance(places, (list, tuple)) or len(places) != len(descriptors):
            raise MapError(f"{len(descriptors)} descriptors need a list of as many places")
        places = [_checked_place(row, place) for row, place in enumerate(places)]
        _check_unit(descriptors, NORM_TOLERANCE)
        if isinstance(self.places, PlaceTable):  # appending to a loaded large map: its places in memory
            self.places = list(self.places)
        if not self.index.is_trained:
            check_trainable(self.factory, len(descriptors))
            ivf = self.faiss.try_extract_index_ivf(self.index)
            if ivf is not None:  # k-means on 64 points per list: seconds, not minutes, for a 1M map
                ivf.cp.max_points_per_centroid = 64
            self.index.train(descriptors)
            self.set_search_effort()
        self.index.add(descriptors)
        if self.scan is not None:
            self.scan.add(descriptors)
        if self.vectors is not None:
            self.vectors.add(descriptors)
        self.places.extend(places)
        new = np.array([[p.east, p.north, p.heading] for p in places], dtype=np.float64).reshape(-1, 3)
        self.poses = np.concatenate([self.poses, new])
        self.manifest.count = len(self.places)
        if self._origin is not None:
            self._pending.append((descriptors, places))

    def set_threshold(self, threshold: Threshold | None) -> None:
        """The confidence rule; kept through a merge with another writer's additions."""
        self.manifest.threshold = threshold
        self._threshold_changed = True

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
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise MapError(f"k must be a positive integer, got {k!r}")
        queries = _float_rows(queries, "queries", self.dim, "B")
        if not np.isfinite(queries).all():
            raise MapError("queries must be finite (a NaN or inf descriptor has no nearest place)")
        # One query per frame: OpenMP fan-out costs more than it saves and fights the inference threads.
        few = len(queries) < FEW_QUERIES
        threads = 1 if few else max(1, os.cpu_count() or 1)
        if PlaceMap.omp_threads != threads:
            self.faiss.omp_set_num_threads(threads)
            PlaceMap.omp_threads = threads
        if few and self.scan is not None:
            return self.scan.search(queries, min(int(k), len(self)))
        if self.vectors is not None:
            return self.vectors.rerank(self.index, queries, min(int(k), len(self)))
        return self.index.search(queries, min(int(k), len(self)))

    def to_gpu(self, float16: bool = True) -> bool:
        """Move the index to the GPU when faiss has GPU support; returns whether it moved."""
        if self.vectors is not None or not hasattr(self.faiss, "StandardGpuResources") or self.faiss.get_num_gpus() == 0:
            return False  # fast-scan PQ codes (vectors) stay on the CPU
        options = self.faiss.GpuClonerOptions()
        options.useFloat16 = float16
        self._gpu_resources = self.faiss.StandardGpuResources()
        self.index = self.faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.index, options)
        self.scan = None
        return True

    def save(self, directory: str | Path, lock_timeout_s: float = LOCK_TIMEOUT_S) -> Path:
        """Write a new generation and make it the live one, atomically, under the writer lock.

        Saving back to the folder this map came from while another writer has published since
        re-reads that newest generation and re-applies this map's additions (and threshold), so
        no update is lost; this object then holds the merged map. Saving elsewhere replaces.
        """
        directory = check_writable(directory)
        if not SHA256.fullmatch(str(self.manifest.model_sha256)):
            raise MapError(f"a saved map must record the sha256 of its model file, got {self.manifest.model_sha256!r}")
        merging = self._origin == directory.resolve()
        with MapLock(directory, lock_timeout_s):
            try:
                current = read_current(directory) if (directory / "CURRENT").is_file() else None
            except MapError:
                if merging:  # appending to a map whose pointer is damaged: say so, do not replace it
                    raise
                current = None  # a new map replaces a damaged one
            _remove_leftovers(directory, keep=current)
            target = self
            if merging and current not in (None, self._generation):
                target = PlaceMap.load(directory)
                target.check_compatible(self.manifest.layout_hash, self.manifest.model_sha256, self.manifest.weights_sha256)
                for descriptors, places in self._pending:
                    target.add(descriptors, places)
                if self._threshold_changed:
                    target.manifest.threshold = self.manifest.threshold
            name = f"gen-{int(current[4:]) + 1 if current else 1:08d}"
            target._write_generation(directory, name)
            _publish(directory, name)
            self._published(target, directory, name)
            try:
                _fsync(directory)
            except OSError as exc:
                raise MapError(f"{directory / name} is live, but the disk did not confirm it ({exc}): it may not survive a power cut") from exc
            _remove_leftovers(directory, keep=name)
        return directory

    def _published(self, target: PlaceMap, directory: Path, name: str) -> None:
        """Become the generation just made live (``target``, the merged map after another writer's),
        first of all: a save retried after a later failure must not add this map's additions again."""
        if target is not self:
            self.__dict__.update(target.__dict__)
        self._origin, self._generation, self._pending, self._threshold_changed = directory.resolve(), name, [], False

    def _write_generation(self, directory: Path, name: str) -> None:
        """All files of one generation in a hidden folder, fsynced, then renamed to ``name``."""
        index = self.index
        if hasattr(self.faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
            index = self.faiss.index_gpu_to_cpu(index)
        tmp = directory / f".gen-tmp-{os.getpid()}-{os.urandom(4).hex()}"
        tmp.mkdir()
        try:
            self.faiss.write_index(index, str(tmp / "index.faiss"))  # streamed: no in-memory copy of a large index
            _fsync(tmp / "index.faiss")
            with sqlite3.connect(tmp / "places.sqlite") as db:
                db.execute("CREATE TABLE places (row INTEGER PRIMARY KEY, id TEXT, east REAL, north REAL, heading REAL, timestamp TEXT, source TEXT)")
                db.executemany(
                    "INSERT INTO places VALUES (?, ?, ?, ?, ?, ?, ?)",
                    ((i, p.id, p.east, p.north, None if np.isnan(p.heading) else p.heading, p.timestamp, p.source) for i, p in enumerate(self.places)),
                )
            db.close()
            _fsync(tmp / "places.sqlite")
            self.manifest.checksums = {name: sha256_file(tmp / name) for name in FILES}
            if self.vectors is not None:
                with (tmp / VECTORS).open("wb") as handle:
                    self.manifest.checksums[VECTORS] = self.vectors.write(handle)
                    handle.flush()
                    os.fsync(handle.fileno())
            with (tmp / "manifest.json").open("w") as handle:
                handle.write(json.dumps(asdict(self.manifest), indent=2) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            _fsync(tmp)
            os.rename(tmp, directory / name)
        except (OSError, RuntimeError, sqlite3.Error) as exc:  # a full disk, a quota (FAISS raises RuntimeError): the old generation stays live
            _remove_generation(tmp)
            raise MapError(f"cannot write the map to {directory}: {exc}") from exc
        _fsync(directory)

    @classmethod
    def load(cls, directory: str | Path, verify: bool | str = True) -> "PlaceMap":
        """The live generation of a map folder; read-only (never creates or deletes a file).
        verify: check the files' checksums; an ivfpq map's vectors.f32 (memory-mapped, GBs) is
        then checked by size, and by checksum and unit norms only with verify="full"."""
        directory = Path(directory)
        if not directory.is_dir():
            raise MapError(f"{directory} is not a map folder" + (" (it is a file)" if directory.exists() else " (it does not exist)"))
        for _ in range(5):  # a writer may retire the generation between reading CURRENT and opening it
            name = read_current(directory)
            try:
                return cls._load_generation(directory, name, verify)
            except (FileNotFoundError, MapError) as exc:
                if read_current(directory) != name:
                    continue  # retired while it was read: read the new generation
                if isinstance(exc, MapError):
                    raise
                raise MapError(f"{directory}/{name} is missing files; the map is corrupt, rebuild it") from None
        raise MapError(f"{directory} keeps changing while it is read; try again")

    @classmethod
    def _load_generation(cls, directory: Path, name: str, verify: bool | str) -> "PlaceMap":
        folder = directory / name
        if folder.is_symlink():  # its files would be read wherever the link leads (docs/security.md)
            raise MapError(f"{folder} is a link, not a generation folder inside {directory}; rebuild the map")
        if not (folder / "manifest.json").exists():  # also when the folder is missing or a file
            raise FileNotFoundError(folder / "manifest.json")
        manifest = _read_manifest(folder / "manifest.json")
        for file, expected in manifest.checksums.items():
            if not (folder / file).exists() and not (folder / file).is_symlink():
                raise FileNotFoundError(folder / file)
            # a regular file of a size the manifest allows, checked before a byte is hashed or parsed
            with open_regular(folder / file, _max_bytes(file, manifest), MapError, follow=False) as handle:
                if file == VECTORS and os.fstat(handle.fileno()).st_size != _max_bytes(file, manifest):
                    raise MapError(f"{folder}: {file} holds {os.fstat(handle.fileno()).st_size} bytes, not {manifest.count} rows; the map is corrupt, rebuild it")
                if verify and (file != VECTORS or verify == "full") and sha256_of(handle) != expected:
                    raise MapError(f"{folder}: {file} does not match its checksum; the map is corrupt, rebuild it")
        place_map = cls(manifest.dim, manifest.layout_hash, manifest.model_sha256, manifest.index_type)  # empty, then filled
        reranked = is_reranked(manifest.index_string)
        try:  # an ivfpq map's inverted lists are mapped, not read
            place_map.index = place_map.faiss.read_index(str(folder / "index.faiss"), place_map.faiss.IO_FLAG_MMAP if reranked else 0)
        except RuntimeError as exc:
            raise MapError(f"{folder}/index.faiss cannot be read: {str(exc).splitlines()[0]}") from exc
        place_map.manifest, place_map.factory = manifest, manifest.index_string
        if place_map.index.d != manifest.dim:
            raise MapError(f"{folder}: the index holds {place_map.index.d}-d entries, the manifest says {manifest.dim}")
        place_map.scan = place_map._exact_scan()
        place_map.vectors = VectorStore(manifest.dim, folder / VECTORS) if reranked else None
        if not reranked or verify == "full":
            place_map._check_entries(folder)
        try:  # immutable: a generation never changes, and a read-only open must not write a journal
            uri = f"file:{pathname2url(str(folder / 'places.sqlite'))}?mode=ro&immutable=1"  # quoted: %, # and ? in folder names
            if reranked:
                place_map.places = PlaceTable(uri, manifest.count)
                place_map.poses = np.full((manifest.count, 3), np.nan)
                for i, (e, n, h) in enumerate(place_map.places.db.execute("SELECT east, north, heading FROM places ORDER BY row")):
                    place_map.poses[i] = e, n, np.nan if h is None else h
            else:
                with sqlite3.connect(uri, uri=True) as db:
                    place_map.places = [_place(r) for r in db.execute(f"{SELECT_PLACES} ORDER BY row")]
                db.close()
                place_map.poses = np.array([[p.east, p.north, p.heading] for p in place_map.places], dtype=np.float64).reshape(-1, 3)
        except (sqlite3.Error, IndexError, ValueError, TypeError) as exc:  # ValueError, TypeError: a position that is no number
            raise MapError(f"{folder}/places.sqlite cannot be read: {exc}") from exc
        if len(place_map.places) != place_map.index.ntotal or manifest.count != len(place_map.places):
            raise MapError(f"{folder}: index has {place_map.index.ntotal} entries, metadata {len(place_map.places)}, manifest {manifest.count}")
        place_map.set_search_effort()
        place_map._origin, place_map._generation, place_map._pending, place_map._threshold_changed = directory.resolve(), name, [], False
        return place_map


def _publish(directory: Path, name: str) -> None:
    """Point CURRENT at ``name``: the one atomic step that makes a generation live (durable once
    the caller has fsynced the directory)."""
    tmp = directory / f"CURRENT.tmp-{os.getpid()}"
    with tmp.open("w") as handle:
        handle.write(name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, directory / "CURRENT")


def _remove_generation(folder: Path) -> None:
    """Remove the files a writer creates in a generation, then the folder if that emptied it: a
    file of anyone else's in it keeps the folder (and itself) where it is."""
    for name in GENERATION_FILES:
        path = folder / name
        if path.is_file() or path.is_symlink():
            path.unlink()
    with suppress(OSError):
        folder.rmdir()


def _remove_leftovers(directory: Path, keep: str | None) -> None:
    """Interrupted writes' temp folders/files and retired generations (called under the writer lock);
    only the names a writer creates are touched. Best-effort: one that cannot be removed (an
    immutable file, a read-only mount) is left to the next writer and never fails a save."""
    for path in directory.iterdir():
        if path.name == keep or not LEFTOVERS.fullmatch(path.name):
            continue
        with suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                _remove_generation(path)
            elif path.name.startswith("CURRENT.tmp-"):
                path.unlink()


def _check_unit(descriptors: np.ndarray, tolerance: float) -> None:
    norms = np.linalg.norm(descriptors, axis=1)
    if not np.all(np.isfinite(norms)) or np.any(np.abs(norms - 1) > tolerance):
        raise MapError("map descriptors must be finite and L2-normalised")


def _max_bytes(file: str, manifest: MapManifest) -> int:
    """The most bytes a generation file of this many entries can hold: a float32 vector plus 1 KiB
    of index structure per entry (and per IVF list), 16 KiB of metadata row per entry."""
    if file == "index.faiss":
        return (manifest.count + 1024) * (4 * manifest.dim + 1024) + MAX_SMALL_FILE
    if file == VECTORS:
        return manifest.count * 4 * manifest.dim
    return (manifest.count + 64) * (16 << 10)

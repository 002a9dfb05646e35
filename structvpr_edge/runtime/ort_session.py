"""ONNX Runtime sessions for exported models, torch-free, with threading chosen by measurement.

Graph optimisations are always on (they fuse Conv+Clip and the QDQ pairs of the INT8 forms
into integer kernels) and the fastest execution provider present comes first: TensorRT, then
CUDA, then CPU.

Threads on the CPU are measured, not assumed: the best intra-op thread count and whether the
pool may spin between runs depend on the model, the CPU and what else runs on it (on a shared
2-core Xeon, two threads that spin ran 2-6x slower than one). ``threads="auto"`` times 1..N
threads with spinning on and off for the model at hand (about a second), keeps the fastest
(a costlier one only when it wins by MARGIN) and caches the timings per model (sha256) and
machine in a small JSON file, with the load they were timed under (a tune taken on a busy
machine is done again once it is quieter). Each session's pool spins after a run, so with more than one
session alive in the process every session runs with spinning off (sessions already open are
reopened that way): otherwise each run fights the others' spinning threads.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..artifacts import FORMATS, cache_folder
from ..errors import BackendError, ConfigError, ModelError
from ..files import open_regular, replace_whole
from ..modelinfo import PREFIX, sha256_file
from ..safety import check_onnx
from .hardware import cpu_name

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
AUTO = "auto"
MAX_THREADS = 1024  # beyond this a thread count is a typo (ONNX Runtime fails deep inside on 2**40)
CACHE_BYTES = 1 << 20  # the threading cache holds CACHE_ENTRIES small entries
SPINNING = "session.intra_op.allow_spinning"
CACHE_FORMAT = "structvpr-edge/threads/1"
CACHE_ENTRIES = 64  # models x machines kept; the oldest go first
CANDIDATE = re.compile(r"[1-9]\d*/(spin|nospin)")  # a timing's key: threads/spinning
TUNE_SECONDS = 1.0  # timing budget of one tune, shared by the candidates (session creation comes on top)
# A cached tune is re-done when it was timed under a machine load (1-min load average per core)
# this much heavier than now: a tune taken beside a training run chose 1 thread without
# spinning for INT8, 1.8 ms, where 2 spinning threads run 1.4 ms on the quiet machine. The
# same load (above an idle machine) is what calibrate's report calls a busy machine.
LOAD_SLACK = 0.5
# More threads or spinning must win by 5% to be kept: they take CPU from the cameras, the map
# search and the rest of the vehicle, and under load they are what slows down first.
MARGIN = 1.05

Measure = Callable[[int, bool], float]  # (threads, spinning) -> milliseconds per run


def pick_providers(available: list[str]) -> list[str]:
    """The available providers in preference order; CPU is always last and always there."""
    chosen = [p for p in PROVIDER_PREFERENCE if p in available]
    return chosen if "CPUExecutionProvider" in chosen else [*chosen, "CPUExecutionProvider"]


def _ort():
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError as exc:
        raise BackendError("onnxruntime is not installed: pip install 'structvpr-edge[onnx]'") from exc
    return ort


def create_session(
    path: str | Path, threads: int | None = None, spinning: bool = True, providers: list[str] | None = None, profile_prefix: str | None = None,
):
    """An ``onnxruntime.InferenceSession``, fully optimised unless the graph was made for TensorRT
    (``made_for_tensorrt``: it runs unfused); ``threads`` None is ORT's default, every core."""
    ort = _ort()
    check_onnx(path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: QDQ graphs make the optimizer warn about every folded constant
    options.add_session_config_entry(SPINNING, "1" if spinning else "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    providers = providers or pick_providers(ort.get_available_providers())
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
        if made_for_tensorrt(session.get_modelmeta().custom_metadata_map):
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"ONNX Runtime cannot load {path}: {exc}") from exc
    return session


def made_for_tensorrt(props: dict[str, str]) -> bool:
    """The model's metadata names a precision made for TensorRT. ONNX Runtime runs such a graph to
    check it, as TensorRT computes it: every Q/DQ pair as written, int8 values dequantized and
    multiplied in float, which is exact on any CPU. Fused, ORT's int8 kernels saturate on x86
    CPUs without VNNI (AVX2 only): the shipped kit's TensorRT form kept a descriptor cosine of
    0.56 to FP32 fused on an AMD EPYC, 0.98 unfused."""
    try:
        tag = json.loads(props.get(PREFIX + "extra", "{}")).get("precision", "fp32")
    except (ValueError, AttributeError):
        return False  # ModelInfo refuses damaged metadata with its own error when the model is opened
    return isinstance(tag, str) and tag in FORMATS and FORMATS[tag].backend == "tensorrt"


def parse_threads(value: str | int | None) -> int | str:
    """``threads`` as the package takes it: ``"auto"`` (None means the same) or an integer >= 1;
    also the argparse type of ``--threads``."""
    if value is None or value == AUTO:
        return AUTO
    try:
        number = int(value) if isinstance(value, str) else value
    except ValueError:
        number = None
    if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or not 1 <= number <= MAX_THREADS:
        raise ConfigError(f"threads must be 'auto' or an integer in 1..{MAX_THREADS}, got {value!r}")
    return int(number)


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, not the whole machine)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def candidates(cores: int) -> list[tuple[int, bool]]:
    """Thread counts 1, 2, 4, ... and ``cores``, each with spinning on and off (one thread has
    no pool to spin: ORT runs it on the calling thread)."""
    counts = sorted({*(2**i for i in range(cores.bit_length()) if 2**i <= cores), cores})
    return [(n, spin) for n in counts for spin in ((False,) if n == 1 else (True, False))]


def _key(threads: int, spinning: bool) -> str:
    return f"{threads}/{'spin' if spinning else 'nospin'}"


@dataclass(frozen=True)
class Threading:
    """How a session runs on the CPU and why: ``source`` is explicit, measured or cached."""

    threads: int
    spinning: bool
    source: str
    timings_ms: dict[str, float] = field(default_factory=dict)  # "threads/spin|nospin" -> median ms of the tune

    def to_json(self) -> dict:
        return asdict(self)


def _cost(key: str) -> tuple[int, bool]:
    threads, mode = key.split("/")
    return int(threads), mode == "spin"


def fastest(timings_ms: dict[str, float], shared: bool, source: str) -> Threading:
    """The cheapest configuration (fewest threads, then no spinning) within MARGIN of the
    fastest timed one; only those without spinning when ``shared``."""
    allowed = {k: v for k, v in timings_ms.items() if not (shared and k.endswith("/spin"))}
    if not allowed:
        raise BackendError(f"no threading candidate was timed (got {sorted(timings_ms)})")
    quickest = min(allowed.values())
    best = min((k for k, v in allowed.items() if v <= quickest * MARGIN), key=_cost)
    return Threading(*_cost(best), source, dict(timings_ms))


class ThreadCache:
    """Tune results per model and machine in one small JSON file; a corrupt file is ignored and
    rewritten, so the cache can never stop a session from opening."""

    def __init__(self, path: Path | None = None, entries: int = CACHE_ENTRIES) -> None:
        self.path, self.entries = Path(path) if path is not None else cache_folder() / "threads.json", entries

    def _read(self) -> dict[str, dict]:
        try:  # a FIFO or a device there is ignored (and replaced by put), never waited on
            with open_regular(self.path, CACHE_BYTES, ConfigError) as handle:
                data = json.loads(handle.read())
            entries = data["entries"] if data.get("format") == CACHE_FORMAT else {}
            return {k: v for k, v in entries.items() if isinstance(v, dict) and isinstance(v.get("timings_ms"), dict)}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):  # ConfigError is a ValueError
            return {}

    def get(self, key: str, load: float | None = None) -> dict[str, float] | None:
        """The timings for ``key``; None also when they were timed under a load more than
        LOAD_SLACK heavier than ``load`` (the current one) or under a load not recorded (older code's
        tune; one beside training read 22 ms for a 1.1 ms run), so the tune is done again."""
        entry = self._read().get(key)
        if entry is None:
            return None
        timed_under = entry.get("load_per_core")
        if load is not None and (not isinstance(timed_under, (int, float)) or timed_under - load > LOAD_SLACK):
            return None
        timings = entry["timings_ms"]
        valid = all(CANDIDATE.fullmatch(k) and isinstance(v, (int, float)) for k, v in timings.items())
        return timings if valid and any(k.endswith("/nospin") for k in timings) else None

    def put(self, key: str, timings_ms: dict[str, float], load: float | None = None) -> None:
        """Store (newest wins, at most ``entries`` kept) with the load they were timed under; a
        cache that cannot be written is skipped."""
        entries = self._read()
        entries[key] = {"timings_ms": timings_ms, "measured": time.time(), "load_per_core": load}
        kept = dict(sorted(entries.items(), key=lambda kv: kv[1].get("measured", 0))[-self.entries :])
        with suppress(OSError):  # replaced whole: a reader never sees half a file
            replace_whole(self.path, lambda tmp: tmp.write_text(json.dumps({"format": CACHE_FORMAT, "entries": kept}, indent=1) + "\n"))


def load_per_core() -> float | None:
    """The 1-minute load average per core of the machine; None where the OS has none."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return None


def machine_key(model: str | Path) -> str:
    """The model's bytes, the CPU, the cores usable and the ONNX Runtime version."""
    return f"{sha256_file(model)}|{cpu_name()}|{usable_cores()} cores|onnxruntime {_ort().__version__}"


def dummy_input(session) -> dict[str, np.ndarray]:
    dtypes = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(float16)": np.float16}
    first = session.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in first.shape]
    return {first.name: np.zeros(shape, dtypes.get(first.type, np.float32))}


def time_session(path: str | Path, budget_s: float, warmup: int = 3, max_runs: int = 50) -> Measure:
    """A ``Measure`` that opens a CPU session of ``path`` per candidate and returns the median ms
    of as many runs as fit in ``budget_s`` (at least 5)."""

    def measure(threads: int, spinning: bool) -> float:
        session = create_session(path, threads, spinning, ["CPUExecutionProvider"])
        feed = dummy_input(session)
        for _ in range(warmup):
            session.run(None, feed)
        times: list[float] = []
        deadline = time.perf_counter() + budget_s
        while len(times) < max_runs and (len(times) < 5 or time.perf_counter() < deadline):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(1000 * (time.perf_counter() - start))
        return float(np.median(times))

    return measure


def choose_threading(
    path: str | Path, threads: int | str | None = AUTO, shared: bool = False, measure: Measure | None = None,
    cache: ThreadCache | None = None, options: list[tuple[int, bool]] | None = None, load: float | None = None,
) -> Threading:
    """``threads`` an integer: that, spinning unless ``shared``. ``"auto"``: the fastest of the
    cached timings for this model and machine, else of a tune (``measure``, default
    ``time_session``, over ``options``, default ``candidates(usable_cores())``), then cached
    with the load (default ``load_per_core()``) it ran under."""
    threads = parse_threads(threads)
    if isinstance(threads, int):  # else AUTO
        return Threading(threads, not shared, "explicit")
    cache = cache or ThreadCache()
    key = machine_key(path)
    load = load_per_core() if load is None else load
    timings = cache.get(key, load)
    if timings is not None:
        return fastest(timings, shared, "cached")
    options = options or candidates(usable_cores())
    measure = measure or time_session(path, TUNE_SECONDS / len(options))
    timings = {_key(n, spin): measure(n, spin) for n, spin in options}
    cache.put(key, timings, load)
    return fastest(timings, shared, "measured")


_LIVE: weakref.WeakSet = weakref.WeakSet()  # the CPU sessions open in this process
_LOCK = threading.RLock()


class OrtSession:
    """One model's session whose threading follows the process: chosen by ``choose_threading``
    and reopened without spinning once another CPU session of the package is alive. Opening
    (and tuning) is serialised so that a tune does not time another's."""

    def __init__(self, path: str | Path, threads: int | str | None = AUTO, providers: list[str] | None = None) -> None:
        self.path, self.requested = Path(path), parse_threads(threads)
        if not self.path.is_file():  # before the threading tune hashes it
            raise ModelError(f"model file {self.path} not found")
        self.providers = providers or pick_providers(_ort().get_available_providers())
        self.on_cpu = self.providers[0] == "CPUExecutionProvider"
        with _LOCK:
            if not self.on_cpu:  # a GPU provider: host threads hardly matter, ORT's defaults stay
                self.threading = None
                self.session = create_session(path, None, True, self.providers)
                return
            live = list(_LIVE)
            self.threading = choose_threading(path, self.requested, shared=bool(live))
            self.session = create_session(path, self.threading.threads, self.threading.spinning, self.providers)
            for other in live:  # only once this one is open: a refused model leaves the others as they were
                other.share()
            _LIVE.add(self)

    def share(self) -> None:
        """Reopen without spinning (once), for a process that now runs several sessions."""
        with _LOCK:
            current = self.threading  # None only on a GPU provider, which is never shared
            if self.session is None or current is None or not current.spinning:
                return
            self.threading = (Threading(current.threads, False, "explicit") if current.source == "explicit"
                              else fastest(current.timings_ms, True, current.source))
            self.session = create_session(self.path, self.threading.threads, False, self.providers)

    def close(self) -> None:
        with _LOCK:
            _LIVE.discard(self)
            self.session = None

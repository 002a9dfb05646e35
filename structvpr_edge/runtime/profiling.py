"""Latency measurement behind the benchmark scripts: statistics, the machine, synthetic maps and
frames, a per-node ONNX Runtime profile, and timing EdgeVPR configurations so that they do not
interfere; torch-free (a torch configuration imports torch in its own process).

Each configuration of a comparison runs in its own process and only one process works at a
time: blocks of frames in rotating order, so background load still hits all alike, with a
short pause between blocks so that no thread pool is still spinning when the next one runs.
The rotation gives the stage p50s; jitter (p99/p50) comes from one uninterrupted run of each
configuration afterwards, as a vehicle runs it: every switch of the rotation re-warms caches
and wakes sleeping threads, which no configuration running alone pays.
"""
from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import BackendError

STAGES = ("preprocess", "inference", "search", "total", "frame")  # frame: wall time of localize() (of all cameras)
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")


def stage_stats(samples_ms: list[float]) -> dict[str, float]:
    """Percentiles in ms and the jitter ratio p99/p50."""
    values = np.asarray(samples_ms, dtype=np.float64)
    p50, p99 = np.percentile(values, [50, 99])
    return {
        "p50": float(p50),
        "p90": float(np.percentile(values, 90)),
        "p99": float(p99),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "p99/p50": float(p99 / p50) if p50 > 0 else float("inf"),
    }


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except ImportError:
        return None


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} elsewhere)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_name() -> str:
    """The CPU's model name with its family/model numbers (a virtual Xeon names no model)."""
    info = _cpuinfo()
    if "model name" not in info:
        return platform.processor() or platform.machine()
    return f"{info['model name']} (family {info.get('cpu family', '?')}, model {info.get('model', '?')})"


def cpu_features() -> list[str]:
    """The vector and matrix extensions that decide which integer kernels ORT runs."""
    flags = set(_cpuinfo().get("flags", "").split())
    return [f for f in CPU_FEATURES if f in flags]


def _command(*args: str) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def system_info() -> dict:
    """CPU, load, GPU, library versions and, on a Jetson, the L4T release and power mode."""
    tegra = Path("/etc/nv_tegra_release")
    return {
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "gpu": _command("nvidia-smi", "--query-gpu=name", "--format=csv,noheader"),
        "onnxruntime": _version("onnxruntime"),
        "faiss": _version("faiss"),
        "tensorrt": _version("tensorrt"),
        "opencv": _version("cv2"),
        "jetson_l4t": tegra.read_text().splitlines()[0] if tegra.exists() else None,
        "jetson_power_mode": _command("nvpmodel", "-q"),
    }


def synthetic_map(vpr, size: int, index: str, seed: int = 0, chunk: int = 100_000, keep: bool = False):
    """``size`` entries for ``vpr``'s model along synthetic routes: unit vectors clustered around
    route points, so maps can reach millions. Returns the map and, with ``keep``, the raw vectors."""
    from tqdm import tqdm  # noqa: PLC0415

    from .map import Place, PlaceMap  # noqa: PLC0415

    dim = vpr.info.layout.dim
    place_map = PlaceMap(dim, vpr.info.layout.hash(), vpr.model_sha256, index, expected_size=size)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, size // 50), dim)).astype(np.float32)
    kept = []
    for start in tqdm(range(0, size, chunk), desc=f"map ({size} entries)", unit="chunk", leave=False):
        n = min(chunk, size - start)
        rows = centres[rng.integers(0, len(centres), n)] + 0.7 * rng.normal(size=(n, dim)).astype(np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        place_map.add(rows, [Place(str(i), 5.0 * i, 0.0, 0.0) for i in range(start, start + n)])
        if keep:
            kept.append(rows)
    return place_map, (np.concatenate(kept) if keep else None)


def camera_frames(count: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """``count`` random HxWx3 uint8 frames of ``size`` (W, H)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(count)]


def exact_agreement(place_map, vectors: np.ndarray, queries: int = 500, seed: int = 1) -> tuple[float, dict]:
    """Share of queries whose top-1 equals exact search's, and the map's search time on them.
    Queries are map entries with noise (a revisit of a mapped place)."""
    import faiss  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    q = vectors[rng.choice(len(vectors), queries, replace=False)] + 0.03 * rng.normal(size=(queries, vectors.shape[1])).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(q, 1)
    found, times = [], []
    for row in q:
        start = time.perf_counter()
        found.append(place_map.search(row[None], 1)[1][0, 0])
        times.append(1000 * (time.perf_counter() - start))
    return float(np.mean(truth[:, 0] == np.array(found))), stage_stats(times)


def node_profile(path: str | Path, threads: int = 1, runs: int = 200) -> dict:
    """ONNX Runtime's own profiler over ``runs`` runs (spinning off): ms per run by operator
    type and for the slowest nodes, with their input shapes; tells unfused or badly laid-out
    nodes from the kernels that do the work."""
    from .ort_session import create_session, dummy_input  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="structvpr-profile-") as tmp:
        session = create_session(path, threads, False, ["CPUExecutionProvider"], profile_prefix=str(Path(tmp) / "profile"))
        feed = dummy_input(session)
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    nodes, shapes = defaultdict(set), {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op, name = event["args"]["op_name"], event["name"].removesuffix("_kernel_time")
            by_op[op] += event["dur"] / 1000 / runs
            by_node[name] += event["dur"] / 1000 / runs
            nodes[op].add(name)
            shapes[name] = (op, [next(iter(s.values())) for s in event["args"].get("input_type_shape", [])][:1])
    total = sum(by_op.values())
    return {
        "total_ms": total,
        "by_op": [{"op": op, "ms": ms, "nodes": len(nodes[op]), "share": ms / total} for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])],
        "slowest": [{"node": n, "op": shapes[n][0], "input": shapes[n][1], "ms": ms} for n, ms in sorted(by_node.items(), key=lambda kv: -kv[1])[:10]],
    }


def int8_advice(inference_ms: dict[str, float], needed: float = 1.3) -> str | None:
    """The artifact to ship when INT8 does not pay on this CPU: ``inference_ms`` maps 'fp32' /
    'int8' (/ 'fp16') to each one's p50 in its chosen threading. INT8 costs accuracy, so below
    ``needed``x FP32 the faster of the full-accuracy FP32 and FP16 is recommended; None when INT8 pays."""
    if "int8" not in inference_ms or "fp32" not in inference_ms:
        return None
    speedup = inference_ms["fp32"] / inference_ms["int8"]
    if speedup >= needed:
        return None
    full = min((k for k in ("fp32", "fp16") if k in inference_ms), key=inference_ms.__getitem__)
    figures = ", ".join(f"{name.upper()} {ms:.2f} ms" for name, ms in inference_ms.items())
    return (f"INT8 is only {speedup:.2f}x FP32 on {cpu_name()} ({figures}), short of the {needed}x that pays for its "
            f"accuracy cost: use the {full.upper()} artifact")


@dataclass(frozen=True)
class RunSpec:
    """One EdgeVPR configuration to time: ``cameras`` instances of ``model`` in one process."""

    name: str
    model: str
    backend: str = "auto"
    threads: int | str = "auto"
    top_k: int = 5
    map_size: int = 10_000
    index: str = "flat"
    nprobe: int | None = None
    frame_size: tuple[int, int] = (640, 480)
    cameras: int = 1
    fps: float | None = None  # pace frames like a camera (idle gaps between frames); None: back to back

    def open(self) -> "Rig":
        return Rig(self)


@dataclass(frozen=True)
class SessionSpec:
    """One model's bare ONNX Runtime CPU session to time (no map, no preprocessing), threads
    chosen as for a session alone in its process: how calibrate compares its artifacts, so that
    it and latency.py give one verdict on INT8."""

    name: str
    model: str
    threads: int | str = "auto"

    def open(self) -> "SessionLoop":
        return SessionLoop(self)


class SessionLoop:
    """Runs ``SessionSpec.model`` on a zero input; ``run`` reports the inference time per run."""

    def __init__(self, spec: SessionSpec) -> None:
        from .ort_session import OrtSession, dummy_input  # noqa: PLC0415

        self.spec = spec
        self.ort = OrtSession(spec.model, spec.threads, ["CPUExecutionProvider"])
        self.feed = dummy_input(self.ort.session)

    def setup(self) -> dict:
        return {**asdict(self.spec), "threading": [self.ort.threading.to_json()]}

    def run(self, frames: int) -> list[dict[str, float]]:
        out = []
        for _ in range(frames):
            start = time.perf_counter()
            self.ort.session.run(None, self.feed)
            out.append({"inference": 1000 * (time.perf_counter() - start)})
        return out

    def close(self) -> None:
        self.ort.close()


class Rig:
    """``spec.cameras`` EdgeVPR instances of one model on one shared synthetic map, each camera
    localizing in its own thread with all cameras triggered together, as a vehicle runs them."""

    def __init__(self, spec: RunSpec) -> None:
        from .edgevpr import EdgeVPR  # noqa: PLC0415

        self.spec = spec
        self.cameras = [EdgeVPR(spec.model, backend=spec.backend, threads=spec.threads, top_k=spec.top_k) for _ in range(spec.cameras)]
        started = time.perf_counter()
        self.map, _ = synthetic_map(self.cameras[0], spec.map_size, spec.index)
        self.map_build_s = time.perf_counter() - started
        self.map.set_search_effort(nprobe=spec.nprobe)
        for vpr in self.cameras:
            vpr.set_map(self.map)
        self.frames = camera_frames(16, spec.frame_size)
        self.pool = ThreadPoolExecutor(spec.cameras) if spec.cameras > 1 else None
        self.done = 0

    def setup(self) -> dict:
        """What runs: the threading each camera ended up with (after all were opened), the index."""
        threading = [getattr(vpr.backend, "threading", None) for vpr in self.cameras]
        return {**asdict(self.spec), "threading": threading, "index_factory": self.map.factory, "map_build_s": self.map_build_s}

    def run(self, frames: int) -> list[dict[str, float]]:
        """Stage times per frame (camera 0's; ``frame`` is the wall time until every camera is done).
        With ``spec.fps`` a frame starts one camera period after the previous one started, so
        thread pools see the idle gaps a camera leaves (their threads stop spinning and sleep)."""
        out, start = [], None
        for _ in range(frames):
            frame = self.frames[self.done % len(self.frames)]
            self.done += 1
            if self.spec.fps is not None and start is not None:
                time.sleep(max(0.0, start + 1 / self.spec.fps - time.perf_counter()))
            start = time.perf_counter()
            if self.pool is None:
                timing = self.cameras[0].localize(frame).timing_ms
            else:
                timing = [f.result() for f in [self.pool.submit(vpr.localize, frame) for vpr in self.cameras]][0].timing_ms
            out.append({**timing, "frame": 1000 * (time.perf_counter() - start)})
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        for vpr in self.cameras:
            vpr.close()


def _worker(spec: RunSpec | SessionSpec, conn) -> None:
    """A child process: open the rig, then run the blocks of frames the parent asks for."""
    try:
        rig = spec.open()
        conn.send(("ok", rig.setup()))
        while (frames := conn.recv()) is not None:
            conn.send(("ok", rig.run(frames)))
        rig.close()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it typed
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def receive(process, conn, poll_s: float = 1.0):
    """The worker's next message; a worker that died without one (a crash in a native library,
    the OOM killer, a script that re-runs itself on spawn) is a BackendError, not a hang."""
    while not conn.poll(poll_s):
        if not process.is_alive():
            raise BackendError(f"a latency worker died (exit code {process.exitcode}) without reporting")
    return conn.recv()


def measure_isolated(specs: list[RunSpec | SessionSpec], frames: int, warmup: int, block: int = 10, settle_s: float = 0.02) -> dict[str, dict]:
    """Each spec in its own process, one process working at a time, blocks of ``block`` frames
    in rotating order with ``settle_s`` between blocks. Returns name -> {"setup", "samples"
    (stage -> ms per frame after ``warmup`` frames), "sustained" (the same for one uninterrupted
    run of ``frames`` frames after the rotation, for jitter)}. Processes open one after another, so a
    thread tune is never timed against another's. Each block starts with one untimed frame: the
    first frame after a switch re-warms caches the other configurations evicted (its frame time
    was 1.3-1.7x the median, AMX Xeon, docs/RESULTS.md issue 13), which one configuration running
    alone, as on a vehicle, never pays."""
    from tqdm import tqdm  # noqa: PLC0415

    context = multiprocessing.get_context("spawn")
    workers: dict[str, tuple] = {}

    def ask(name: str, message):
        process, conn = workers[name]
        conn.send(message)
        status, payload = receive(process, conn)
        if status != "ok":
            raise BackendError(f"configuration {name} failed: {payload}")
        return payload

    def collect(name: str, frames: int, into: str) -> None:
        for timing in ask(name, 1 + frames)[1:]:  # the first frame re-warms the caches, untimed
            for stage, ms in timing.items():
                results[name][into][stage].append(ms)

    results: dict[str, dict] = {}
    try:
        for spec in tqdm(specs, desc="open configurations", unit="config", leave=False):
            parent, child = context.Pipe()
            process = context.Process(target=_worker, args=(spec, child), daemon=True)
            process.start()
            workers[spec.name] = (process, parent)
            status, payload = receive(process, parent)
            if status != "ok":
                raise BackendError(f"configuration {spec.name} failed to open: {payload}")
            results[spec.name] = {"setup": payload, "samples": defaultdict(list), "sustained": defaultdict(list)}
        names = list(workers)
        for name in names:
            ask(name, warmup)
        rounds = -(-frames // block)
        for r in tqdm(range(rounds), desc="blocks", unit="round", leave=False):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                time.sleep(settle_s)
                collect(name, min(block, frames - r * block), "samples")
        for name in names:
            time.sleep(settle_s)
            collect(name, frames, "sustained")
    finally:
        for process, conn in workers.values():
            try:
                conn.send(None)
            except OSError:
                pass
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
    return {name: {"setup": r["setup"], "samples": dict(r["samples"]), "sustained": dict(r["sustained"])} for name, r in results.items()}

"""The logic behind benchmarks/latency.py: the artifacts to compare, the machine, ONNX Runtime's
per-node profile, and the report of per-stage latency measured through the timing harness."""
from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import tempfile
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from ..artifacts import CPU_INT8, FORMATS, backend_for
from ..errors import BackendError, ConfigError
from ..files import replace_whole
from ..modelinfo import ModelInfo, read_onnx_info, sha256_file
from ..runtime.edgevpr import EdgeVPR
from ..runtime.hardware import cpu_features, cpu_name
from ..runtime.tensorrt_backend import load_engine_manifest
from ..timing import check_frames, int8_advice, measure_isolated, stage_stats
from ..trt_compat import import_tensorrt
from .rig import RunSpec, exact_agreement, synthetic_map

STAGES = ("preprocess", "inference", "search", "total", "frame")  # frame: wall time of localize() (of all cameras)
BACKEND_SPEED = ("tensorrt", "onnxruntime", "torch")  # fastest first: picks the artifact the multi-camera row times
SOURCE_RECORD = "source.json"  # in the work folder: the checkpoint its artifacts were made from, and its sha256


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except ImportError:
        return None


def _tensorrt_version() -> str | None:
    """TensorRT's version where import_tensorrt finds it: None when it is missing, tensorrt-stubs'
    empty namespace package (which ``import tensorrt`` imports without error) included."""
    try:
        return str(getattr(import_tensorrt(), "__version__", "unknown"))
    except BackendError:
        return None


def _command(*args: str) -> str | None:
    try:  # a command that is not there raises FileNotFoundError, an OSError
        return subprocess.run(list(args), capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15-minute load average; None where the OS keeps none."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def system_info() -> dict:
    """CPU, load, GPU, library versions and, on a Jetson, the L4T release and power mode."""
    tegra = Path("/etc/nv_tegra_release")
    return {
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "load_average": load_average(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "gpu": _command("nvidia-smi", "--query-gpu=name", "--format=csv,noheader"),
        "onnxruntime": _version("onnxruntime"),
        "faiss": _version("faiss"),
        "tensorrt": _tensorrt_version(),
        "opencv": _version("cv2"),
        "jetson_l4t": tegra.read_text().splitlines()[0] if tegra.exists() else None,
        "jetson_power_mode": _command("nvpmodel", "-q"),
    }


def node_profile(path: str | Path, threads: int = 1, runs: int = 200) -> dict:
    """ONNX Runtime's own profiler over ``runs`` runs (spinning off): ms per run by operator
    type and for the slowest nodes, with their input shapes; tells unfused or badly laid-out
    nodes from the kernels that do the work."""
    from ..runtime.ort_session import create_session, dummy_input  # noqa: PLC0415

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


@dataclass(frozen=True)
class LatencyConfig:
    """What benchmarks/latency.py compares and how (its options, parsed). ``run`` holds what every
    configuration shares; its name, model and backend are each artifact's."""

    run: RunSpec
    models: tuple[str, ...] = ()  # ONNX files, checkpoints, shipped names or one engine; () exports structvprpp
    precision: str = "int8"  # the default model's artifact
    compare: bool = False  # torch eager vs ORT FP32 / FP16 / INT8 (+TensorRT)
    work: Path = Path("engines/bench")
    reuse: bool = False
    images: str | None = None
    num: int = 128
    frames: int = 300
    warmup: int = 30
    profile: bool = False
    check_exact: bool = False
    dataset: str | None = None
    split: str = "test"

    def __post_init__(self) -> None:
        """The options checked before anything is exported, calibrated or timed."""
        check_frames(self.frames, self.warmup)
        if self.profile and not self.compare and self.models and not any(backend_for(m) == "onnxruntime" for m in self.models):
            raise ConfigError(f"--profile profiles ONNX Runtime graphs (.onnx), and none of {list(self.models)} is one")


def precision_of(tag: str) -> str:
    """A FORMATS tag's precision, its form dropped: 'int8-cpu' -> 'int8'."""
    return tag.split("-")[0]


def artifact_precision(model: str) -> str:
    """What ``model`` computes in (fp32, fp16 or int8), read from the artifact itself: an engine's
    manifest, an ONNX file's metadata (calibrate's tag; none on the FP32 export), and fp32 for a
    checkpoint or shipped name. Never --precision: that only picks the default model's artifact."""
    backend = backend_for(model)
    if backend == "tensorrt":
        return str(load_engine_manifest(model)["precision"])
    if backend == "onnxruntime":
        return precision_of(str(read_onnx_info(model).extra.get("precision", "fp32")))
    return "fp32"


def source_of(checkpoint: str) -> dict:
    """What the work folder records of the checkpoint (a path or shipped name) its artifacts are made from."""
    from ..models.checkpoint import resolve_checkpoint  # noqa: PLC0415 - torch only where a checkpoint is read

    path = resolve_checkpoint(checkpoint)
    return {"checkpoint": str(path), "sha256": sha256_file(path)}


def check_reusable(work: Path, source: dict) -> None:
    """--reuse: the artifacts in ``work`` must come from the checkpoint ``source`` (source_of) names, by
    the sha256 prepare_artifacts records beside them; another checkpoint's export would be timed as this one's."""
    record = work / SOURCE_RECORD
    try:
        made_from = json.loads(record.read_text())
    except (OSError, ValueError):  # none, or not whole: the artifacts' origin is unknown
        made_from = None
    if not isinstance(made_from, dict) or made_from.get("sha256") != source["sha256"]:
        origin = f"made from {made_from.get('checkpoint')}" if isinstance(made_from, dict) else "no record of the checkpoint they were made from"
        raise ConfigError(f"--reuse: the artifacts in {work} ({origin}) are not {source['checkpoint']}'s (sha256 {source['sha256'][:12]}): "
                          "run without --reuse to export them anew, or give another --work")


def prepare_artifacts(checkpoint: str, work: Path, images: str | None, num: int, threads, reuse: bool) -> tuple[dict, dict]:
    """name -> (model, backend, precision) for torch, ORT FP32 / FP16 / INT8 (+ TensorRT engines
    found in ``work``), and the export report (parity) when exported in this run. A fresh export
    records the checkpoint's sha256 in ``work`` (SOURCE_RECORD) once calibrated, for check_reusable."""
    from ..deploy.calibration import CalibrationConfig, calibrate  # noqa: PLC0415

    fp32, calibration, record = work / "model.onnx", work / "calibration", work / SOURCE_RECORD
    source, export = source_of(checkpoint), {}
    if reuse and fp32.exists() and (calibration / CPU_INT8).exists():
        check_reusable(work, source)
    else:
        from ..data.synthcity import generate_dataset  # noqa: PLC0415
        from ..deploy.export import export_onnx  # noqa: PLC0415

        record.unlink(missing_ok=True)  # the artifacts are another checkpoint's until this export and calibration end
        report = export_onnx(checkpoint, fp32, uint8_input=True)
        export = {"min_cosine": report.parity_min_cosine, "max_abs_diff": report.parity_max_abs_diff, "frames": report.parity_images}
        if images is None:
            images = work / "calibration-images"
            if not (images / "images").exists():
                generate_dataset(images, seed=7, preset="smoke")
        calibrate(CalibrationConfig(model=fp32, images=images, out=calibration, num=num, threads=threads, reselect=True))
        replace_whole(record, lambda tmp: tmp.write_text(json.dumps(source) + "\n"))  # whole or absent
    configs = {"torch-fp32": (checkpoint, "torch", "fp32")}
    for tag, form in FORMATS.items():  # the ONNX Runtime artifacts, "ort-fp32", "ort-fp16", "ort-int8"
        if form.backend == "onnxruntime":
            precision = precision_of(tag)
            configs[f"ort-{precision}"] = (str(fp32 if form.producer == "export" else calibration / form.file), "onnxruntime", precision)
    for precision in ("fp16", "int8"):
        engine = work / f"model.{precision}.engine"
        if engine.exists():
            check_engine_source(engine, source)
            configs[f"tensorrt-{precision}"] = (str(engine), "tensorrt", precision)
    return configs, export


def check_engine_source(engine: Path, source: dict) -> None:
    """ConfigError unless ``engine`` was built from the checkpoint ``source`` (source_of) names: its
    manifest's model metadata records the checkpoint sha256; an engine left in --work by another
    model's run would be timed, and its figures reported, as this one's."""
    made_from = ModelInfo.from_props(load_engine_manifest(engine)["model_info"]).checkpoint_sha256
    if made_from != source["sha256"]:
        raise ConfigError(f"{engine} was built from checkpoint sha256 {made_from[:12]}, not {source['checkpoint']} "
                          f"({source['sha256'][:12]}): build it again from {engine.parent / 'model.onnx'} or remove it")


def recall_figures(artifacts: dict, dataset: str, split: str, threads) -> dict[str, dict]:
    """Recall@1/5 through ONNX Runtime of every ORT artifact."""
    from ..data.dataset import load_dataset  # noqa: PLC0415
    from ..eval.evaluate import evaluate  # noqa: PLC0415
    from ..eval.models import deployed_extractor  # noqa: PLC0415

    data = load_dataset(dataset, split=split)
    return {name: evaluate(deployed_extractor(path, threads=threads), data).recall for name, (path, backend, _) in artifacts.items() if backend == "onnxruntime"}


def choose_artifacts(config: LatencyConfig) -> tuple[dict, dict]:
    """name -> (model, backend, precision) to time, and the export parity when exported in this run."""
    if config.compare or not config.models:
        config.work.mkdir(parents=True, exist_ok=True)
        artifacts, export = prepare_artifacts(config.models[0] if config.models else "structvprpp", config.work, config.images, config.num,
                                              config.run.threads, config.reuse)
        if not config.compare:
            wanted = f"ort-{config.precision}"
            artifacts = {wanted: artifacts[wanted]}
        return artifacts, export
    return {m: (m, config.run.backend, artifact_precision(m)) for m in config.models}, {}


def camera_artifact(artifacts: dict) -> str:
    """The artifact the multi-camera row times, as a vehicle would deploy it: the INT8 one of the
    fastest backend present (a TensorRT engine, then ONNX Runtime, then torch); without an INT8
    artifact, the first of the fastest backend."""
    return min(artifacts, key=lambda name: (artifacts[name][2] != "int8", BACKEND_SPEED.index(backend_for(artifacts[name][0]))))


def run_figures(spec: RunSpec, result: dict, precision: str) -> dict:
    """One row of the report: the spec as it ran, its per-stage figures (rotated and alone), and its
    capacity: the frames/s its stages could sustain back to back (all cameras together), whatever
    pace --fps set; the pace itself is the spec's ``fps``."""
    stats = {stage: stage_stats(result["samples"][stage]) for stage in STAGES}
    alone = {stage: stage_stats(result["sustained"][stage]) for stage in STAGES}
    return {"name": spec.name, "precision": precision, **result["setup"], "stage_ms": stats, "sustained_ms": alone,
            "capacity_fps": spec.cameras * 1000 / stats["frame"]["mean"]}


def time_artifacts(config: LatencyConfig, artifacts: dict) -> list[dict]:
    """Every artifact timed side by side and, with ``cameras`` > 1, camera_artifact's on that many cameras."""
    base = replace(config.run, cameras=1)
    specs = {name: replace(base, name=name, model=path, backend=backend) for name, (path, backend, _) in artifacts.items()}
    timed = list(specs.items())
    if config.run.cameras > 1:
        name = camera_artifact(artifacts)
        timed.append((name, replace(specs[name], name=f"{name} x{config.run.cameras} cameras", cameras=config.run.cameras)))
    measured = measure_isolated([spec for _, spec in timed], config.frames, config.warmup)
    return [run_figures(spec, measured[spec.name], artifacts[name][2]) for name, spec in timed]


def latency_report(config: LatencyConfig) -> dict:
    """The runs, the machine, INT8's verdict and what the options add (profile, exactness, recall).
    The machine is read before any work, so its load is the background the runs met, not the
    harness's own export and timing; ``load_average_after`` is read once the runs end."""
    system = system_info()
    artifacts, export = choose_artifacts(config)
    runs = time_artifacts(config, artifacts)
    report: dict = {"runs": runs, "system": system, "load_average_after": load_average(),
              "frames": config.frames, "export_parity": export}
    by_name = {run["name"]: run for run in runs}
    report["inference_p50"] = {p: by_name[f"ort-{p}"]["stage_ms"]["inference"]["p50"] for p in ("fp32", "fp16", "int8") if f"ort-{p}" in by_name}
    report["int8_advice"] = int8_advice(report["inference_p50"])
    if config.profile:
        report["profile"] = {name: node_profile(path) for name, (path, _, _) in artifacts.items() if backend_for(path) == "onnxruntime"}
    if config.check_exact:
        with EdgeVPR(runs[0]["model"], backend=runs[0]["backend"], threads=config.run.threads) as vpr:
            place_map, vectors = synthetic_map(vpr, config.run.map_size, config.run.index, keep=True)
            place_map.set_search_effort(nprobe=config.run.nprobe)
            agreement, queries, search_ms = exact_agreement(place_map, vectors)
            report.update({"top1_agreement_with_exact": agreement, "exact_queries": queries, "search_ms_on_revisits": search_ms})
    if config.dataset and config.compare:
        report["recall"] = recall_figures(artifacts, config.dataset, config.split, config.run.threads)
    return report

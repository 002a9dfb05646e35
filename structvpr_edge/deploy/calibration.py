"""The INT8 calibration workflow behind ``structvpr-edge calibrate``.

A calibration lives in one folder, ``calibration/NAME/`` (file names: structvpr_edge/artifacts.py):

    manifest.json          the chosen images (paths + sha256): reproducible, and a changed image is caught
    ranges.json            ONNX Runtime's tensor ranges from the one calibration pass
    model.int8.cpu.onnx    QDQ, u8 asymmetric activations: ONNX Runtime on CPU
    model.int8.trt.onnx    QDQ, s8 symmetric: TensorRT 10/11 explicit quantization
    cache.trt              TensorRT calibration cache from the same ranges (TensorRT < 10)
    model.fp16.onnx        FP16 inside, FP32 inputs/outputs (TensorRT 11, ORT CUDA)
    report.json / .md      accuracy gate: descriptor cosine and Recall@1/5 against FP32

Only the small files need to travel (a clone, a wheel): every graph is rebuilt from the weights
and ranges.json on demand, the one calibrated (``prepare_kit``): the same nodes, names, shapes and
metadata (``graph_identity``); its floating-point weights may differ in the last bits when this
CPU or simplifier release is not the calibrating one's.

Images are chosen by greedy k-center on FP32 descriptors, so rare conditions (night, winter,
fog) are represented instead of drowned by the common daylight frames. Torch-free.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import CALIBRATION_FORMAT, CPU_INT8, FP16, FP32, KIT_FILES, MANIFEST, RANGES, REPORT, REPORT_MD, TRT_CACHE, TRT_INT8, cache_folder, is_shipped_kit
from ..data.dataset import VPRDataset, list_images, load_dataset
from ..errors import BackendError, ConfigError, DatasetError, ModelError
from ..files import open_regular, remove_stale_temps, replace_whole, temp_beside
from ..metrics import recall_at_n, retrieve
from ..modelinfo import ModelInfo, info_digest, load_onnx, proto_info, read_onnx_info, sha256_file
from ..runtime.edgevpr import EdgeVPR
from ..runtime.ort_session import LOAD_SLACK, load_per_core
from ..runtime.mapping import describe_paths
from ..runtime.preprocess import Preprocessor, read_image
from ..safety import confined
from ..timing import SessionSpec, int8_advice, measure_isolated, stage_stats
from . import quantize as q

# How calibrate exports a checkpoint or shipped model into the folder (recorded in the manifest).
KIT_EXPORT: dict[str, Any] = {"uint8_input": True, "batch": "dynamic", "opset": 17}
INT8_FORMS = ("INT8 cpu", "INT8 trt")  # both gated: the TensorRT form once passed at mean cosine 0.61 unchecked
DEFAULT_MAX_RECALL_DROP = 1.0  # Recall@1 points either INT8 form may lose on the validation set
DEFAULT_MIN_COSINE = 0.95  # without a validation set: the mean descriptor cosine to FP32 either INT8 form must keep
DESCRIBE_BATCH = 64  # images per inference call when describing candidates and the gate's val split


@dataclass
class CalibrationConfig:
    model: Path  # the FP32 ONNX from `structvpr-edge export`, or a checkpoint / shipped name exported into out/model.onnx
    images: Path  # an image folder, or a VPR dataset root (its train split is used)
    out: Path  # calibration/NAME
    num: int = 512
    method: str = "entropy"
    max_recall_drop: float | None = None  # Recall@1 points INT8 may lose against FP32 (needs val; DEFAULT_MAX_RECALL_DROP)
    val: Path | None = None  # VPR dataset for the accuracy gate; without one the gate is min_cosine
    min_cosine: float = DEFAULT_MIN_COSINE  # the gate without val: mean cosine to FP32 on the calibration images
    val_split: str = "val"
    reselect: bool = False  # choose new images even if manifest.json exists
    overwrite_shipped: bool = False  # out may be a kit that ships with the package (a maintainer regenerating it)
    threads: int | None = None
    trust_checkpoint: bool = False  # a checkpoint that needs code to load is refused unless True (docs/security.md)

    def __post_init__(self) -> None:
        """Options checked when they are given, before an export or a calibration pass is spent on them."""
        self.model, self.images, self.out = Path(self.model), Path(self.images), Path(self.out)
        self.val = Path(self.val) if self.val is not None else None
        if isinstance(self.num, bool) or not isinstance(self.num, int) or self.num <= 0:
            raise ConfigError(f"--num must be a positive integer, got {self.num!r}")
        if self.method not in q.METHODS:
            raise ConfigError(f"--method must be one of {q.METHODS}, got {self.method!r}")
        drop = self.max_recall_drop
        if drop is not None and (isinstance(drop, bool) or not isinstance(drop, (int, float)) or not -100 <= drop <= 100):
            raise ConfigError(f"--max-recall-drop must be Recall@1 points in -100..100, got {drop!r}")
        if drop is not None and self.val is None:
            raise ConfigError("--max-recall-drop needs a validation dataset (--val-dataset DATASET)")
        if self.val is not None and drop is None:
            self.max_recall_drop = DEFAULT_MAX_RECALL_DROP
        if isinstance(self.min_cosine, bool) or not isinstance(self.min_cosine, (int, float)) or not -1 <= self.min_cosine <= 1:
            raise ConfigError(f"--min-cosine must be a cosine in -1..1, got {self.min_cosine!r}")


def candidate_root(images: Path) -> Path:
    """A dataset root calibrates on its train split (never on test); a plain folder on itself."""
    if (images / "images").is_dir():
        train = images / "images" / "train"
        if not train.is_dir():
            raise DatasetError(f"{images} has no train split to calibrate on; pass an image folder instead (e.g. {images}/images/<split>/database)")
        return train
    if not images.is_dir():
        raise DatasetError(f"calibration images: {images} is neither a folder nor a VPR dataset root")
    return images


def confined_images(images: list[Path], root: Path) -> list[Path]:
    """``images``, once each lies inside ``root`` with links followed (load_manifest's rule): a folder
    of `ln -s` links is refused when the kit is written, not when it is first reused."""
    for image in images:
        confined(image, root, DatasetError)
    return images


def k_center(descriptors: np.ndarray, k: int) -> list[int]:
    """Greedy k-center under cosine distance: start at the most typical image, then add the one
    farthest from everything chosen so far. Every image ends close to a chosen one."""
    x = descriptors / np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)
    chosen = [int(np.argmax(x @ x.mean(axis=0)))]
    distance = 1 - x @ x[chosen[0]]
    for _ in range(min(k, len(x)) - 1):
        distance[chosen] = -1.0  # never pick twice, even among identical images
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, 1 - x @ x[chosen[-1]])
    return chosen


def write_manifest(path: Path, root: Path, images: list[Path], model: Path, candidates: int, method: str = "entropy", weights: str | None = None) -> dict:
    """``weights``: the checkpoint or shipped name ``model`` was exported from (with KIT_EXPORT), so
    the folder can rebuild its ONNX graphs without being given them."""
    manifest = {
        "format": CALIBRATION_FORMAT,
        "root": str(root.resolve()),
        "model": recorded(model, path.parent),
        "model_sha256": sha256_file(model),
        "weights": weights,
        "weights_sha256": read_onnx_info(model).checkpoint_sha256,
        "export": KIT_EXPORT if weights is not None else None,
        "method": method,
        "selection": "greedy k-center on FP32 descriptors (cosine distance)",
        "candidates": candidates,
        "images": [{"path": p.relative_to(root).as_posix(), "sha256": sha256_file(p)} for p in confined_images(images, root)],
    }
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def recorded(path: Path, kit: Path) -> str:
    """How a kit records a path: a file of its own by name (a kit is written aside, moved whole and
    may be copied), any other as given."""
    return path.name if path.parent == kit else str(path)


def _is_entry(entry: object) -> bool:
    return isinstance(entry, dict) and all(isinstance(entry.get(key), str) for key in ("path", "sha256"))


# What each manifest field must hold; a reader names the fields it uses, checked when it loads the file.
MANIFEST_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "format": (repr(CALIBRATION_FORMAT), lambda v: v == CALIBRATION_FORMAT),
    "root": ("the images' folder", lambda v: isinstance(v, str) and v != ""),
    "images": ('a list of {"path": ..., "sha256": ...} strings', lambda v: isinstance(v, list) and all(map(_is_entry, v))),
    "candidates": ("a count of images", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "method": (f"one of {q.METHODS}", lambda v: v in q.METHODS),
    "weights": ("a checkpoint, a shipped name or null", lambda v: v is None or isinstance(v, str)),
    "weights_sha256": ("the sha256 of the calibrated checkpoint", lambda v: isinstance(v, str)),
}
IMAGE_FIELDS = ("format", "root", "images")


def read_manifest(path: Path, fields: tuple[str, ...]) -> dict:
    """The calibration manifest file ``path``, once it is a JSON object whose ``fields`` (those its
    reader uses) hold what MANIFEST_FIELDS says: a damaged manifest is a DatasetError naming the
    file and the field, not a KeyError or TypeError half way through."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read calibration manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path} is not a structvpr-edge calibration manifest ({CALIBRATION_FORMAT}): not a JSON object")
    for name in fields:
        what, valid = MANIFEST_FIELDS[name]
        if name not in manifest or not valid(manifest[name]):
            got = repr(manifest[name])[:100] if name in manifest else "nothing"
            raise DatasetError(f"calibration manifest {path} is damaged: {name!r} must be {what}, got {got}; "
                               "restore it, or recalibrate with --reselect")
    return manifest


def kit_manifest(folder: Path, fields: tuple[str, ...]) -> dict:
    """The manifest of calibration kit ``folder`` (read_manifest); ConfigError when it holds none:
    the folder given is not a kit."""
    if not (folder / MANIFEST).is_file():
        raise ConfigError(f"{folder} is not a calibration folder (no {MANIFEST}); run `structvpr-edge calibrate`")
    return read_manifest(folder / MANIFEST, fields)


def load_manifest(path: Path, also: tuple[str, ...] = ()) -> tuple[dict, list[Path]]:
    """The manifest of a kit folder or file ``path`` (read_manifest: its images and the fields
    ``also`` checked) and its image paths, every image checked against its sha256."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    manifest = read_manifest(path, (*IMAGE_FIELDS, *also))
    root = Path(manifest["root"])
    paths, bad = [], []
    for entry in manifest["images"]:
        image = root / entry["path"]
        confined(image, root, DatasetError)  # a crafted manifest names no file outside its image root
        digest = sha256_file(image) if image.is_file() else None
        if digest is None:
            bad.append(f"{image} is missing")
        elif digest != entry["sha256"]:
            bad.append(f"{image} changed (sha256 {digest[:12]}..., manifest says {entry['sha256'][:12]}...)")
        paths.append(image)
    if bad:
        raise DatasetError(
            f"{len(bad)} calibration image(s) differ from {path}: {bad[0]}; restore them, or rerun "
            "`structvpr-edge calibrate ... --reselect` to choose and hash a new set"
        )
    return manifest, paths


def calibration_batches(paths: list[Path], info: ModelInfo) -> Iterator[np.ndarray]:
    """Model-ready batches of one image each (static-batch and dynamic graphs both take them),
    read and preprocessed as the runtime reads and preprocesses a camera frame."""
    preprocess = Preprocessor(info)
    for path in paths:
        yield preprocess([read_image(path)]).copy()  # a copy: the buffer is reused for the next image


@dataclass
class GateStep:
    """One quantization tried by the accuracy gate; drop and cosine are the worse INT8 form's."""

    fp32_groups: list[str]
    recall_int8: dict[str, dict[str, float]]  # INT8 form -> Recall@N (with a validation set)
    drop_pp: dict[str, float]  # N -> Recall@N points lost by the worse form (with a validation set)
    cosine_mean: float
    cosine_min: float


@dataclass
class CalibrationReport:
    model: str
    method: str
    images: int
    candidates: int
    manifest_sha256: str
    artifacts: dict[str, str]
    quantization: dict[str, dict]
    cosine: dict[str, dict[str, float]]  # artifact -> mean/min cosine to FP32 descriptors
    cosine_on: str
    recall_fp32: dict[str, float] = field(default_factory=dict)
    recall: dict[str, dict[str, float]] = field(default_factory=dict)
    max_recall_drop_pp: float | None = None
    min_cosine: float | None = None  # the gate's floor when there was no validation set
    gate: list[GateStep] = field(default_factory=list)
    fp32_groups: list[str] = field(default_factory=list)
    fp32_nodes: list[str] = field(default_factory=list)
    within_budget: bool | None = None
    sha256: dict[str, str] = field(default_factory=dict)  # artifact file name -> sha256 of the file as calibrated
    graphs: dict[str, dict[str, str]] = field(default_factory=dict)  # graph file name -> graph_identity (a rebuilt kit must match)
    tools: dict[str, str] = field(default_factory=dict)  # the export and quantization packages' versions, named when a rebuild differs
    cpu_ms: dict[str, float] = field(default_factory=dict)  # fp32/int8/fp16 -> ms per frame on this CPU, side by side
    cpu_advice: str | None = None  # set when INT8 does not pay on this CPU
    cpu_load: float | None = None  # 1-min load average per core while cpu_ms were timed
    seconds: float = 0.0

    def markdown(self) -> str:
        lines = [
            f"# INT8 calibration of `{self.model}`",
            "",
            f"{self.images} images chosen by greedy k-center from {self.candidates}; ranges by `{self.method}` calibration, one pass.",
            "",
            f"Descriptor cosine to FP32 ({self.cosine_on}):",
            "",
            "| artifact | mean cosine | min cosine |",
            "| --- | --- | --- |",
            *[f"| {name} | {c['mean']:.5f} | {c['min']:.5f} |" for name, c in self.cosine.items()],
        ]
        if self.recall_fp32:
            lines += ["", "| artifact | Recall@1 | Recall@5 |", "| --- | --- | --- |", f"| FP32 | {100 * self.recall_fp32['1']:.2f} | {100 * self.recall_fp32['5']:.2f} |"]
            lines += [f"| {name} | {100 * r['1']:.2f} | {100 * r['5']:.2f} |" for name, r in self.recall.items()]
        if self.gate and self.recall_fp32:
            lines += ["", f"Accuracy gate, both INT8 forms: Recall@1 drop budget {self.max_recall_drop_pp} pp.", "",
                      "| layers kept in FP32 | worse R@1 drop (pp) | worse R@5 drop (pp) |", "| --- | --- | --- |"]
            lines += [f"| {', '.join(s.fp32_groups) or 'none'} | {s.drop_pp['1']:.2f} | {s.drop_pp['5']:.2f} |" for s in self.gate]
        elif self.gate:
            lines += ["", f"Accuracy gate, both INT8 forms (no validation set): mean cosine to FP32 at least {self.min_cosine}.", "",
                      "| layers kept in FP32 | worse mean cosine | worse min cosine |", "| --- | --- | --- |"]
            lines += [f"| {', '.join(s.fp32_groups) or 'none'} | {s.cosine_mean:.5f} | {s.cosine_min:.5f} |" for s in self.gate]
        if self.gate:
            verdict = "within budget" if self.within_budget else "NOT within budget"
            lines += ["", f"Result: {verdict}; kept in FP32: {', '.join(self.fp32_groups) or 'nothing'} ({len(self.fp32_nodes)} nodes)."]
        if self.cpu_ms:
            lines += ["", "ONNX Runtime on this CPU, each artifact alone as `benchmarks/latency.py` times it, threads tuned, inference p50 ms: " + ", ".join(f"{k.upper()} {v:.2f}" for k, v in self.cpu_ms.items())]
            if self.cpu_load is not None and self.cpu_load > LOAD_SLACK:
                lines += [f"(timed under a load of {self.cpu_load:.2f} per core: a busy machine; `python benchmarks/latency.py` on a quiet one measures it)"]
            lines += [f"**{self.cpu_advice}**"] if self.cpu_advice else []
        lines += ["", "Artifacts: " + ", ".join(f"`{Path(p).name}`" for p in self.artifacts.values())]
        return "\n".join(lines) + "\n"


def _cosine(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    c = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"mean": float(c.mean()), "min": float(c.min())}


def _recall(descriptors: np.ndarray, dataset: VPRDataset) -> dict[str, float]:
    db, queries = descriptors[: len(dataset.database)], descriptors[len(dataset.database) :]
    _, predictions = retrieve(db, queries, 5)
    return recall_at_n(predictions, dataset.positives, (1, 5))


def describe(model: Path, paths: list[Path], desc: str, threads: int | None) -> np.ndarray:
    """Descriptors of ``paths`` by an ONNX model of any precision, computed by the runtime itself
    (EdgeVPR, mapping.describe_paths): each file read and preprocessed on its own as a camera frame, as
    calibration_batches feeds the ranges: the k-center selection and the accuracy gate see the
    pixels INT8 was calibrated on and the vehicle sees, also in a folder of mixed image sizes."""
    with EdgeVPR(model, threads=threads, max_batch=DESCRIBE_BATCH) as vpr:
        return describe_paths(vpr, paths, DESCRIBE_BATCH, desc)


def _group_nodes(groups: dict[str, list[str]], kept: list[str]) -> list[str]:
    """Node names of the ``kept`` groups, once each (the groups share some nodes)."""
    return list(dict.fromkeys(n for group in kept for n in groups[group]))


def _images(config: CalibrationConfig) -> tuple[Path, list[Path], int | None]:
    """(root, images, candidates): the images of the manifest in ``config.out`` (hash-checked) and
    how many they were chosen from, unless --reselect or there is none; else the candidates to
    choose among and None. Read before any image is described: a changed or missing image, a
    damaged manifest, an empty folder or an image linked from outside it (which the manifest
    could not record) costs no describing and no quantization."""
    manifest_path = config.out / MANIFEST
    if config.reselect or not manifest_path.is_file():
        root = candidate_root(config.images)
        candidates = list_images(root)
        if not candidates:
            raise DatasetError(f"no images under {root}")
        return root, confined_images(candidates, root), None
    manifest, chosen = load_manifest(manifest_path, also=("candidates",))
    if len(chosen) != min(config.num, manifest["candidates"]):
        raise ConfigError(f"{manifest_path} holds {len(chosen)} images but --num is {config.num}; pass --reselect to choose anew")
    return Path(manifest["root"]), chosen, manifest["candidates"]


def _select(config: CalibrationConfig, weights: str | None, images: tuple[Path, list[Path], int | None]) -> tuple[list[Path], int]:
    """The ``images`` a manifest chose (_images), or k-center among its candidates. The manifest is
    written either way, so it always names the model calibrated now."""
    root, chosen, count = images
    if count is None:
        descriptors = describe(config.model, chosen, "describe candidates", config.threads)
        chosen, count = [chosen[i] for i in k_center(descriptors, config.num)], len(chosen)
    write_manifest(config.out / MANIFEST, root, chosen, config.model, count, config.method, weights)
    return chosen, count


def export_fp32(weights: str, out: Path, trust_checkpoint: bool = False) -> Path:
    """The FP32 ONNX of a checkpoint or shipped model, exported as KIT_EXPORT says (needs torch)."""
    try:
        from .export import export_onnx  # noqa: PLC0415
    except ImportError as exc:
        raise BackendError(
            f"exporting {weights} to ONNX needs torch (pip install 'structvpr-edge[train]'); "
            f"or copy {out} from a machine that has it"
        ) from exc
    export_onnx(weights, out, trust_checkpoint=trust_checkpoint, **KIT_EXPORT)
    return out


def kit_workspace(folder: Path) -> Path:
    """Where a kit's graphs are rebuilt: the kit itself when it can be written (a clone), else a copy
    of its small files in the user cache, one per report (a wheel in a read-only site-packages)."""
    if os.access(folder, os.W_OK):
        return folder
    work = cache_folder() / "kits" / f"{folder.name}-{sha256_file(folder / REPORT)[:16]}"
    work.mkdir(parents=True, exist_ok=True)
    for name in KIT_FILES:  # REPORT last: a copy cut short has none, and check_kit refuses it
        if (folder / name).is_file() and not (work / name).is_file():
            shutil.copy(folder / name, work / name)
    return work


def _rebuild(work: Path, name: str, report: dict, build) -> None:
    """``build(tmp)`` the graph ``name`` aside; it replaces nothing unless it is the graph the kit's
    report records (graph_identity): the same weights, ranges and tools give it on any CPU."""
    def write(tmp: Path) -> None:
        build(tmp)
        if name in report["sha256"] and not _is_recorded(tmp, name, report):
            here, there = tool_versions(), report.get("tools", {})
            differ = ", ".join(f"{k} {there[k]} there, {v} here" for k, v in here.items() if k in there and there[k] != v)
            raise ModelError(
                f"{name} rebuilt in {work} is not the calibrated graph (other nodes or names): this machine's export tools differ "
                f"from the calibrating one's ({differ or 'versions not recorded'}); install those versions, copy the kit's .onnx "
                "files from a machine that has them, or recalibrate"
            )

    replace_whole(work / name, write)


def prepare_kit(folder: Path) -> Path:
    """The folder holding every graph of calibration kit ``folder`` (the FP32 export, both INT8
    forms, FP16), each rebuilt from the recorded weights and ranges where missing, the calibrated
    graph (graph_identity): ``folder`` itself, or its copy in the user cache when it is read-only.
    Torch is needed only to export a missing FP32 graph.

    ModelError when the graph comes from other weights than the calibrated ones (the ranges
    belong to those), lacks a tensor the ranges name (another exporter renamed it), or rebuilds
    to another graph."""
    folder = Path(folder)
    report = check_kit(folder)  # a mix of two calibrations is named first
    manifest = kit_manifest(folder, ("weights", "weights_sha256", "method"))
    work = kit_workspace(folder)
    if work != folder:  # a copy in the user cache: its own files are checked too
        report = check_kit(work)
    fp32, weights = work / FP32, manifest.get("weights")
    redo = f"recalibrate: structvpr-edge calibrate --model {weights or 'MODEL'} --dataset DATASET --val-dataset DATASET --out {folder} --reselect"
    if not fp32.is_file():
        if weights is None:
            raise ConfigError(f"{folder} has no {FP32} and records no weights to export it from; {redo}")
        _rebuild(work, FP32, report, lambda tmp: export_fp32(weights, tmp))
    if read_onnx_info(fp32).checkpoint_sha256 != manifest["weights_sha256"]:
        raise ModelError(f"{fp32} was exported from other weights than {folder} was calibrated with; {redo}")
    graph = load_onnx(fp32).graph
    tensors = {o for node in graph.node for o in node.output} | {i.name for i in graph.input}
    unknown = sorted(set(q.load_ranges(work / RANGES).keys()) - tensors)
    if unknown:
        raise ModelError(f"{fp32} lacks {len(unknown)} tensors the ranges name (e.g. {unknown[0]}): another exporter built it; {redo}")
    nodes = report["fp32_nodes"]
    derived = {
        TRT_INT8: lambda tmp: q.quantize(fp32, work / RANGES, tmp, q.TRT_FORM, manifest["method"], nodes),
        CPU_INT8: lambda tmp: q.quantize(fp32, work / RANGES, tmp, q.CPU_FORM, manifest["method"], nodes),
        FP16: lambda tmp: q.convert_fp16(fp32, tmp),
    }
    for name, build in derived.items():
        if not (work / name).is_file():
            _rebuild(work, name, report, build)
    return work


def _check(config: CalibrationConfig) -> tuple[Any, ModelInfo]:
    """The FP32 model's proto and ModelInfo, once it is an FP32 graph."""
    proto = load_onnx(config.model)
    info = proto_info(proto)
    if info.extra.get("precision", "fp32") != "fp32":
        raise ConfigError(f"{config.model} is already {info.extra['precision']}; calibrate the FP32 export")
    return proto, info


@dataclass
class _Quantizer:
    """What the steps of one calibration share: the FP32 graph, its ranges and sensitive groups."""

    config: CalibrationConfig
    proto: Any
    ranges: Any
    groups: dict[str, list[str]]

    def path(self, artifact: str) -> Path:
        out = self.config.out
        return {"FP32": self.config.model, "INT8 cpu": out / CPU_INT8, "INT8 trt": out / TRT_INT8, "FP16": out / FP16}[artifact]

    def write_int8(self, kept: list[str]) -> None:
        """Both Q/DQ forms and the TensorRT cache, with the ``kept`` groups left in FP32."""
        out, nodes = self.config.out, _group_nodes(self.groups, kept)
        outputs = {o for n in self.proto.graph.node if n.name in nodes for o in n.output}
        (out / TRT_CACHE).write_text(q.trt_calibration_cache(self.ranges, skip_tensors=outputs))
        for form, name in ((q.CPU_FORM, CPU_INT8), (q.TRT_FORM, TRT_INT8)):
            q.quantize(self.config.model, out / RANGES, out / name, form, self.config.method, nodes)


def _quantize(config: CalibrationConfig, proto, info: ModelInfo, paths: list[Path]) -> _Quantizer:
    """Ranges from one pass over the chosen images; INT8 with every group quantized, and FP16."""
    from .trt_check import check_trt_friendly  # noqa: PLC0415

    ranges = q.collect_ranges(config.model, calibration_batches(paths, info), config.method, total=len(paths))
    q.save_ranges(ranges, config.out / RANGES)
    run = _Quantizer(config, proto, ranges, dict(q.sensitive_groups(proto)))
    run.write_int8([])
    q.convert_fp16(config.model, config.out / FP16)
    for artifact in ("INT8 trt", "FP16"):
        check_trt_friendly(run.path(artifact))
    return run


def _gate(run: _Quantizer, report: CalibrationReport, dataset: VPRDataset | None, paths: list[Path], reference: np.ndarray,
          outputs: dict[str, np.ndarray]) -> None:
    """Keep the sensitive groups in FP32 one at a time, in order, until both INT8 forms pass (or
    none is left): a Recall@1 drop within ``max_recall_drop`` on the validation set, or without
    one a mean cosine to FP32 of at least ``min_cosine`` on ``paths``. ``outputs`` ends with the
    final INT8 descriptors."""
    config, remaining = run.config, list(run.groups)
    if dataset is not None:
        report.recall_fp32 = _recall(reference, dataset)
    while True:
        cosine = [_cosine(reference, outputs[form]) for form in INT8_FORMS]
        recall = {form: _recall(outputs[form], dataset) for form in INT8_FORMS} if dataset is not None else {}
        drop = {n: max(100 * (report.recall_fp32[n] - r[n]) for r in recall.values()) for n in report.recall_fp32}
        step = GateStep(list(report.fp32_groups), recall, drop, min(c["mean"] for c in cosine), min(c["min"] for c in cosine))
        report.gate.append(step)
        passed = drop["1"] <= config.max_recall_drop if dataset is not None else step.cosine_mean >= config.min_cosine  # type: ignore[operator]  # set whenever val is
        if passed or not remaining:
            break
        report.fp32_groups.append(remaining.pop(0))
        run.write_int8(report.fp32_groups)
        outputs.update({form: describe(run.path(form), paths, form, config.threads) for form in INT8_FORMS})
    if dataset is not None:
        report.recall = {name: _recall(d, dataset) for name, d in outputs.items()}
    report.within_budget = passed


def _measure(run: _Quantizer, dataset: VPRDataset | None, images: list[Path], candidates: int) -> CalibrationReport:
    """Descriptor cosine of every artifact to FP32 on the validation set (else the calibration
    images); with a validation set, Recall@1/5 and the accuracy gate."""
    config = run.config
    paths = dataset.database.paths + dataset.queries.paths if dataset is not None else images
    reference, *others = (describe(run.path(a), paths, a, config.threads) for a in ("FP32", "INT8 cpu", "INT8 trt", "FP16"))
    outputs = dict(zip(("INT8 cpu", "INT8 trt", "FP16"), others))
    report = CalibrationReport(
        model=recorded(config.model, config.out), method=config.method, images=len(images), candidates=candidates,
        manifest_sha256=sha256_file(config.out / MANIFEST), artifacts={}, quantization={}, cosine={},
        cosine_on=f"{config.val}/{config.val_split}, {len(paths)} images" if dataset else f"the {len(images)} calibration images",
        max_recall_drop_pp=config.max_recall_drop, min_cosine=None if dataset is not None else config.min_cosine,
    )
    _gate(run, report, dataset, paths, reference, outputs)
    report.fp32_nodes = _group_nodes(run.groups, report.fp32_groups)
    report.cosine = {name: _cosine(reference, d) for name, d in outputs.items()}
    return report


def cpu_inference_ms(paths: dict[str, Path], threads: int | str | None, frames: int = 200) -> dict[str, float]:
    """Inference p50 of each artifact on this CPU, timed as benchmarks/latency.py times it (each alone
    in its own process, threads tuned for it): sessions timed alive together once disagreed with it."""
    specs = [SessionSpec(name, str(path), threads) for name, path in paths.items()]
    measured = measure_isolated(specs, frames, warmup=frames // 10)
    return {name: stage_stats(m["samples"]["inference"])["p50"] for name, m in measured.items()}


def _write_report(run: _Quantizer, report: CalibrationReport, start: float) -> None:
    """Artifacts, their hashes, CPU timings and the time since ``start`` into the report, then to disk."""
    import onnx  # noqa: PLC0415

    out, model, int8 = run.config.out, run.config.model, {"cpu": run.path("INT8 cpu"), "trt": run.path("INT8 trt")}
    files = {"int8_cpu": int8["cpu"], "int8_trt": int8["trt"], "fp16": out / FP16, "trt_cache": out / TRT_CACHE, "ranges": out / RANGES}
    report.artifacts = {key: path.name for key, path in files.items()}
    report.quantization = {name: q.quantization_types(onnx.load(str(path))) for name, path in int8.items()}
    report.sha256 = {path.name: sha256_file(path) for path in (model, *files.values())}
    report.graphs = {path.name: graph_identity(path) for path in (model, int8["cpu"], int8["trt"], out / FP16)}
    report.tools = tool_versions()
    report.cpu_load = load_per_core()
    report.cpu_ms = cpu_inference_ms({"fp32": model, "int8": int8["cpu"], "fp16": out / FP16}, run.config.threads)
    report.cpu_advice = int8_advice(report.cpu_ms)
    report.seconds = time.perf_counter() - start
    (out / REPORT).write_text(json.dumps(asdict(report), indent=2) + "\n")
    (out / REPORT_MD).write_text(report.markdown())


def graph_identity(path: Path) -> dict[str, str]:
    """What a kit records of a graph instead of its bytes: ``structure``, the sha256 of the graph
    less doc strings and all tensor values but int64 ones (shapes, axes), and ``info``, its metadata
    digest (modelinfo.info_digest), which pins the weights (checkpoint sha256) and Q/DQ scales (ranges
    sha256). Float weights' last bits, and the INT8 values quantized from them, differ from one CPU
    or onnxsim release to another (a kit from an EPYC rebuilt on a Xeon failed CI on it)."""
    import onnx  # noqa: PLC0415

    model = load_onnx(path)
    graph = model.graph
    graph.doc_string = ""
    tensors = list(graph.initializer)
    for node in graph.node:
        node.doc_string = ""
        tensors += [a.t for a in node.attribute if a.HasField("t")] + [t for a in node.attribute for t in a.tensors]
    for tensor in tensors:
        if tensor.data_type != onnx.TensorProto.INT64:
            for name in ("raw_data", "float_data", "double_data", "int32_data", "uint64_data"):
                tensor.ClearField(name)
    structure = hashlib.sha256(graph.SerializeToString(deterministic=True)).hexdigest()
    return {"structure": structure, "info": info_digest(proto_info(model))}


def tool_versions() -> dict[str, str]:
    """The installed versions of the packages whose output a kit's graphs are."""
    found = {}
    for name in ("torch", "onnx", "onnxsim", "onnxslim", "onnxruntime"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _is_recorded(path: Path, name: str, report: dict) -> bool:
    """``path`` is the kit file ``name`` that ``report`` describes: by graph_identity for a graph the
    report records one of (a kit written before that record: by sha256), else by sha256."""
    graph = report.get("graphs", {}).get(name)
    return graph_identity(path) == graph if graph else sha256_file(path) == report["sha256"][name]


def check_kit(folder: Path) -> dict:
    """The kit's report, once every kit file present is the one it describes: a kit whose swap a
    kill interrupted (no report) or a mix of two calibrations is refused, naming the file."""
    redo = f"recalibrate: structvpr-edge calibrate ... --out {folder}"
    try:
        report = json.loads((folder / REPORT).read_text())
        present = [folder / name for name in report["sha256"] if (folder / name).is_file()]
        mixed = [path for path in present if not _is_recorded(path, path.name, report)]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{folder} is not a whole calibration kit ({exc}); {redo}") from exc
    if mixed:
        raise ModelError(f"{mixed[0]} is not the file {folder / REPORT} describes (a mix of two calibrations); {redo}")
    nodes = report.get("fp32_nodes")
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise ConfigError(f"{folder / REPORT} is damaged: 'fp32_nodes' must be the list of node names kept in FP32, got {nodes!r}; {redo}")
    return report


def _check_out(folder: Path, overwrite_shipped: bool) -> None:
    """A kit is written into a new or empty folder, or over a kit: never among a user's other files,
    and over a kit that ships with the package only when asked (README's pipeline once replaced it)."""
    if is_shipped_kit(folder) and not overwrite_shipped:
        raise ConfigError(f"{folder} is where the package's shipped kits live: write your kit elsewhere (e.g. --out kits/NAME), "
                          "or pass --overwrite-shipped to regenerate a shipped kit")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; --out names the kit's folder")
    if folder.is_dir() and any(folder.iterdir()):
        try:
            with open_regular(folder / MANIFEST, 64 << 20, ConfigError) as handle:
                is_kit = json.loads(handle.read()).get("format") == CALIBRATION_FORMAT
        except (ValueError, AttributeError):  # ConfigError is a ValueError
            is_kit = False
        if not is_kit:
            raise ConfigError(f"{folder} is not empty and holds no calibration kit: a kit is written into a new or empty folder, or over a kit")


def _swap(stage: Path, target: Path) -> None:
    """Move a written kit into ``target`` whole. A new folder is one rename; into an existing kit,
    file by file with report.json last, so a kill in between leaves files the report present does
    not describe, which check_kit (and EdgeVPR) refuse by name. Only kit file names are replaced."""
    if not target.exists():
        os.rename(stage, target)
        return
    for name in KIT_FILES:
        if (stage / name).is_file():
            os.replace(stage / name, target / name)


def calibrate(config: CalibrationConfig) -> CalibrationReport:
    """The whole workflow. Every artifact and both reports are written into a folder beside
    ``config.out`` and moved into it whole once they pass the accuracy gate, so a failure or a
    kill leaves the previous kit as it was.

    Raises ModelError when ``max_recall_drop`` is set and even keeping every sensitive group in
    FP32 does not bring the Recall@1 drop within it; that kit goes to ``OUT.rejected`` instead.
    """
    start = time.perf_counter()
    final = config.out
    _check_out(final, config.overwrite_shipped)
    dataset = load_dataset(config.val, split=config.val_split) if config.val is not None else None  # a typo costs nothing
    weights = None if config.model.suffix == ".onnx" else str(config.model)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)  # what killed runs left: a kit's worth of files each
    stage = temp_beside(final)
    stage.mkdir()
    try:
        staged = replace(config, out=stage)
        if weights is not None:  # a checkpoint or shipped name: calibrate its export, kept in the folder
            staged.model = export_fp32(weights, stage / FP32, config.trust_checkpoint)
        proto, info = _check(staged)
        paths, candidates = _select(staged, weights, _images(config))
        run = _quantize(staged, proto, info, paths)
        report = _measure(run, dataset, paths, candidates)
        _write_report(run, report, start)
        target = final if report.within_budget else final.with_name(final.name + ".rejected")
        _swap(stage, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # this run's own folder: whatever a failure left in it
    if weights is not None:
        config.model = target / FP32
    if target != final:
        last, kept = report.gate[-1], ", ".join(report.fp32_groups) or "nothing"
        failure = (f"INT8 Recall@1 drops {last.drop_pp['1']:.2f} pp (budget {config.max_recall_drop} pp, --max-recall-drop)" if dataset is not None
                   else f"INT8 descriptors keep a mean cosine of {last.cosine_mean:.4f} to FP32 on the calibration images, below "
                        f"--min-cosine {config.min_cosine} (a --val-dataset gates on Recall@1 instead)")
        raise ModelError(f"{failure} even with {kept} in FP32; {final} is unchanged, the rejected kit and its report are in {target}")
    return report

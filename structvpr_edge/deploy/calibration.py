"""The INT8 calibration workflow behind ``structvpr-edge calibrate``.

A calibration lives in one folder, ``calibration/NAME/``:

    manifest.json          the chosen images (paths + sha256): reproducible, and a changed image is caught
    ranges.json            ONNX Runtime's tensor ranges from the one calibration pass
    model.int8.cpu.onnx    QDQ, u8 asymmetric activations: ONNX Runtime on CPU
    model.int8.trt.onnx    QDQ, s8 symmetric: TensorRT 10/11 explicit quantization
    cache.trt              TensorRT calibration cache from the same ranges (TensorRT < 10)
    model.fp16.onnx        FP16 inside, FP32 inputs/outputs (TensorRT 11, ORT CUDA)
    report.json / .md      accuracy gate: descriptor cosine and Recall@1/5 against FP32

Images are chosen by greedy k-center on FP32 descriptors, so rare conditions (night, winter,
fog) are represented instead of drowned by the common daylight frames. Torch-free.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.dataset import VPRDataset, list_images, load_dataset
from ..errors import ConfigError, DatasetError, ModelError
from ..eval.evaluate import extract, read_rgb
from ..eval.models import onnx_extractor
from ..eval.recall import recall_at_n, retrieve
from ..modelinfo import ModelInfo, normalize_for, sha256_file
from . import quantize as q

MANIFEST_FORMAT = "structvpr-edge/calibration/1"
MANIFEST, RANGES, TRT_CACHE, REPORT = "manifest.json", "ranges.json", "cache.trt", "report.json"
CPU_INT8, TRT_INT8, FP16 = "model.int8.cpu.onnx", "model.int8.trt.onnx", "model.fp16.onnx"


@dataclass
class CalibrationConfig:
    model: Path  # the FP32 ONNX from `structvpr-edge export`
    images: Path  # an image folder, or a VPR dataset root (its train split is used)
    out: Path  # calibration/NAME
    num: int = 512
    method: str = "entropy"
    max_recall_drop: float | None = None  # Recall@1 percentage points INT8 may lose against FP32
    val: Path | None = None  # VPR dataset for the accuracy gate
    val_split: str = "val"
    reselect: bool = False  # choose new images even if manifest.json exists
    threads: int | None = None

    def __post_init__(self) -> None:
        self.model, self.images, self.out = Path(self.model), Path(self.images), Path(self.out)
        self.val = Path(self.val) if self.val is not None else None


def candidate_root(images: Path) -> Path:
    """A dataset root calibrates on its train split (never on test); a plain folder on itself."""
    images = Path(images)
    if (images / "images").is_dir():
        train = images / "images" / "train"
        if not train.is_dir():
            raise DatasetError(f"{images} has no train split to calibrate on; pass an image folder instead (e.g. {images}/images/<split>/database)")
        return train
    if not images.is_dir():
        raise DatasetError(f"calibration images: {images} is neither a folder nor a VPR dataset root")
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


def write_manifest(path: Path, root: Path, images: list[Path], model: Path, candidates: int) -> dict:
    manifest = {
        "format": MANIFEST_FORMAT,
        "root": str(root.resolve()),
        "model": str(model),
        "model_sha256": sha256_file(model),
        "selection": "greedy k-center on FP32 descriptors (cosine distance)",
        "candidates": candidates,
        "images": [{"path": p.relative_to(root).as_posix(), "sha256": sha256_file(p)} for p in images],
    }
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_manifest(path: Path) -> tuple[dict, list[Path]]:
    """The manifest and its image paths, every image checked against its sha256."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        root = Path(manifest["root"])
        entries = manifest["images"]
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"cannot read calibration manifest {path}: {exc}") from exc
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DatasetError(f"{path} is not a structvpr-edge calibration manifest ({MANIFEST_FORMAT})")
    paths, bad = [], []
    for entry in entries:
        image = root / entry["path"]
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
    read and resized exactly as evaluation reads them."""
    for path in paths:
        yield normalize_for(info, read_rgb(path, (info.width, info.height))[None, ..., ::-1])


def make_entropy_calibrator(trt, cache: Path, manifest: Path, info: ModelInfo):
    """A ``tensorrt.IInt8EntropyCalibrator2`` for TensorRT < 10 (the class needs tensorrt, hence
    defined in here). TensorRT reads ``cache`` first; only when the cache is missing or rejected
    does it ask for batches, which come from the manifest's hash-checked images (batch 1, device
    memory via pycuda). So a calibration folder copied to a Jetson builds without its images."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches: Iterator[np.ndarray] | None = None
            self.device = None

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.batches is None:
                self.batches = calibration_batches(load_manifest(manifest)[1], info)
            batch = next(self.batches, None)
            if batch is None:
                return None
            import pycuda.autoinit  # noqa: F401, PLC0415 - creates the CUDA context
            import pycuda.driver as cuda  # noqa: PLC0415

            batch = np.ascontiguousarray(batch)
            if self.device is None:
                self.device = cuda.mem_alloc(batch.nbytes)
            cuda.memcpy_htod(self.device, batch)
            return [int(self.device)]

        def read_calibration_cache(self) -> bytes | None:
            return q.retarget_cache(cache.read_text(), trt.__version__).encode() if cache.is_file() else None

        def write_calibration_cache(self, data) -> None:
            cache.write_bytes(bytes(data))

    return EntropyCalibrator()


@dataclass
class GateStep:
    """One quantization tried by the accuracy gate."""

    fp32_groups: list[str]
    recall_int8: dict[str, float]
    drop_pp: dict[str, float]
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
    gate: list[GateStep] = field(default_factory=list)
    fp32_groups: list[str] = field(default_factory=list)
    fp32_nodes: list[str] = field(default_factory=list)
    within_budget: bool | None = None
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
        if self.gate:
            lines += ["", f"Accuracy gate: Recall@1 drop budget {self.max_recall_drop_pp} pp.", "", "| layers kept in FP32 | R@1 drop (pp) | R@5 drop (pp) |", "| --- | --- | --- |"]
            lines += [f"| {', '.join(s.fp32_groups) or 'none'} | {s.drop_pp['1']:.2f} | {s.drop_pp['5']:.2f} |" for s in self.gate]
            verdict = "within budget" if self.within_budget else "NOT within budget"
            lines += ["", f"Result: {verdict}; kept in FP32: {', '.join(self.fp32_groups) or 'nothing'} ({len(self.fp32_nodes)} nodes)."]
        lines += ["", "Artifacts: " + ", ".join(f"`{Path(p).name}`" for p in self.artifacts.values())]
        return "\n".join(lines) + "\n"


def _cosine(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    c = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"mean": float(c.mean()), "min": float(c.min())}


def _recall(descriptors: np.ndarray, dataset: VPRDataset) -> dict[str, float]:
    db, queries = descriptors[: len(dataset.database)], descriptors[len(dataset.database) :]
    _, predictions = retrieve(db, queries, 5)
    return recall_at_n(predictions, dataset.positives, (1, 5))


def _group_nodes(groups: dict[str, list[str]], kept: list[str]) -> list[str]:
    """Node names of the ``kept`` groups, once each (the groups share some nodes)."""
    return list(dict.fromkeys(n for group in kept for n in groups[group]))


def _select(config: CalibrationConfig) -> tuple[list[Path], int]:
    """Reuse the manifest's images (hash-checked) unless asked to reselect; else k-center anew."""
    manifest_path = config.out / MANIFEST
    if manifest_path.exists() and not config.reselect:
        manifest, paths = load_manifest(manifest_path)
        if len(paths) != min(config.num, manifest["candidates"]):
            raise ConfigError(f"{manifest_path} holds {len(paths)} images but --num is {config.num}; pass --reselect to choose anew")
        return paths, manifest["candidates"]
    root = candidate_root(config.images)
    candidates = list_images(root)
    if not candidates:
        raise DatasetError(f"no images under {root}")
    descriptors = extract(onnx_extractor(config.model, threads=config.threads), candidates, desc="describe candidates")
    chosen = [candidates[i] for i in k_center(descriptors, config.num)]
    write_manifest(manifest_path, root, chosen, config.model, len(candidates))
    return chosen, len(candidates)


def _check(config: CalibrationConfig):
    """The FP32 model's proto and ModelInfo, after validating the options."""
    import onnx  # noqa: PLC0415

    if config.num <= 0:
        raise ConfigError(f"--num must be positive, got {config.num}")
    if config.method not in q.METHODS:
        raise ConfigError(f"--method must be one of {q.METHODS}, got {config.method!r}")
    if config.max_recall_drop is not None and config.val is None:
        raise ConfigError("--max-recall-drop needs a validation dataset (--val DATASET)")
    proto = onnx.load(str(config.model))
    info = ModelInfo.from_props({p.key: p.value for p in proto.metadata_props})
    if info.extra.get("precision", "fp32") != "fp32":
        raise ConfigError(f"{config.model} is already {info.extra['precision']}; calibrate the FP32 export")
    return proto, info


def calibrate(config: CalibrationConfig) -> CalibrationReport:
    """The whole workflow; writes every artifact and both reports into ``config.out``.

    Raises ModelError (after writing the reports) when ``max_recall_drop`` is set and even
    keeping every sensitive group in FP32 does not bring the Recall@1 drop within it.
    """
    import onnx  # noqa: PLC0415

    from .trt_check import check_trt_friendly  # noqa: PLC0415

    start = time.perf_counter()
    proto, info = _check(config)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    paths, candidates = _select(config)
    ranges = q.collect_ranges(config.model, calibration_batches(paths, info), config.method, total=len(paths))
    q.save_ranges(ranges, out / RANGES)
    groups = dict(q.sensitive_groups(proto))

    def write_int8(kept: list[str]) -> dict[str, Path]:
        """Both Q/DQ forms and the TensorRT cache, with the ``kept`` groups left in FP32."""
        nodes = _group_nodes(groups, kept)
        outputs = {o for n in proto.graph.node if n.name in nodes for o in n.output}
        (out / TRT_CACHE).write_text(q.trt_calibration_cache(ranges, skip_tensors=outputs))
        return {
            form.name: q.quantize(config.model, out / RANGES, out / name, form, config.method, nodes)
            for form, name in ((q.CPU_FORM, CPU_INT8), (q.TRT_FORM, TRT_INT8))
        }

    int8 = write_int8([])
    fp16 = q.convert_fp16(config.model, out / FP16)
    for graph in (int8["trt"], fp16):
        check_trt_friendly(graph)

    dataset = load_dataset(config.val, split=config.val_split) if config.val is not None else None
    eval_paths = dataset.database.paths + dataset.queries.paths if dataset is not None else paths

    def describe(model: Path, name: str) -> np.ndarray:
        return extract(onnx_extractor(model, threads=config.threads), eval_paths, desc=name)

    reference = describe(config.model, "FP32")
    outputs = {"INT8 cpu": describe(int8["cpu"], "INT8 cpu"), "INT8 trt": describe(int8["trt"], "INT8 trt"), "FP16": describe(fp16, "FP16")}
    report = CalibrationReport(
        model=str(config.model), method=config.method, images=len(paths), candidates=candidates,
        manifest_sha256=sha256_file(out / MANIFEST), artifacts={}, quantization={}, cosine={},
        cosine_on=f"{config.val}/{config.val_split}, {len(eval_paths)} images" if dataset else f"the {len(paths)} calibration images",
        max_recall_drop_pp=config.max_recall_drop,
    )
    if dataset is not None:
        report.recall_fp32 = _recall(reference, dataset)
        remaining = list(groups)
        while True:
            recall = _recall(outputs["INT8 cpu"], dataset)
            drop = {n: 100 * (report.recall_fp32[n] - recall[n]) for n in recall}
            cosine = _cosine(reference, outputs["INT8 cpu"])
            report.gate.append(GateStep(list(report.fp32_groups), recall, drop, cosine["mean"], cosine["min"]))
            if config.max_recall_drop is None or drop["1"] <= config.max_recall_drop or not remaining:
                break
            report.fp32_groups.append(remaining.pop(0))
            int8 = write_int8(report.fp32_groups)
            outputs["INT8 cpu"], outputs["INT8 trt"] = describe(int8["cpu"], "INT8 cpu"), describe(int8["trt"], "INT8 trt")
        report.recall = {name: _recall(d, dataset) for name, d in outputs.items()}
        report.within_budget = None if config.max_recall_drop is None else drop["1"] <= config.max_recall_drop
    report.fp32_nodes = _group_nodes(groups, report.fp32_groups)
    report.cosine = {name: _cosine(reference, d) for name, d in outputs.items()}
    report.artifacts = {"int8_cpu": str(int8["cpu"]), "int8_trt": str(int8["trt"]), "fp16": str(fp16), "trt_cache": str(out / TRT_CACHE), "ranges": str(out / RANGES)}
    report.quantization = {name: q.quantization_types(onnx.load(str(path))) for name, path in int8.items()}
    report.seconds = time.perf_counter() - start
    (out / REPORT).write_text(json.dumps(asdict(report), indent=2) + "\n")
    (out / "report.md").write_text(report.markdown())
    if report.within_budget is False:
        raise ModelError(
            f"INT8 Recall@1 drops {drop['1']:.2f} pp (budget {config.max_recall_drop} pp) even with "
            f"{', '.join(report.fp32_groups)} in FP32; artifacts and {out / 'report.md'} are written"
        )
    return report

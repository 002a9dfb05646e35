"""Names and formats of the files the pipeline hands from one step to the next, in one place, so
the code that writes an artifact and the code that reads it cannot drift apart. Torch-free.

- a model file: what runs it follows from its suffix (``backend_for``);
- a calibration folder ``calibration/NAME/`` (deploy/calibration.py writes it, deploy/engine.py
  reads it), its model files named by precision in ``FORMATS``;
- an engine ``NAME.engine`` and its manifest ``NAME.engine.json`` (deploy/engine.py writes them,
  runtime/tensorrt_backend.py reads them).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, ModelError
from .files import open_regular

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
# What runs a model file, by suffix; anything else is a checkpoint or a shipped model name (torch).
ENGINE_SUFFIXES = (".engine", ".plan")
BACKEND_BY_SUFFIX = {**dict.fromkeys(ENGINE_SUFFIXES, "tensorrt"), ".onnx": "onnxruntime"}
CHECKPOINT_SUFFIX = ".pt"
MODEL_SUFFIXES = (*BACKEND_BY_SUFFIX, CHECKPOINT_SUFFIX)  # a model given by path, not by shipped name

# calibration/NAME/
CALIBRATION_FORMAT = "structvpr-edge/calibration/1"
MANIFEST, RANGES, TRT_CACHE, REPORT, REPORT_MD = "manifest.json", "ranges.json", "cache.trt", "report.json", "report.md"


@dataclass(frozen=True)
class Format:
    """One precision of an exported model: the tag stamped in its metadata (``structvpr.extra``),
    its file name in a calibration folder, the backend it is made for, the command that writes it,
    those that read it, and what it is."""

    tag: str
    file: str
    backend: str
    producer: str
    consumers: tuple[str, ...]
    what: str


# precision tag -> format, one table in the manner of ultralytics' export formats: what writes,
# names and reads each precision follows from its row.
FORMATS = {f.tag: f for f in (
    Format("fp32", "model.onnx", "onnxruntime", "export", ("calibrate", "build-engine", "EdgeVPR"), "the FP32 export"),
    Format("fp16", "model.fp16.onnx", "onnxruntime", "calibrate", ("build-engine", "EdgeVPR"), "FP16 inside, FP32 inputs/outputs"),
    Format("int8-cpu", "model.int8.cpu.onnx", "onnxruntime", "calibrate", ("EdgeVPR",), "the ONNX Runtime CPU form (u8 activations)"),
    Format("int8-trt", "model.int8.trt.onnx", "tensorrt", "calibrate", ("build-engine",), "the TensorRT form (s8 Q/DQ)"),
)}
FP32, FP16, CPU_INT8, TRT_INT8 = (f.file for f in FORMATS.values())
KIT_FILES = (FP32, CPU_INT8, TRT_INT8, FP16, TRT_CACHE, RANGES, MANIFEST, REPORT_MD, REPORT)  # REPORT last: it names the others

ENGINE_FORMAT = "structvpr-edge/engine/1"

# The shipped kits: in the source tree's calibration/ (a clone, an editable install), which setup.py
# packs into the package as structvpr_edge/kits/ (a wheel). Found from this file, never from the cwd.
PACKAGE = Path(__file__).resolve().parent
KIT_ROOTS = (PACKAGE / "kits", PACKAGE.parent / "calibration")
CACHE_ENV = "STRUCTVPR_EDGE_CACHE"  # the user cache folder: thread timings, kits rebuilt from a read-only install


def backend_for(model: str | Path) -> str:
    """``tensorrt`` for an engine, ``onnxruntime`` for an ONNX file, ``torch`` for anything else."""
    return BACKEND_BY_SUFFIX.get(Path(str(model)).suffix, "torch")


def check_kit_member(model: str | Path, sha256: str, info_digest: str) -> None:
    """Refuse a model file of a calibration kit that is not the graph the kit's report.json records:
    a kit a kill left half-swapped, or a mix of two calibrations. A graph is known by its metadata
    (``modelinfo.info_digest``: weights, ranges, precision, layers kept in FP32), as a kit rebuilt
    on another machine differs in the last bits of its weights; a kit from before that record, by
    its bytes. A file outside a kit, or in a folder with no report (a kit being written), is not checked."""
    model = Path(model)
    report = model.parent / REPORT
    if model.name not in {f.file for f in FORMATS.values()} or not report.is_file():
        return
    with open_regular(report, 16 << 20, ModelError) as handle:
        try:
            recorded = json.loads(handle.read())
            graph = recorded.get("graphs", {}).get(model.name)
            same = graph["info"] == info_digest if graph else recorded.get("sha256", {}).get(model.name, sha256) == sha256
        except (ValueError, AttributeError, KeyError, TypeError) as exc:
            raise ModelError(f"{report} is damaged ({exc}); recalibrate the kit") from exc
    if not same:
        raise ModelError(f"{model} is not the file {report} describes (a mix of two calibrations, or an interrupted one); recalibrate the kit")


def cache_folder() -> Path:
    """``$STRUCTVPR_EDGE_CACHE``, else ``$XDG_CACHE_HOME/structvpr-edge`` or ``~/.cache/structvpr-edge``."""
    return Path(os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "structvpr-edge")


def shipped_kit(name: str) -> Path:
    """The calibration kit of shipped model ``name``, wherever the package is installed."""
    for root in KIT_ROOTS:
        if (root / name / MANIFEST).is_file():
            return root / name
    raise ConfigError(f"no calibration kit ships for {name!r} (looked in {' and '.join(str(r) for r in KIT_ROOTS)}): calibrate the "
                      "model with `structvpr-edge calibrate --out DIR` and pass --calibration DIR")


def is_shipped_kit(folder: str | Path) -> bool:
    """Whether ``folder`` is (or would be) one of the shipped kits."""
    return any(Path(folder).resolve().parent == root for root in KIT_ROOTS)


def engine_manifest_path(engine: str | Path) -> Path:
    """``NAME.engine.json`` beside ``NAME.engine``."""
    return Path(f"{engine}.json")

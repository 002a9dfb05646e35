"""Names and formats of the files the pipeline hands from one step to the next, in one place, so
the code that writes an artifact and the code that reads it cannot drift apart. Torch-free.

- a model file: what runs it follows from its suffix (``backend_for``);
- a calibration folder ``calibration/NAME/`` (deploy/calibration.py writes it, deploy/engine.py
  reads it);
- an engine ``NAME.engine`` and its manifest ``NAME.engine.json`` (deploy/engine.py writes them,
  runtime/tensorrt_backend.py reads them).
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ModelError
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
FP32, CPU_INT8, TRT_INT8, FP16 = "model.onnx", "model.int8.cpu.onnx", "model.int8.trt.onnx", "model.fp16.onnx"
KIT_FILES = (FP32, CPU_INT8, TRT_INT8, FP16, TRT_CACHE, RANGES, MANIFEST, REPORT_MD, REPORT)  # REPORT last: it names the others

ENGINE_FORMAT = "structvpr-edge/engine/1"


def backend_for(model: str | Path) -> str:
    """``tensorrt`` for an engine, ``onnxruntime`` for an ONNX file, ``torch`` for anything else."""
    return BACKEND_BY_SUFFIX.get(Path(str(model)).suffix, "torch")


def check_kit_member(model: str | Path, sha256: str) -> None:
    """Refuse a model file of a calibration kit that the kit's report.json records with other bytes:
    a kit a kill left half-swapped, or a mix of two calibrations. A file outside a kit, or in a
    folder with no report (a kit being written), is not checked."""
    model = Path(model)
    report = model.parent / REPORT
    if model.name not in (FP32, CPU_INT8, TRT_INT8, FP16) or not report.is_file():
        return
    with open_regular(report, 16 << 20, ModelError) as handle:
        try:
            recorded = json.loads(handle.read()).get("sha256", {}).get(model.name, sha256)
        except (ValueError, AttributeError) as exc:
            raise ModelError(f"{report} is damaged ({exc}); recalibrate the kit") from exc
    if recorded != sha256:
        raise ModelError(f"{model} is not the file {report} describes (a mix of two calibrations, or an interrupted one); recalibrate the kit")


def engine_manifest_path(engine: str | Path) -> Path:
    """``NAME.engine.json`` beside ``NAME.engine``."""
    return Path(f"{engine}.json")

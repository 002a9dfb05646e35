"""Inference backends behind one small interface: ``info``, ``infer(batch)``, ``close()``.

- ``onnxruntime``: any CPU (and the CUDA / TensorRT execution providers where present).
- ``tensorrt``: a built engine on an NVIDIA GPU (Jetson): see tensorrt_backend.py.
- ``torch``: the reference, straight from a checkpoint (needs torch).
Only the torch backend imports torch, and only when it is chosen.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import BackendError, ConfigError
from ..modelinfo import ModelInfo

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")


class Backend(Protocol):
    info: ModelInfo
    max_batch: int

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


class OnnxRuntimeBackend:
    def __init__(self, path: str | Path, threads: int | None = None, max_batch: int = 1) -> None:
        from .ort_session import create_session  # noqa: PLC0415

        self.session = create_session(path, threads=threads)
        self.info = ModelInfo.from_props(self.session.get_modelmeta().custom_metadata_map)
        declared = self.session.get_inputs()[0].shape[0]
        self.max_batch = declared if isinstance(declared, int) else max_batch

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.info.output_name], {self.info.input_name: batch})[0]

    def close(self) -> None:
        self.session = None


class TorchBackend:
    """Reference backend: float input, eager PyTorch on the CPU (or CUDA when available)."""

    def __init__(self, checkpoint: str | Path, threads: int | None = None, max_batch: int = 1) -> None:
        try:
            import torch  # noqa: PLC0415
        except ImportError as exc:
            raise BackendError("the torch backend needs torch (pip install structvpr-edge[train])") from exc
        from ..deploy.export import model_info, sha256_file  # noqa: PLC0415
        from ..models.checkpoint import load_checkpoint, resolve_checkpoint  # noqa: PLC0415

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.model, meta = load_checkpoint(checkpoint)
        width, height = meta["input"]["size"]
        self.info = model_info(meta, width, height, uint8_input=False, checkpoint_sha=sha256_file(resolve_checkpoint(checkpoint)))
        self.max_batch = max_batch

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(batch)).numpy()

    def close(self) -> None:
        self.model = None


def open_backend(model: str | Path, backend: str = "auto", threads: int | None = None, max_batch: int = 1) -> Backend:
    """Pick and open a backend for ``model`` (engine, ONNX file, checkpoint or shipped name).

    ``auto``: an engine runs on TensorRT; an ONNX file on ONNX Runtime (whose CUDA/TensorRT
    providers take the GPU when present); a checkpoint on torch.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    suffix = Path(str(model)).suffix
    if backend == "auto":
        backend = {".engine": "tensorrt", ".plan": "tensorrt", ".onnx": "onnxruntime"}.get(suffix, "torch")
    if backend == "tensorrt":
        if suffix not in (".engine", ".plan"):
            raise ConfigError(f"the tensorrt backend runs a built engine (.engine), got {model}; build one with structvpr-edge build-engine")
        from .tensorrt_backend import TensorRTBackend  # noqa: PLC0415

        return TensorRTBackend(model, max_batch=max_batch)
    if backend == "onnxruntime":
        if suffix != ".onnx":
            raise ConfigError(f"the onnxruntime backend runs an .onnx file, got {model}; export one with structvpr-edge export")
        return OnnxRuntimeBackend(model, threads=threads, max_batch=max_batch)
    return TorchBackend(model, threads=threads, max_batch=max_batch)

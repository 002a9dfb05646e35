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

from ..artifacts import BACKENDS, ENGINE_SUFFIXES, backend_for
from ..errors import BackendError, ConfigError
from ..modelinfo import ModelInfo, model_info


class Backend(Protocol):
    info: ModelInfo
    max_batch: int

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


class OnnxRuntimeBackend:
    def __init__(self, path: str | Path, threads: int | str | None = "auto", max_batch: int = 1) -> None:
        from .ort_session import OrtSession  # noqa: PLC0415

        self.ort = OrtSession(path, threads=threads)
        session = self.ort.session
        self.info = ModelInfo.from_props(session.get_modelmeta().custom_metadata_map)
        dtypes = {"tensor(uint8)": "uint8", "tensor(float)": "float32"}
        self.info.check_io([(i.name, dtypes.get(i.type, i.type), i.shape) for i in session.get_inputs()],
                           [(o.name, o.shape) for o in session.get_outputs()])
        declared = session.get_inputs()[0].shape[0]
        self.max_batch = declared if isinstance(declared, int) else max_batch

    @property
    def threading(self) -> dict | None:
        """The CPU threading in use and how it was chosen (None on a GPU provider)."""
        return self.ort.threading.to_json() if self.ort.threading is not None else None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.ort.session.run([self.info.output_name], {self.info.input_name: batch})[0]

    def close(self) -> None:
        self.ort.close()


class TorchBackend:
    """Reference backend: float input, eager PyTorch on the CPU (or CUDA when available).
    ``trust_checkpoint``: also open a checkpoint that needs code to load (models/checkpoint.py)."""

    def __init__(self, checkpoint: str | Path, threads: int | str | None = "auto", max_batch: int = 1, trust_checkpoint: bool = False) -> None:
        try:
            import torch  # noqa: PLC0415
        except ImportError as exc:
            raise BackendError("the torch backend needs torch (pip install structvpr-edge[train])") from exc
        from ..models.checkpoint import load_checkpoint, weights_fingerprint  # noqa: PLC0415 - the declared lazy torch backend

        from .ort_session import AUTO, parse_threads  # noqa: PLC0415

        threads = parse_threads(threads)
        if isinstance(threads, int):  # else AUTO: torch's own default, every core
            torch.set_num_threads(threads)
        self.threading = {"threads": torch.get_num_threads(), "source": "explicit" if threads != AUTO else "torch default"}
        self.torch = torch
        self.model, meta = load_checkpoint(checkpoint, trust_checkpoint)
        width, height = meta["input"]["size"]
        self.info = model_info(meta, width, height, False, weights_fingerprint(self.model))
        self.max_batch = max_batch

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(batch)).numpy()

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]  # released: a closed backend infers no more


def open_backend(model: str | Path, backend: str = "auto", threads: int | str | None = "auto", max_batch: int = 1,
                 trust_checkpoint: bool = False) -> Backend:
    """Open a backend for ``model`` (engine, ONNX file, checkpoint or shipped name); ``auto`` picks
    it by the model's suffix (artifacts.backend_for). ONNX Runtime's CUDA/TensorRT providers take
    the GPU when present; ``threads`` "auto" is measured for it (ort_session.py)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    backend = backend_for(model) if backend == "auto" else backend
    if backend != "torch" and backend_for(model) != backend:
        made_by = {"tensorrt": f"a built engine ({' or '.join(ENGINE_SUFFIXES)}); build one with structvpr-edge build-engine",
                   "onnxruntime": "an .onnx file; export one with structvpr-edge export"}[backend]
        raise ConfigError(f"the {backend} backend runs {made_by}, got {model}")
    if backend == "tensorrt":
        from .tensorrt_backend import TensorRTBackend  # noqa: PLC0415

        return TensorRTBackend(model, max_batch=max_batch)
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(model, threads=threads, max_batch=max_batch)
    return TorchBackend(model, threads=threads, max_batch=max_batch, trust_checkpoint=trust_checkpoint)

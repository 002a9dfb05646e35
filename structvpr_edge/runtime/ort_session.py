"""ONNX Runtime sessions for exported models, torch-free.

Graph optimisations are always on (they fuse Conv+Clip and the QDQ pairs of the INT8 forms
into integer kernels), the thread count is explicit because the vehicle computer shares its
cores, and the fastest execution provider present comes first: TensorRT, then CUDA, then CPU.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import BackendError, ModelError

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def pick_providers(available: list[str]) -> list[str]:
    """The available providers in preference order; CPU is always last and always there."""
    chosen = [p for p in PROVIDER_PREFERENCE if p in available]
    return chosen if "CPUExecutionProvider" in chosen else [*chosen, "CPUExecutionProvider"]


def create_session(path: str | Path, threads: int | None = None, providers: list[str] | None = None):
    """An ``onnxruntime.InferenceSession`` with ORT_ENABLE_ALL; ``threads`` None lets ORT use every core."""
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError as exc:
        raise BackendError("onnxruntime is not installed: pip install 'structvpr-edge[onnx]'") from exc
    if not Path(path).is_file():
        raise ModelError(f"ONNX model {path} not found")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: QDQ graphs make the optimizer warn about every folded constant
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=providers or pick_providers(ort.get_available_providers()))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"ONNX Runtime cannot load {path}: {exc}") from exc

"""What the installed TensorRT Python API offers, found by attribute presence, never by version string.

The three API generations this SDK builds engines with:

- 8.6 (JetPack 6.0): networks are implicit-batch unless created with EXPLICIT_BATCH; precision
  comes from builder flags (FP16, INT8) and INT8 from a calibrator (IInt8EntropyCalibrator2).
- 10.x (JetPack 6.1/6.2, JetPack 7): always explicit batch (the binding API is gone); builder
  flags and calibrators still exist (deprecated), and NetworkDefinitionCreationFlag.STRONGLY_TYPED
  opts into taking precision from the graph (FP16 graph, Q/DQ graph).
- 11.x: strongly typed always; no precision builder flags and no calibrators: FP16 and INT8
  come only from the FP16 and Q/DQ graphs.

All three share build_serialized_network, set_memory_pool_limit, the timing cache and the
name-based tensor API (num_io_tensors, get_tensor_name, set_tensor_address, execute_async_v3).
Torch-free; tensorrt itself is imported only by :func:`import_tensorrt`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import BackendError


@dataclass(frozen=True)
class TrtApi:
    version: str  # for messages and manifests only; no decision reads it
    precision_flags: bool  # BuilderFlag.FP16 and BuilderFlag.INT8 (8.6, 10.x)
    calibrators: bool  # IInt8EntropyCalibrator2 and IBuilderConfig.int8_calibrator (8.6, 10.x)
    explicit_batch_flag: bool  # 8.x: the binding API is there, so networks need EXPLICIT_BATCH
    strongly_typed_flag: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED (10.x opt-in; ignored on 11)
    serialized_build: bool  # Builder.build_serialized_network
    named_tensors: bool  # num_io_tensors / get_tensor_name / set_tensor_address / set_input_shape / execute_async_v3
    memory_pool_limit: bool  # IBuilderConfig.set_memory_pool_limit
    timing_cache: bool  # IBuilderConfig.create_timing_cache / set_timing_cache / get_timing_cache
    calibration_profile: bool  # IBuilderConfig.set_calibration_profile (dynamic shapes + calibrator)

    @property
    def strongly_typed_only(self) -> bool:
        """11.x: every network is strongly typed and precision comes from the graph alone."""
        return not self.precision_flags

    @property
    def opt_in_strong_typing(self) -> bool:
        """10.x: strong typing exists but must be asked for when building from an FP16 or Q/DQ graph."""
        return self.strongly_typed_flag and self.precision_flags


def _has(owner, *names: str) -> bool:
    return owner is not None and all(hasattr(owner, name) for name in names)


def detect(trt) -> TrtApi:
    """Feature-detect the API of the ``tensorrt`` module (or a stand-in with the same attributes)."""
    config = getattr(trt, "IBuilderConfig", None)
    return TrtApi(
        version=str(getattr(trt, "__version__", "unknown")),
        precision_flags=_has(trt.BuilderFlag, "FP16", "INT8"),
        calibrators=_has(trt, "IInt8EntropyCalibrator2") and _has(config, "int8_calibrator"),
        explicit_batch_flag=_has(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and _has(getattr(trt, "ICudaEngine", None), "num_bindings"),
        strongly_typed_flag=_has(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"),
        serialized_build=_has(getattr(trt, "Builder", None), "build_serialized_network"),
        named_tensors=_has(getattr(trt, "ICudaEngine", None), "num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_shape")
        and _has(getattr(trt, "IExecutionContext", None), "set_tensor_address", "set_input_shape", "execute_async_v3"),
        memory_pool_limit=_has(config, "set_memory_pool_limit"),
        timing_cache=_has(config, "create_timing_cache", "set_timing_cache", "get_timing_cache"),
        calibration_profile=_has(config, "set_calibration_profile"),
    )


def require(api: TrtApi, *features: str) -> None:
    """BackendError unless every named feature is present (this SDK needs TensorRT >= 8.6)."""
    missing = [name for name in features if not getattr(api, name)]
    if missing:
        raise BackendError(f"TensorRT {api.version} lacks {', '.join(missing)}; structvpr-edge needs TensorRT 8.6 or newer")


def import_tensorrt():
    """The tensorrt module, or a BackendError that says where it comes from."""
    missing = BackendError(
        "TensorRT is not installed: it comes with JetPack on Jetson, and from NVIDIA's package index on x86 "
        "(pip install tensorrt); ONNX Runtime runs the .onnx artifacts without it"
    )
    try:
        import tensorrt  # noqa: PLC0415
    except ImportError as exc:
        raise missing from exc
    if not hasattr(tensorrt, "Builder"):  # an empty namespace package: tensorrt-stubs' .pyi files alone
        raise missing
    return tensorrt

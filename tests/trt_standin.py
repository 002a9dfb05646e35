"""A RECORDING STAND-IN for the ``tensorrt`` Python module. It is NOT TensorRT and builds nothing.

TensorRT cannot be installed on the machines that run these tests, so the version gating of
:mod:`structvpr_edge.deploy.engine` is tested against this: three variants with the attribute
sets of the TensorRT 8.6, 10.13 and 11.4 Python APIs, for the parts this SDK touches, each
recording the builder calls made on it in ``module.calls``. It cannot invent API:
tests/test_trt_api.py checks every name it defines against the names NVIDIA's own binding
wheels of that version hold (tests/data/api/, from benchmarks/trt_api_names.py).

- 8.6: binding API (``ICudaEngine.num_bindings``), EXPLICIT_BATCH, FP16/INT8 flags, calibrators.
- 10.x: no binding API, EXPLICIT_BATCH (deprecated, ignored), STRONGLY_TYPED, flags and calibrators
  (deprecated); like TensorRT, refuses precision flags on a strongly typed network.
- 11.x: STRONGLY_TYPED only (ignored), no FP16/INT8 flags, no calibrators.
"""
from __future__ import annotations

import enum
import types

VERSIONS = {"8.6": "8.6.1", "10": "10.13.0.35", "11": "11.4.0.106"}


def make_tensorrt(variant: str) -> types.ModuleType:  # noqa: C901 - the branches are its nested stand-in classes', one module per call
    """A fresh stand-in module for ``variant`` in {"8.6", "10", "11"}."""
    trt = types.ModuleType(f"tensorrt_standin_{variant}")
    trt.__version__ = VERSIONS[variant]
    trt.calls = calls = []
    legacy, strong_only = variant == "8.6", variant == "11"

    trt.BuilderFlag = enum.IntEnum("BuilderFlag", ["GPU_FALLBACK", "TF32"] + ([] if strong_only else ["FP16", "INT8"]))
    creation = ["EXPLICIT_BATCH"] * (not strong_only) + ["STRONGLY_TYPED"] * (not legacy)
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {name: i for i, name in enumerate(creation)})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", ["WORKSPACE"])
    trt.DeviceType = enum.IntEnum("DeviceType", ["GPU", "DLA"])
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", ["INPUT", "OUTPUT"])

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            self.severity = severity

    class Dims(tuple):
        pass

    class ITensor:
        def __init__(self, name: str, shape: tuple) -> None:
            self.name, self.shape = name, shape

    class INetworkDefinition:
        def __init__(self, flag_names: list[str]) -> None:
            self.flag_names, self.inputs = flag_names, []

        def get_input(self, index: int) -> ITensor:
            return self.inputs[index]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
            self.network = network

        def parse(self, data: bytes) -> bool:
            import onnx

            model = onnx.load_from_string(data)
            props = {p.key: p.value for p in model.metadata_props}
            calls.append(("parse", props.get("structvpr.extra", "{}")))
            first = model.graph.input[0]
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in first.type.tensor_type.shape.dim)
            self.network.inputs.append(ITensor(first.name, dims))
            return True

    class IOptimizationProfile:
        def set_shape(self, name: str, low, opt, high) -> None:
            calls.append(("set_shape", name, tuple(low), tuple(opt), tuple(high)))

    class ITimingCache:
        def serialize(self) -> bytes:
            return b"stand-in timing cache"

    class IBuilderConfig:
        def __init__(self, network: INetworkDefinition | None = None) -> None:
            object.__setattr__(self, "network", network)

        def __setattr__(self, name: str, value) -> None:
            calls.append(("config." + name, value))
            object.__setattr__(self, name, value)

        def set_memory_pool_limit(self, pool, size: int) -> None:
            calls.append(("set_memory_pool_limit", pool.name, size))

        def set_flag(self, flag) -> None:
            calls.append(("set_flag", flag.name))

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            calls.append(("add_optimization_profile",))
            return 0

        def create_timing_cache(self, blob: bytes) -> ITimingCache:
            calls.append(("create_timing_cache", bytes(blob)))
            return ITimingCache()

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            calls.append(("set_timing_cache", ignore_mismatch))
            return True

        def get_timing_cache(self) -> ITimingCache:
            return ITimingCache()

    if not strong_only:
        IBuilderConfig.int8_calibrator = None

        def set_calibration_profile(self, profile: IOptimizationProfile) -> None:
            calls.append(("set_calibration_profile",))

        IBuilderConfig.set_calibration_profile = set_calibration_profile

        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                calls.append(("IInt8EntropyCalibrator2.__init__",))

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> INetworkDefinition:
            names = [m.name for m in trt.NetworkDefinitionCreationFlag if flags & (1 << int(m))]
            calls.append(("create_network", tuple(names)))
            self.network = INetworkDefinition(names)
            return self.network

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig(self.network)

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes:
            flags = {c[1] for c in calls if c[0] == "set_flag"}
            if "STRONGLY_TYPED" in network.flag_names and flags & {"FP16", "INT8"}:
                raise RuntimeError("stand-in: precision flags are not allowed on a strongly typed network")
            calls.append(("build_serialized_network",))
            return b"stand-in serialized plan"

    class ICudaEngine:
        num_io_tensors = 2

        def get_tensor_name(self, index: int) -> str: ...

        def get_tensor_mode(self, name: str): ...

        def get_tensor_shape(self, name: str): ...

    if legacy:
        ICudaEngine.num_bindings = 2

    class IExecutionContext:
        def set_tensor_address(self, name: str, address: int) -> None: ...

        def set_input_shape(self, name: str, shape) -> bool: ...

        def execute_async_v3(self, stream: int) -> bool: ...

    for cls in (Dims, Logger, OnnxParser, IBuilderConfig, Builder, ICudaEngine, IExecutionContext):
        setattr(trt, cls.__name__, cls)
    return trt

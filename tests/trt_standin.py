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

Its ``Runtime`` deserializes the plans ``plan()`` writes (JSON naming the engine's I/O and batch
range; anything else is refused, as TensorRT refuses garbage) into engines that run on host memory
at the addresses tests/cuda_standin.py allocates: each descriptor row is its frame's mean.
"""
from __future__ import annotations

import ctypes
import enum
import json
import types

import numpy as np

VERSIONS = {"8.6": "8.6.1", "10": "10.13.0.35", "11": "11.4.0.106"}
NPTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "UINT8": np.uint8}


def plan(frame: tuple[int, ...], dim: int, batch: tuple[int, int] = (1, 8), in_dtype: str = "UINT8", out_dtype: str = "FLOAT",
         outputs: tuple[str, ...] = ("descriptor",)) -> bytes:
    """A plan the stand-in Runtime deserializes: input ``images`` of ``frame`` per batch item
    (``in_dtype``), ``outputs`` of ``dim`` values (``out_dtype``) each, a dynamic batch in ``batch``."""
    io = [["images", "INPUT", in_dtype, [-1, *frame]]] + [[name, "OUTPUT", out_dtype, [-1, dim]] for name in outputs]
    return json.dumps({"io": io, "batch": list(batch)}).encode()


def _at(address: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The array of ``shape`` at host ``address`` (the cuda stand-in's device memory is host memory)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_char * nbytes).from_address(address), dtype).reshape(shape)


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
    trt.DataType = enum.IntEnum("DataType", list(NPTYPES))
    trt.nptype = lambda data_type: NPTYPES[data_type.name]

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
        def __init__(self, spec: dict) -> None:
            self.io = {name: (mode, dtype, tuple(shape)) for name, mode, dtype, shape in spec["io"]}
            self.batch = spec["batch"]

        @property
        def num_io_tensors(self) -> int:
            return len(self.io)

        def get_tensor_name(self, index: int) -> str:
            return list(self.io)[index]

        def get_tensor_mode(self, name: str):
            return trt.TensorIOMode[self.io[name][0]]

        def get_tensor_dtype(self, name: str):
            return trt.DataType[self.io[name][1]]

        def get_tensor_shape(self, name: str) -> Dims:
            return Dims(self.io[name][2])

        def create_execution_context(self) -> IExecutionContext:
            return IExecutionContext(self)

    if legacy:
        ICudaEngine.num_bindings = property(lambda self: len(self.io))

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine) -> None:
            self.engine, self.addresses, self.shape = engine, {}, None

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = address
            return True

        def set_input_shape(self, name: str, shape) -> bool:
            """Refused (False, the shape unset) outside the engine's batch range or frame shape, as TensorRT does."""
            frame = self.engine.io[name][2][1:]
            ok = self.engine.batch[0] <= shape[0] <= self.engine.batch[1] and tuple(shape[1:]) == frame
            calls.append(("set_input_shape", tuple(shape), ok))
            self.shape = tuple(shape) if ok else None
            return ok

        def execute_async_v3(self, stream: int) -> bool:
            """Every output row is the mean of its input frame; False until an input shape is set."""
            if self.shape is None:
                return False
            (name, (_, dtype, _)), *outputs = self.engine.io.items()
            means = _at(self.addresses[name], NPTYPES[dtype], self.shape).reshape(self.shape[0], -1).mean(axis=1)
            for output, (_, out_dtype, shape) in outputs:
                _at(self.addresses[output], NPTYPES[out_dtype], (self.shape[0], shape[1]))[:] = means[:, None]
            return True

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, blob: bytes) -> ICudaEngine | None:
            try:
                return ICudaEngine(json.loads(blob))
            except ValueError:  # not a plan(): TensorRT logs and returns None
                return None

    for cls in (Dims, Logger, OnnxParser, IBuilderConfig, Builder, ICudaEngine, IExecutionContext, Runtime):
        setattr(trt, cls.__name__, cls)
    return trt

"""TensorRT backend: a built engine on an NVIDIA GPU (Jetson or x86), torch-free.

Everything is allocated once: page-locked host buffers, device buffers, one CUDA stream and the
execution context; each frame is one host-to-device copy, one ``execute_async_v3`` (or the
replay of a captured CUDA graph) and one device-to-host copy. The name-based tensor API is the
same on TensorRT 8.6, 10.x and 11.x.

CUDA context: pycuda's *primary* context of the device (never ``pycuda.autoinit``), pushed
around each call and popped after, so other CUDA users of the process (FAISS GPU, a camera
driver, another thread's EdgeVPR) share it. Thread safety: one backend per thread; the buffers
and the stream of an instance must not be used by two threads at once.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BackendError
from ..modelinfo import ModelInfo
from ..trt_compat import detect, import_tensorrt, require

MANIFEST_FORMAT = "structvpr-edge/engine/1"


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7"
    cuda_version: str  # CUDA version pycuda was built against
    driver_version: int


def import_pycuda():
    try:
        import pycuda.driver as cuda  # noqa: PLC0415
    except ImportError as exc:
        raise BackendError("pycuda is needed for TensorRT engines: pip install 'structvpr-edge[gpu]'") from exc
    cuda.init()
    return cuda


def gpu_info(device_index: int = 0) -> GpuInfo:
    cuda = import_pycuda()
    device = cuda.Device(device_index)
    major, minor = device.compute_capability()
    return GpuInfo(device.name(), f"{major}.{minor}", ".".join(map(str, cuda.get_version())), cuda.get_driver_version())


def manifest_path(engine: Path) -> Path:
    return Path(f"{engine}.json")


def load_engine_manifest(path: str | Path) -> dict:
    """The manifest of ``NAME.engine`` (pass the engine or the manifest itself)."""
    path = Path(path)
    path = path if path.suffix == ".json" else manifest_path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BackendError(f"cannot read engine manifest {path}: {exc}; rebuild the engine with `structvpr-edge build-engine`") from exc
    missing = {"format", "tensorrt_version", "gpu_name", "compute_capability", "command", "model_info"} - set(manifest)
    if manifest.get("format") != MANIFEST_FORMAT or missing:
        raise BackendError(f"{path} is not a structvpr-edge engine manifest (missing {sorted(missing)}); rebuild the engine")
    return manifest


def check_engine_compatible(manifest: dict, running_trt_version: str, gpu_name: str, compute_capability: str) -> None:
    """BackendError unless the engine was built for this exact TensorRT version and GPU."""
    mismatches = [
        f"{what}: built with {built}, running {running}"
        for what, built, running in (
            ("TensorRT", manifest["tensorrt_version"], running_trt_version),
            ("GPU", manifest["gpu_name"], gpu_name),
            ("compute capability", manifest["compute_capability"], compute_capability),
        )
        if str(built) != str(running)
    ]
    if mismatches:
        raise BackendError(
            f"engine {manifest.get('engine', '?')} does not match this machine ({'; '.join(mismatches)}). "
            f"TensorRT engines are tied to one TensorRT version and GPU; rebuild it here with:\n  {manifest['command']}"
        )




def _cudart():
    """cuda-python's runtime bindings for CUDA-graph capture, or None where not installed."""
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return __import__(module, fromlist=["cudaGraphLaunch"])
        except ImportError:
            continue
    return None


class TensorRTBackend:
    def __init__(self, engine: str | Path, max_batch: int = 1, cuda_graph: bool = False, device_index: int = 0) -> None:
        trt = import_tensorrt()
        require(detect(trt), "named_tensors")
        cuda = import_pycuda()
        manifest = load_engine_manifest(engine)
        gpu = gpu_info(device_index)
        check_engine_compatible(manifest, trt.__version__, gpu.name, gpu.compute_capability)
        self.cuda = cuda
        self.cuda_context = cuda.Device(device_index).retain_primary_context()
        self.info = ModelInfo.from_props(manifest["model_info"])
        with self.active():
            self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(engine).read_bytes())
            if self.engine is None:
                raise BackendError(f"TensorRT could not deserialize {engine}; rebuild it with:\n  {manifest['command']}")
            self.context = self.engine.create_execution_context()
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
            self.output = next(n for n in names if n != self.input)
            self.max_batch = max(1, min(max_batch, manifest["profile"]["max"][0]))
            in_shape = (self.max_batch, *manifest["profile"]["max"][1:])
            out_dim = self.info.layout.dim
            self.host_in = cuda.pagelocked_empty(in_shape, np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input))))
            self.host_out = cuda.pagelocked_empty((self.max_batch, out_dim), np.float32)
            self.device_in = cuda.mem_alloc(self.host_in.nbytes)
            self.device_out = cuda.mem_alloc(self.host_out.nbytes)
            self.context.set_tensor_address(self.input, int(self.device_in))
            self.context.set_tensor_address(self.output, int(self.device_out))
            self.stream = cuda.Stream()
        self.cudart = _cudart() if cuda_graph else None
        if cuda_graph and self.cudart is None:
            raise BackendError("CUDA-graph replay needs cuda-python (pip install cuda-python)")
        self.graphs: dict[int, object] = {}  # batch size -> instantiated graph

    @contextmanager
    def active(self):
        self.cuda_context.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def _graph(self, batch: int):
        """Capture one inference of this batch size as a CUDA graph (shapes are fixed inside it)."""
        if batch not in self.graphs:
            rt, handle = self.cudart, self.stream.handle
            self.context.execute_async_v3(handle)  # TensorRT recommends one run before capture
            rt.cudaStreamBeginCapture(handle, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
            self.context.execute_async_v3(handle)
            _, graph = rt.cudaStreamEndCapture(handle)
            _, self.graphs[batch] = rt.cudaGraphInstantiate(graph, 0)
        return self.graphs[batch]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n > self.max_batch:
            raise BackendError(f"batch of {n} exceeds this engine runtime's {self.max_batch}")
        with self.active():
            self.host_in[:n] = batch
            self.context.set_input_shape(self.input, (n, *self.host_in.shape[1:]))
            self.cuda.memcpy_htod_async(self.device_in, self.host_in, self.stream)
            if self.cudart is not None:
                self.cudart.cudaGraphLaunch(self._graph(n), self.stream.handle)
            elif not self.context.execute_async_v3(self.stream.handle):
                raise BackendError("TensorRT execution failed")
            self.cuda.memcpy_dtoh_async(self.host_out, self.device_out, self.stream)
            self.stream.synchronize()
        return self.host_out[:n].copy()

    def close(self) -> None:
        """Free the device buffers and release the primary context."""
        if getattr(self, "context", None) is None:
            return
        with self.active():
            self.device_in.free()
            self.device_out.free()
            self.graphs.clear()
            self.context = self.engine = None
        self.cuda_context.detach()

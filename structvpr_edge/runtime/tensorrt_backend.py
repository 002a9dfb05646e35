"""TensorRT backend: a built engine on an NVIDIA GPU (Jetson or x86), torch-free.

Everything is allocated once: page-locked host buffers, device buffers, one CUDA stream and the
execution context; each frame is one host-to-device copy, one ``execute_async_v3`` and one
device-to-host copy. The name-based tensor API is the
same on TensorRT 8.6, 10.x and 11.x.

CUDA context: pycuda's *primary* context of the device (never ``pycuda.autoinit``), pushed
around each call and popped after, so other CUDA users of the process (FAISS GPU, a camera
driver, another thread's EdgeVPR) share it. Thread safety: one backend per thread; the buffers
and the stream of an instance must not be used by two threads at once.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..artifacts import ENGINE_FORMAT, engine_manifest_path
from ..errors import BackendError
from ..modelinfo import ModelInfo
from ..trt_compat import detect, import_tensorrt, require

if TYPE_CHECKING:  # mypy checks the TensorRT calls against tensorrt-stubs (tests/test_trt_api.py)
    import tensorrt


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7"
    cuda_version: str  # CUDA version pycuda was built against
    driver_version: int


def _pycuda_import_error(exc: ImportError) -> BackendError:
    """What a failed ``import pycuda.driver`` means: pycuda not installed, the CUDA driver library
    (libcuda.so, from the NVIDIA driver or JetPack) absent, so that pycuda's own extension cannot
    load, or a pycuda built for another CUDA."""
    if isinstance(exc, ModuleNotFoundError) and exc.name == "pycuda":
        return BackendError("pycuda is needed for TensorRT engines: pip install 'structvpr-edge[gpu]'")
    if "libcuda" in str(exc):
        return BackendError(f"the CUDA driver library is missing ({exc}): TensorRT engines need an NVIDIA GPU and its driver "
                            "(JetPack on a Jetson); ONNX Runtime runs the .onnx artifacts without them")
    return BackendError(f"pycuda is installed but cannot be imported ({exc}): reinstall it against this machine's CUDA "
                        "(pip install --force-reinstall --no-cache-dir pycuda)")


def import_pycuda() -> Any:
    """pycuda.driver with CUDA initialised, or a BackendError that says what is missing."""
    try:
        import pycuda.driver as cuda  # noqa: PLC0415
    except ImportError as exc:
        raise _pycuda_import_error(exc) from exc
    try:
        cuda.init()
    except cuda.Error as exc:  # pycuda._driver.Error: the base of its RuntimeError, LogicError and MemoryError
        raise BackendError(f"no CUDA device: {exc}; TensorRT engines need an NVIDIA GPU visible to this process "
                           "(check nvidia-smi, or tegrastats on a Jetson)") from exc
    return cuda


def gpu_info(device_index: int = 0) -> GpuInfo:
    cuda = import_pycuda()
    device = cuda.Device(device_index)
    major, minor = device.compute_capability()
    return GpuInfo(device.name(), f"{major}.{minor}", ".".join(map(str, cuda.get_version())), cuda.get_driver_version())


class PrimaryContext:
    """The device's primary CUDA context, retained once and made current around each use.

    The CUDA runtime, and so TensorRT, works in the primary context: device memory pycuda
    allocates for TensorRT must live there too (``pycuda.autoinit`` would create a second
    context whose pointers TensorRT cannot use), and sharing it leaves other CUDA users of the
    process undisturbed.
    """

    def __init__(self, device_index: int = 0) -> None:
        self.cuda = import_pycuda()
        self.context = self.cuda.Device(device_index).retain_primary_context()

    @contextmanager
    def active(self) -> Iterator[Any]:
        """The context current on this thread for the block; yields pycuda.driver."""
        self.context.push()
        try:
            yield self.cuda
        finally:
            self.cuda.Context.pop()

    def release(self) -> None:
        self.context.detach()


def load_engine_manifest(path: str | Path) -> dict:
    """The manifest of ``NAME.engine`` (pass the engine or the manifest itself)."""
    path = Path(path)
    path = path if path.suffix == ".json" else engine_manifest_path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BackendError(f"cannot read engine manifest {path}: {exc}; rebuild the engine with `structvpr-edge build-engine`") from exc
    missing = {"format", "tensorrt_version", "gpu_name", "compute_capability", "command", "model_info", "precision", "profile"} - set(manifest)
    if manifest.get("format") != ENGINE_FORMAT or missing:
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


def read_engine(engine: str | Path, manifest: dict) -> bytes:
    """The engine's bytes, only if they are the ones its manifest records: a swapped or altered
    file never reaches TensorRT's deserializer."""
    blob = Path(engine).read_bytes()
    if hashlib.sha256(blob).hexdigest() != manifest.get("engine_sha256"):
        raise BackendError(f"{engine} is not the engine its manifest records (sha256 differs), so it was not loaded; rebuild it with:\n  {manifest['command']}")
    return blob


class TensorRTBackend:
    def __init__(self, engine: str | Path, max_batch: int = 1, device_index: int = 0) -> None:
        trt = import_tensorrt()
        require(detect(trt), "named_tensors")
        manifest = load_engine_manifest(engine)
        blob = read_engine(engine, manifest)
        gpu = gpu_info(device_index)
        check_engine_compatible(manifest, trt.__version__, gpu.name, gpu.compute_capability)
        self.info = ModelInfo.from_props(manifest["model_info"])
        self.max_batch = max(1, min(max_batch, manifest["profile"]["max"][0]))
        self.engine: tensorrt.ICudaEngine | None = None
        self.context: tensorrt.IExecutionContext | None = None
        self.device_in: Any = None  # pycuda DeviceAllocations, freed by close()
        self.device_out: Any = None
        primary = PrimaryContext(device_index)
        self.primary: PrimaryContext | None = primary
        try:  # from here on the primary context is retained: a failed open releases it (and any buffers) again
            self._load(primary, trt, blob, manifest, engine)
        except BaseException:
            self.close()
            raise

    def _load(self, primary: PrimaryContext, trt: Any, blob: bytes, manifest: dict, engine: str | Path) -> None:
        """Deserialize the engine and allocate its context, buffers and stream in the primary context."""
        with primary.active() as cuda:
            self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(blob)
            if self.engine is None:
                raise BackendError(f"TensorRT could not deserialize {engine}; rebuild it with:\n  {manifest['command']}")
            self.context = self.engine.create_execution_context()
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
            self.output = next(n for n in names if n != self.input)
            in_shape = (self.max_batch, *manifest["profile"]["max"][1:])
            out_dim = self.info.layout.dim
            self.host_in = cuda.pagelocked_empty(in_shape, np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input))))
            self.host_out = cuda.pagelocked_empty((self.max_batch, out_dim), np.float32)
            self.device_in = cuda.mem_alloc(self.host_in.nbytes)
            self.device_out = cuda.mem_alloc(self.host_out.nbytes)
            self.context.set_tensor_address(self.input, int(self.device_in))
            self.context.set_tensor_address(self.output, int(self.device_out))
            self.stream = cuda.Stream()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n > self.max_batch:
            raise BackendError(f"batch of {n} exceeds this engine runtime's {self.max_batch}")
        if self.context is None or self.primary is None:
            raise BackendError("this TensorRT backend is closed")
        context = self.context
        with self.primary.active() as cuda:
            self.host_in[:n] = batch
            context.set_input_shape(self.input, (n, *self.host_in.shape[1:]))
            cuda.memcpy_htod_async(self.device_in, self.host_in, self.stream)
            if not context.execute_async_v3(self.stream.handle):
                raise BackendError("TensorRT execution failed")
            cuda.memcpy_dtoh_async(self.host_out, self.device_out, self.stream)
            self.stream.synchronize()
        return self.host_out[:n].copy()

    def close(self) -> None:
        """Free the device buffers and release the primary context: as much of them as an open
        that failed halfway had made, too. Closing twice is a no-op."""
        primary, self.primary = self.primary, None
        if primary is None:
            return
        try:
            with primary.active():
                for buffer in (self.device_in, self.device_out):
                    if buffer is not None:
                        buffer.free()
                self.device_in = self.device_out = None
                self.context = self.engine = None
        finally:
            primary.release()

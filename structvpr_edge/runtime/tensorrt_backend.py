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
from ..errors import BackendError, ConfigError, ModelError
from ..files import open_regular
from ..modelinfo import ModelInfo
from ..trt_compat import detect, import_tensorrt, require

if TYPE_CHECKING:  # mypy checks the TensorRT calls against tensorrt-stubs (tests/test_trt_api.py)
    import tensorrt


PROFILE = ("min", "opt", "max")  # the optimization profile's shapes, as the manifest records them
MAX_ENGINE_BYTES = 4 << 30


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
    fields = set(manifest) if isinstance(manifest, dict) else set()  # a JSON list or number holds none
    missing = {"format", "tensorrt_version", "gpu_name", "compute_capability", "command", "model_info", "precision", "profile"} - fields
    if missing or manifest["format"] != ENGINE_FORMAT:
        raise BackendError(f"{path} is not a structvpr-edge engine manifest (missing {sorted(missing)}); rebuild the engine")
    damaged = _damaged(manifest)
    if damaged:
        raise BackendError(f"engine manifest {path} is damaged: {damaged}; rebuild the engine with:\n  {manifest['command']}")
    return manifest


def _damaged(manifest: dict) -> str | None:
    """What is malformed in the fields the backend reads before TensorRT does (profile, model_info),
    None when nothing is: a hand-edited manifest is refused naming the field, not by a TypeError."""
    profile = manifest["profile"]
    shapes: list[Any] = [profile.get(k) for k in PROFILE] if isinstance(profile, dict) else []
    rank = len(shapes[0]) if shapes and isinstance(shapes[0], list) else 0
    if rank < 2 or not all(_is_shape(s, rank) for s in shapes) or not shapes[0][0] <= shapes[1][0] <= shapes[2][0]:
        return f"'profile' must hold {'/'.join(PROFILE)} shapes of positive sizes, batch min <= opt <= max, got {profile!r:.120}"
    if not isinstance(manifest["model_info"], dict):
        return f"'model_info' must be an object of metadata props, got {manifest['model_info']!r:.120}"
    return None


def _is_shape(value: object, rank: int) -> bool:
    return isinstance(value, list) and len(value) == rank and all(type(d) is int and d > 0 for d in value)


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
    with open_regular(engine, MAX_ENGINE_BYTES, ModelError) as handle:  # missing, or a folder: named, like ONNX Runtime's
        blob = handle.read()
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
        self.path, self.command = Path(engine), manifest["command"]
        self.profile = manifest["profile"]
        self.max_batch = max(1, min(max_batch, self.profile["max"][0]))
        self.engine: tensorrt.ICudaEngine | None = None
        self.context: tensorrt.IExecutionContext | None = None
        self.device_in: Any = None  # pycuda DeviceAllocations, freed by close()
        self.device_out: Any = None
        self.host_in: Any = None  # page-locked numpy arrays and the pycuda Stream: released by close(), in the context
        self.host_out: Any = None
        self.stream: Any = None
        primary = PrimaryContext(device_index)
        self.primary: PrimaryContext | None = primary
        try:  # from here on the primary context is retained: a failed open releases it (and any buffers) again
            with primary.active() as cuda:  # the engine, its context, buffers and stream live in the primary context
                self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(blob)
                if self.engine is None:
                    raise BackendError(f"TensorRT could not deserialize {self.path}; rebuild it with:\n  {self.command}")
                frame, in_dtype, out_dtype = self._check_io(trt, self.engine)
                self.context = self.engine.create_execution_context()
                self.host_in = cuda.pagelocked_empty((self.max_batch, *frame), in_dtype)
                self.host_out = cuda.pagelocked_empty((self.max_batch, self.info.layout.dim), out_dtype)
                self.device_in = cuda.mem_alloc(self.host_in.nbytes)
                self.device_out = cuda.mem_alloc(self.host_out.nbytes)
                self.context.set_tensor_address(self.input, int(self.device_in))
                self.context.set_tensor_address(self.output, int(self.device_out))
                self.stream = cuda.Stream()
        except BaseException:
            self.close()
            raise

    def _check_io(self, trt: Any, engine: tensorrt.ICudaEngine) -> tuple[list[int], np.dtype, np.dtype]:
        """One input frame's shape and the input's and output's dtypes, once the engine's one input and
        one output are those its metadata describes (ModelInfo.check_io, as for ONNX Runtime) and the
        output is floating point: the buffers are sized by the metadata, so an engine of other I/O
        would be read as garbage."""
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        shapes = {n: list(engine.get_tensor_shape(n)[:]) for n in names}
        try:
            self.info.check_io([(n, dtypes[n].name, shapes[n]) for n in inputs], [(n, shapes[n]) for n in outputs])
        except ModelError as exc:
            raise ModelError(f"engine {self.path}: {exc}; or rebuild it with:\n  {self.command}") from exc
        (self.input,), (self.output,) = inputs, outputs
        if dtypes[self.output].kind != "f":
            raise ModelError(f"engine {self.path} outputs {dtypes[self.output]} descriptors, not floating point; rebuild it with:\n  {self.command}")
        return shapes[self.input][1:], dtypes[self.input], dtypes[self.output]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Descriptors of ``batch`` as float32 (an FP16-output engine's too)."""
        if self.context is None or self.primary is None:
            raise BackendError("this TensorRT backend is closed")
        n, low, high, want = len(batch), self.profile["min"][0], self.profile["max"][0], self.host_in.shape[1:]
        if batch.shape[1:] != want or batch.dtype != self.host_in.dtype:  # a batch of another rank too
            raise ConfigError(f"engine {self.path} takes a (N, {', '.join(map(str, want))}) {self.host_in.dtype} batch, "
                              f"got {batch.shape} {batch.dtype}")
        if n > self.max_batch:
            raise BackendError(f"batch of {n} exceeds this engine runtime's {self.max_batch}")
        if n < low:
            raise BackendError(f"batch of {n} is below engine {self.path}'s profile of {low}..{high} frames; "
                               f"rebuild it with --min-batch 1 (it was built with: {self.command})")
        context = self.context
        with self.primary.active() as cuda:
            self.host_in[:n] = batch
            if not context.set_input_shape(self.input, (n, *want)):
                raise BackendError(f"TensorRT refused input shape {(n, *want)} for engine {self.path} (profile {low}..{high})")
            cuda.memcpy_htod_async(self.device_in, self.host_in, self.stream)
            if not context.execute_async_v3(self.stream.handle):
                raise BackendError("TensorRT execution failed")
            cuda.memcpy_dtoh_async(self.host_out, self.device_out, self.stream)
            self.stream.synchronize()
        return self.host_out[:n].astype(np.float32)

    def close(self) -> None:
        """Free the device buffers, the page-locked host buffers and the stream, all inside the
        primary context, then release it: as much of them as an open that failed halfway had made,
        too. Closing twice is a no-op."""
        primary, self.primary = self.primary, None
        if primary is None:
            return
        try:
            with primary.active():
                for buffer in (self.device_in, self.device_out):
                    if buffer is not None:
                        buffer.free()
                self.device_in = self.device_out = self.host_in = self.host_out = self.stream = None
                self.context = self.engine = None
        finally:
            primary.release()

"""The INT8 entropy calibrator engine.py hands TensorRT < 10. TensorRT reads the calibration cache
first and asks for images (the manifest's, hash-checked) only when it rejects the cache, so a
calibration folder copied to a Jetson builds without its images."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..files import open_regular
from ..modelinfo import ModelInfo
from ..runtime.tensorrt_backend import PrimaryContext
from ..trt_compat import detect, require
from .calibration import calibration_batches, load_manifest
from .quantize import retarget_cache


def _read_cache(cache: Path, trt_version: str) -> bytes:
    """``cache`` under ``trt_version``'s header; read when the calibrator is made, before the build:
    TensorRT calls read_calibration_cache from inside it, where an error would not name the file."""
    with open_regular(cache, 16 << 20, ModelError) as handle:
        data = handle.read()
    try:
        return retarget_cache(data.decode(), trt_version).encode()
    except ValueError as exc:  # the parse's ModelError, or bytes that are not text
        raise ModelError(f"{cache} is not a whole TensorRT calibration cache ({exc}); recalibrate, or copy the kit again") from exc


def make_entropy_calibrator(trt, cache: Path, manifest: Path, info: ModelInfo):
    """A ``trt.IInt8EntropyCalibrator2`` reading ``cache``, with ``manifest``'s images behind it."""
    require(detect(trt), "calibrators")
    cached = _read_cache(cache, trt.__version__)

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches: Iterator[np.ndarray] | None = None
            self.primary: PrimaryContext | None = None
            self.device: Any = None
            self.written: bytes | None = None  # a cache TensorRT made itself, had it rejected ``cache``

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.batches is None:
                self.batches = calibration_batches(load_manifest(manifest)[1], info)
                self.primary = PrimaryContext()
            batch = next(self.batches, None)
            if self.primary is None:  # calibration has ended, its context released
                return None
            with self.primary.active() as cuda:
                if batch is not None:
                    if self.device is None:
                        self.device = cuda.mem_alloc(batch.nbytes)
                    cuda.memcpy_htod(self.device, np.ascontiguousarray(batch))
                    return [int(self.device)]
                if self.device is not None:  # done: TensorRT asks no more
                    self.device.free()
                self.device = None
            self.primary.release()  # its buffer freed inside it, the context goes back
            self.primary = None
            return None

        def read_calibration_cache(self) -> bytes | None:
            return cached

        def write_calibration_cache(self, data) -> None:
            self.written = bytes(data)  # kept for the engine's own cache: the kit's file is what its report records

    return EntropyCalibrator()

"""Camera frame -> model input with one area resize into a preallocated buffer.

The resize is area (box) averaging, as in training. OpenCV's INTER_AREA has a vectorised path
for an exact halving only, so while the frame is an even multiple of the model size on both
axes it is halved first (a box of 2x2 boxes is the same box), into buffers kept per frame
size; the last step lands in the input buffer. A 640x480 frame reaches 160x120 about 4x faster
than with one INTER_AREA call, with the same pixels up to one grey level of rounding.

For a ``--uint8-input`` model the resized pixels are the input: the normalisation lives in the
graph. For a float model the host normalises them into the input buffer (images.normalize, the
function training uses). Evaluation, calibration and map building feed models through this class
too (``Preprocessor``, ``describe_files``), so they see the pixels the vehicle's runtime sees.

A frame smaller than the model input is enlarged, with an ``UpscaleWarning`` once per frame size:
no model saw enlarged images in training. Frames are checked before any work: an empty or absurdly
large frame, or an image file that is truncated (a truncated JPEG decodes to a grey-padded frame
that localizes somewhere else), is a typed error, never a hang or a silent wrong place.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import ConfigError, DatasetError, UpscaleWarning
from ..images import MAX_SIDE, decode_image, normalize
from ..modelinfo import COLOURS, ModelInfo

MAX_FILE_BYTES = 256 << 20
CACHED_SIZES = 8  # frame sizes whose halving buffers are kept (a camera has one or two)


def check_colour(colour: object) -> None:
    if colour not in COLOURS:
        raise ConfigError(f"frame colour must be one of {COLOURS}, got {colour!r}")


def bgr_as(colour: str, frames: list[np.ndarray]) -> list[np.ndarray]:
    """BGR frames (files and drives are decoded to BGR) in ``colour``, the channel order an EdgeVPR was opened for."""
    return frames if colour == "BGR" else [frame[..., ::-1] for frame in frames]


def check_frame(frame: object, colour: str = "BGR") -> None:
    """An HxWx3 uint8 array with 1 <= H, W <= MAX_SIDE."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ConfigError(f"a frame must be an HxWx3 uint8 array ({colour}), got {got}")
    if not (1 <= frame.shape[0] <= MAX_SIDE and 1 <= frame.shape[1] <= MAX_SIDE):
        raise ConfigError(f"a frame must be 1..{MAX_SIDE} pixels on each side, got {frame.shape[1]}x{frame.shape[0]}")


def read_image(path: str | Path) -> np.ndarray:
    """A BGR frame from an image file, or a DatasetError saying why not (checked before decoding)."""
    path = Path(path)
    if not path.is_file():  # a FIFO or a device would block or never end
        raise DatasetError(f"cannot read image {path}: " + ("not a regular file" if path.exists() else "no such file"))
    size = path.stat().st_size
    if not 0 < size <= MAX_FILE_BYTES:
        raise DatasetError(f"cannot read image {path}: {size} bytes (expected 1..{MAX_FILE_BYTES})")
    frame = decode_image(path.read_bytes(), f"image {path}")
    check_frame(frame)
    return frame


class Preprocessor:
    def __init__(self, info: ModelInfo, colour: str = "BGR", max_batch: int = 1) -> None:
        check_colour(colour)
        self.info, self.colour = info, colour
        size = (info.height, info.width)
        self.swap = colour != (info.colour if info.uint8_input else "RGB")
        if info.uint8_input:
            self.input = np.empty((max_batch, *size, 3), np.uint8)
        else:
            self.input = np.empty((max_batch, 3, *size), np.float32)
            self.resized = np.empty((1, *size, 3), np.uint8)
            self.source = (2, 1, 0) if colour == "BGR" else (0, 1, 2)  # model channel c takes frame channel source[c]
        self.halvings: OrderedDict[tuple[int, int], list[np.ndarray]] = OrderedDict()  # frame (H, W) -> halving buffers

    def halving_buffers(self, shape: tuple[int, int]) -> list[np.ndarray]:
        """Buffers of the exact halvings a frame of this (H, W) goes through, allocated once."""
        if shape not in self.halvings:
            if shape[0] < self.info.height or shape[1] < self.info.width:  # once per new size, off the per-frame path
                warnings.warn(f"{shape[1]}x{shape[0]} frames are enlarged to the model's {self.info.width}x{self.info.height} input; "
                              "it never saw enlarged images in training, and enlarged frames lose Recall (the real corridor, docs/RESULTS.md)",
                              UpscaleWarning, stacklevel=3)
            buffers, (h, w) = [], shape
            while h % (2 * self.info.height) == 0 and w % (2 * self.info.width) == 0:
                h, w = h // 2, w // 2
                buffers.append(np.empty((h, w, 3), np.uint8))
            self.halvings[shape] = buffers
            if len(self.halvings) > CACHED_SIZES:  # bounded: a stream of odd sizes must not grow memory
                self.halvings.popitem(last=False)
        self.halvings.move_to_end(shape)
        return self.halvings[shape]

    def resize(self, frame: np.ndarray, out: np.ndarray) -> None:
        """Area-average ``frame`` into ``out`` (H x W x 3 at the model size)."""
        for buffer in self.halving_buffers(frame.shape[:2]):
            cv2.resize(frame, (buffer.shape[1], buffer.shape[0]), dst=buffer, interpolation=cv2.INTER_AREA)
            frame = buffer
        cv2.resize(frame, (self.info.width, self.info.height), dst=out, interpolation=cv2.INTER_AREA)

    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        """Fill the input buffer; returns a view of its first len(frames) rows (valid until the next call)."""
        if not 0 < len(frames) <= len(self.input):
            raise ConfigError(f"batch of {len(frames)} frames; this runtime was set up for 1..{len(self.input)}")
        for frame in frames:  # all checked before the buffer is touched
            check_frame(frame, self.colour)
        for i, frame in enumerate(frames):
            frame = np.ascontiguousarray(frame)  # OpenCV refuses negative strides (frame[..., ::-1])
            if self.info.uint8_input:
                self.resize(frame, self.input[i])
                if self.swap:
                    cv2.cvtColor(self.input[i], cv2.COLOR_BGR2RGB, dst=self.input[i])
                continue
            self.resize(frame, self.resized[0])
            normalize(self.resized, self.info.mean, self.info.std, self.source, out=self.input[i : i + 1])
        return self.input[: len(frames)]


def describe_files(describe: Callable[[list[np.ndarray]], np.ndarray], paths: list[Path], read: Callable[[Path], np.ndarray] = read_image,
                   batch_size: int = 32, desc: str = "describe") -> np.ndarray:
    """(N, D) float32 descriptors of the image files ``paths``, in order: files ``read`` on a thread
    pool, ``describe`` called per batch, with a progress bar. Map building, the threshold and
    evaluation all describe files through this."""
    chunks = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch", leave=False):
            chunks.append(np.asarray(describe(list(pool.map(read, paths[start : start + batch_size]))), dtype=np.float32))
    return np.concatenate(chunks)

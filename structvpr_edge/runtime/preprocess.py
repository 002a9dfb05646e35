"""Camera frame -> model input with one area resize into a preallocated buffer.

The resize is area (box) averaging, as in training. OpenCV's INTER_AREA has a vectorised path
for an exact halving only, so while the frame is an even multiple of the model size on both
axes it is halved first (a box of 2x2 boxes is the same box), into buffers kept per frame
size; the last step lands in the input buffer. A 640x480 frame reaches 160x120 about 4x faster
than with one INTER_AREA call, with the same pixels up to one grey level of rounding.

For a ``--uint8-input`` model the resized pixels are the input: the normalisation lives in the
graph. For a float model the host applies ``(x/255 - mean)/std`` per channel, in place.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..errors import ConfigError
from ..modelinfo import ModelInfo

COLOURS = ("BGR", "RGB")


class Preprocessor:
    def __init__(self, info: ModelInfo, colour: str = "BGR", max_batch: int = 1) -> None:
        if colour not in COLOURS:
            raise ConfigError(f"frame colour must be one of {COLOURS}, got {colour!r}")
        self.info, self.colour = info, colour
        size = (info.height, info.width)
        self.swap = colour != (info.colour if info.uint8_input else "RGB")
        if info.uint8_input:
            self.input = np.empty((max_batch, *size, 3), np.uint8)
        else:
            self.input = np.empty((max_batch, 3, *size), np.float32)
            self.resized = np.empty((*size, 3), np.uint8)
            # model channel c takes frame channel source[c]; x * scale + offset == (x/255 - mean)/std
            self.source = (2, 1, 0) if colour == "BGR" else (0, 1, 2)
            self.scale = [1 / (255 * s) for s in info.std]
            self.offset = [-m / s for m, s in zip(info.mean, info.std)]
        self.halvings: dict[tuple[int, int], list[np.ndarray]] = {}  # frame (H, W) -> halving buffers

    def halving_buffers(self, shape: tuple[int, int]) -> list[np.ndarray]:
        """Buffers of the exact halvings a frame of this (H, W) goes through, allocated once."""
        if shape not in self.halvings:
            buffers, (h, w) = [], shape
            while h % (2 * self.info.height) == 0 and w % (2 * self.info.width) == 0:
                h, w = h // 2, w // 2
                buffers.append(np.empty((h, w, 3), np.uint8))
            self.halvings[shape] = buffers
        return self.halvings[shape]

    def resize(self, frame: np.ndarray, out: np.ndarray) -> None:
        """Area-average ``frame`` into ``out`` (H x W x 3 at the model size)."""
        for buffer in self.halving_buffers(frame.shape[:2]):
            cv2.resize(frame, (buffer.shape[1], buffer.shape[0]), dst=buffer, interpolation=cv2.INTER_AREA)
            frame = buffer
        cv2.resize(frame, (self.info.width, self.info.height), dst=out, interpolation=cv2.INTER_AREA)

    def check(self, frame: np.ndarray) -> None:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ConfigError(f"a frame must be an HxWx3 uint8 array ({self.colour}), got {got}")

    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        """Fill the input buffer; returns a view of its first len(frames) rows (valid until the next call)."""
        if not 0 < len(frames) <= len(self.input):
            raise ConfigError(f"batch of {len(frames)} frames; this runtime was set up for 1..{len(self.input)}")
        for i, frame in enumerate(frames):
            self.check(frame)
            if self.info.uint8_input:
                self.resize(frame, self.input[i])
                if self.swap:
                    cv2.cvtColor(self.input[i], cv2.COLOR_BGR2RGB, dst=self.input[i])
                continue
            self.resize(frame, self.resized)
            for c, src in enumerate(self.source):
                np.multiply(self.resized[..., src], self.scale[c], out=self.input[i, c], casting="unsafe")
                self.input[i, c] += self.offset[c]
        return self.input[: len(frames)]

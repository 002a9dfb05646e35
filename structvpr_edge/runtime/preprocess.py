"""Camera frame -> model input with one resize into a preallocated buffer.

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

    def check(self, frame: np.ndarray) -> None:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ConfigError(f"a frame must be an HxWx3 uint8 array ({self.colour}), got {got}")

    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        """Fill the input buffer; returns a view of its first len(frames) rows (valid until the next call)."""
        if not 0 < len(frames) <= len(self.input):
            raise ConfigError(f"batch of {len(frames)} frames; this runtime was set up for 1..{len(self.input)}")
        size = (self.info.width, self.info.height)
        for i, frame in enumerate(frames):
            self.check(frame)
            if self.info.uint8_input:
                cv2.resize(frame, size, dst=self.input[i], interpolation=cv2.INTER_AREA)
                if self.swap:
                    cv2.cvtColor(self.input[i], cv2.COLOR_BGR2RGB, dst=self.input[i])
                continue
            cv2.resize(frame, size, dst=self.resized, interpolation=cv2.INTER_AREA)
            for c, src in enumerate(self.source):
                np.multiply(self.resized[..., src], self.scale[c], out=self.input[i, c], casting="unsafe")
                self.input[i, c] += self.offset[c]
        return self.input[: len(frames)]

"""Pixels in: read an image file, resize it, normalise it; torch-free.

Training, evaluation, calibration, map building and the runtime all read and normalise pixels
through these functions, so a model sees the same pixels whichever of them feeds it.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .errors import DatasetError


def read_rgb(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """An RGB image, area-resized to ``size`` (W, H) unless None or already that size."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"cannot read image {path}")
    if size is not None and (image.shape[1], image.shape[0]) != size:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """A label map (one uint8 class id per pixel), nearest-resized to ``size`` unless None."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2 or label.dtype != np.uint8:
        raise DatasetError(f"{path} is not a single-channel uint8 label PNG")
    if size is not None and (label.shape[1], label.shape[0]) != size:
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    return label


def normalize(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float], channels: Sequence[int] = (0, 1, 2),
              out: np.ndarray | None = None) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 ``(x - 255 mean) / (255 std)`` per model channel.

    Model channel c comes from pixel channel ``channels[c]``: (0, 1, 2) for RGB pixels, (2, 1, 0)
    for BGR frames of an RGB model. ``out``: a preallocated buffer to write into (the runtime's).
    """
    out = np.empty((len(pixels), 3, *pixels.shape[1:3]), np.float32) if out is None else out
    shift, scale = np.array(mean, np.float32) * 255, np.array(std, np.float32) * 255
    for c, source in enumerate(channels):
        np.subtract(pixels[..., source], shift[c], out=out[:, c], casting="unsafe")
        out[:, c] /= scale[c]
    return out

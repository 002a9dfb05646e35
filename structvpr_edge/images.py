"""Pixels in: read an image file, resize it, normalise it; torch-free.

Training, evaluation, calibration, map building and the runtime all read and normalise pixels
through these functions, so a model sees the same pixels whichever of them feeds it.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .errors import DatasetError

MAX_SIDE = 16384  # pixels per side of a frame; beyond this it is a corrupt header, not a camera
JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers carry the size


def imread(path: Path, flags: int = cv2.IMREAD_COLOR, what: str = "image") -> np.ndarray:
    """An image file decoded by OpenCV as it is (BGR by default), or a DatasetError naming it: data
    preparation and figures; the runtime's ``read_image`` adds the checks a frame from outside needs."""
    image = cv2.imread(str(path), flags)
    if image is None:
        raise DatasetError(f"cannot read {what} {path}")
    return image


def imwrite(path: Path, image: np.ndarray, params: Sequence[int] = (), what: str = "image") -> None:
    """Write ``image`` or raise a DatasetError naming ``path``: OpenCV returns False on a full disk
    or a file-size limit instead of raising, and a dataset missing files must not be called complete."""
    if not cv2.imwrite(str(path), image, list(params)):
        raise DatasetError(f"cannot write {what} {path}")


def imwrite_whole(path: Path, image: np.ndarray, params: Sequence[int] = (), what: str = "image") -> None:
    """:func:`imwrite` staged aside and renamed: whole or absent, so a rerun that keeps what is there
    never keeps half of an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial{path.suffix}")  # the suffix tells OpenCV the format
    try:
        imwrite(partial, image, params, what)
    except DatasetError:
        partial.unlink(missing_ok=True)
        raise DatasetError(f"cannot write {what} {path}") from None
    os.replace(partial, path)


def read_rgb(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """An RGB image, area-resized to ``size`` (W, H) unless None or already that size."""
    return cv2.cvtColor(resize_area(imread(path), size), cv2.COLOR_BGR2RGB)


def resize_area(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """``image`` area-resized to ``size`` (W, H) unless None or already that size."""
    if size is None or (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header, None for other formats."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 <= len(data) and data[i] == 0xFF:
            marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
            if marker in JPEG_SOF:
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return width, height
            i += 2 + length
    return None


def is_truncated(data: bytes) -> bool:
    """A JPEG must end its last scan with EOI; a PNG's chunks, walked by their lengths, must reach
    IEND (bytes after it are allowed). OpenCV pads what is missing."""
    if data.startswith(b"\xff\xd8"):
        return b"\xff\xd9" not in data[data.rfind(b"\xff\xda") :]
    if not data.startswith(b"\x89PNG"):
        return False
    i = 8
    while i + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[i : i + 8])
        if kind == b"IEND":
            return False
        i += 12 + length  # length, type, data, CRC
    return True


def decode_image(data: bytes, what: str) -> np.ndarray:
    """A BGR frame from encoded image bytes (an image file's, a CompressedImage message's), or a
    DatasetError naming ``what`` and why not, checked before decoding: a truncated JPEG decodes
    to a grey-padded frame that localizes somewhere else."""
    dims = header_size(data)
    if dims is not None and not (1 <= dims[0] <= MAX_SIDE and 1 <= dims[1] <= MAX_SIDE):
        raise DatasetError(f"cannot read {what}: its header says {dims[0]}x{dims[1]} pixels (at most {MAX_SIDE} per side)")
    if is_truncated(data):
        raise DatasetError(f"cannot read {what}: the data is truncated")
    try:
        frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:  # a format whose header we do not read, claiming more pixels than OpenCV allows
        raise DatasetError(f"cannot read {what}: OpenCV refuses it ({e.err})") from None
    if frame is None:
        raise DatasetError(f"cannot read {what}: not a decodable image")
    if not (1 <= frame.shape[0] <= MAX_SIDE and 1 <= frame.shape[1] <= MAX_SIDE):
        raise DatasetError(f"cannot read {what}: {frame.shape[1]}x{frame.shape[0]} pixels (at most {MAX_SIDE} per side)")
    return frame


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

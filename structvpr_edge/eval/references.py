"""Built-in reference descriptors that need no training and anchor every results table.

- ``pixels``: a small normalised grey image; shows how far raw pixel matching gets.
- ``imagenet-gem``: ImageNet EfficientNet-Lite0 features + GeM; an untrained deep baseline.
- ``label-oracle``: the ground-truth map of static label groups on a coarse grid (synthetic
  data only); an upper reference for what structure alone knows.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..images import normalize
from ..labels import GROUP_ID, STATIC_GROUPS, classes_to_groups


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class PixelsDescriptor:
    """Grey image resized to ``grid`` (W, H), zero-mean and unit-norm."""

    grid: tuple[int, int] = (32, 24)
    input_kind: str = "rgb"
    image_size: tuple[int, int] | None = None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        small = np.stack(
            [cv2.resize(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), self.grid, interpolation=cv2.INTER_AREA) for im in images]
        ).reshape(len(images), -1).astype(np.float32)
        return _l2_normalize(small - small.mean(axis=1, keepdims=True))


@dataclass
class LabelOracleDescriptor:
    """Fraction of each static label group in every cell of a coarse ``grid`` (W, H)."""

    grid: tuple[int, int] = (16, 12)
    input_kind: str = "labels"
    image_size: tuple[int, int] | None = None

    def __call__(self, label_maps: np.ndarray) -> np.ndarray:
        static_ids = [GROUP_ID[g] for g in STATIC_GROUPS]
        out = []
        for label_map in label_maps:
            groups = classes_to_groups(label_map)
            planes = [(groups == gid).astype(np.float32) for gid in static_ids]
            out.append(np.concatenate([cv2.resize(p, self.grid, interpolation=cv2.INTER_AREA).ravel() for p in planes]))
        return _l2_normalize(np.stack(out))


class ImageNetGeMDescriptor:
    """ImageNet EfficientNet-Lite0 (stride 32) features, GeM-pooled, L2-normalised."""

    input_kind = "rgb"

    def __init__(self, image_size: tuple[int, int] | None = None) -> None:
        import torch  # noqa: PLC0415 - only this reference needs torch

        from ..models.efficientnet_lite import EfficientNetLite0  # noqa: PLC0415
        from ..models.gem import GeM  # noqa: PLC0415

        self.image_size = image_size
        self._torch = torch
        self.backbone = EfficientNetLite0(stride=32, imagenet=True).eval()
        self.pool = GeM(learn_p=False).eval()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        from ..models.efficientnet_lite import MEAN_RGB, STD_RGB  # noqa: PLC0415

        with self._torch.inference_mode():
            features = self.pool(self.backbone(self._torch.from_numpy(normalize(images, MEAN_RGB, STD_RGB))))
        return _l2_normalize(features.numpy())


REFERENCE_MODELS = {
    "pixels": PixelsDescriptor,
    "imagenet-gem": ImageNetGeMDescriptor,
    "label-oracle": LabelOracleDescriptor,
}

"""Resolve the ``--model`` argument of every command to an extractor.

Accepted: a built-in reference (``pixels``, ``imagenet-gem``, ``label-oracle``), a shipped model
name (``structvprpp``, ``baseline``) or a checkpoint path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError
from .references import REFERENCE_MODELS


class CheckpointExtractor:
    """A trained checkpoint (torch): RGB students, or the label-map teacher."""

    def __init__(self, name_or_path: str | Path, image_size: tuple[int, int] | None = None) -> None:
        import torch  # noqa: PLC0415

        from ..models.checkpoint import load_checkpoint

        self._torch = torch
        self.model, self.meta = load_checkpoint(name_or_path)
        spec = self.meta["input"]
        self.input_kind = spec["kind"]
        self.image_size = tuple(image_size or spec["size"]) if self.input_kind == "rgb" else None
        self.label_size = tuple(spec["size"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        from ..train.data import label_fractions, normalize_images  # noqa: PLC0415

        if self.input_kind == "labels":
            x = self._torch.from_numpy(np.stack([label_fractions(b, self.label_size) for b in batch]).astype(np.float32) / 255)
        else:
            x = normalize_images(batch)
        with self._torch.inference_mode():
            return self.model(x).numpy()


def load_extractor(model: str, image_size: tuple[int, int] | None = None):
    """Reference name, shipped model name or checkpoint path -> extractor."""
    if model in REFERENCE_MODELS:
        return REFERENCE_MODELS[model](image_size=image_size)
    from ..models.checkpoint import SHIPPED  # noqa: PLC0415

    if model in SHIPPED or Path(model).suffix == ".pt":
        return CheckpointExtractor(model, image_size)
    raise ModelError(
        f"unknown model {model!r}; use a checkpoint (.pt), a shipped model {sorted(SHIPPED)} "
        f"or a built-in reference {sorted(REFERENCE_MODELS)}"
    )

"""Resolve the ``--model`` argument of every command to an extractor."""
from __future__ import annotations

from ..errors import ModelError
from .references import REFERENCE_MODELS


def load_extractor(model: str, image_size: tuple[int, int] | None = None):
    """A built-in reference name (``pixels``, ``imagenet-gem``, ``label-oracle``) -> extractor."""
    if model in REFERENCE_MODELS:
        return REFERENCE_MODELS[model](image_size=image_size)
    raise ModelError(f"unknown model {model!r}; built-in references are {sorted(REFERENCE_MODELS)}")

"""Resolve the ``--model`` argument of every command to an extractor.

Accepted: a built-in reference (``pixels``, ``imagenet-gem``, ``label-oracle``), a shipped model
name (``structvprpp``, ``student-nokd``, ``baseline``), a checkpoint path, an exported ONNX file of any precision
(run by ONNX Runtime) or a TensorRT engine, so every artifact is measured by the same command.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..artifacts import CHECKPOINT_SUFFIX, ENGINE_SUFFIXES, backend_for
from ..errors import ConfigError, ModelError
from ..images import normalize
from ..labels import label_fractions
from ..modelinfo import ModelInfo
from ..runtime.preprocess import Preprocessor
from .references import REFERENCE_MODELS


class CheckpointExtractor:
    """A trained checkpoint (torch): RGB students, or the label-map teacher."""

    def __init__(self, name_or_path: str | Path, image_size: tuple[int, int] | None = None, trust_checkpoint: bool = False) -> None:
        import torch  # noqa: PLC0415

        from ..models.checkpoint import load_checkpoint  # noqa: PLC0415

        self._torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.meta = load_checkpoint(name_or_path, trust_checkpoint)
        self.model.to(self.device)
        spec = self.meta["input"]
        self.input_kind = spec["kind"]
        self.image_size = tuple(image_size or spec["size"]) if self.input_kind == "rgb" else None
        self.label_size = tuple(spec["size"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.input_kind == "labels":
            x = self._torch.from_numpy(np.stack([label_fractions(b, self.label_size) for b in batch]).astype(np.float32) / 255)
        else:  # the mean and std training normalised with, as the checkpoint records them
            x = self._torch.from_numpy(normalize(batch, self.meta["input"]["mean"], self.meta["input"]["std"]))
        with self._torch.inference_mode():
            return self.model(x.to(self.device)).float().cpu().numpy()


class DeployedExtractor:
    """An exported model (ONNX file or TensorRT engine) behind the Extractor protocol; torch-free.

    Images are handed over at the dataset's size and go through the runtime's Preprocessor
    (resize, colour, normalisation), so evaluation measures the pixels a vehicle's EdgeVPR feeds
    the model. ``run`` maps the model's input array to descriptors, at most ``max_batch`` at a time.
    """

    input_kind = "rgb"
    image_size: tuple[int, int] | None = None  # the Preprocessor resizes

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], info: ModelInfo, max_batch: int, name: str,
                 image_size: tuple[int, int] | None = None) -> None:
        size = (info.width, info.height)
        if image_size is not None and tuple(image_size) != size:
            raise ConfigError(f"{name} was exported for {size[0]}x{size[1]} input; re-export it for {image_size[0]}x{image_size[1]}")
        self.run, self.info, self.max_batch = run, info, max_batch
        self.preprocess = Preprocessor(info, colour="RGB", max_batch=max_batch)  # evaluation reads RGB

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        step = self.max_batch
        return np.concatenate([self.run(self.preprocess(list(batch[start : start + step]))) for start in range(0, len(batch), step)])


def deployed_extractor(path: str | Path, image_size: tuple[int, int] | None = None, threads: int | None = None) -> DeployedExtractor:
    """An exported ONNX file of any precision (ONNX Runtime, best provider present) or a TensorRT
    engine, opened by the runtime's ``open_backend`` (tensorrt and pycuda imported only for an engine)."""
    from ..runtime.backends import open_backend  # noqa: PLC0415

    backend = open_backend(path, threads=threads, max_batch=8 if backend_for(path) == "tensorrt" else 64)
    return DeployedExtractor(backend.infer, backend.info, backend.max_batch, str(path), image_size)


def load_extractor(model: str, image_size: tuple[int, int] | None = None, trust_checkpoint: bool = False):
    """Reference name, shipped model name, checkpoint, ONNX file or TensorRT engine -> extractor.
    ``trust_checkpoint``: also open a checkpoint that needs code to load (models/checkpoint.py)."""
    if model in REFERENCE_MODELS:
        return REFERENCE_MODELS[model](image_size=image_size)
    if backend_for(model) != "torch":
        return deployed_extractor(model, image_size)
    from ..models.checkpoint import SHIPPED  # noqa: PLC0415

    if model in SHIPPED or Path(model).suffix == CHECKPOINT_SUFFIX:
        return CheckpointExtractor(model, image_size, trust_checkpoint)
    raise ModelError(
        f"unknown model {model!r}; use a checkpoint (.pt), an ONNX file (.onnx), a TensorRT engine ({' or '.join(ENGINE_SUFFIXES)}), "
        f"a shipped model {sorted(SHIPPED)} or a built-in reference {sorted(REFERENCE_MODELS)}"
    )

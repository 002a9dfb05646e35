"""The one pixel normalisation: training, the runtime and every deployed-model caller agree."""
from __future__ import annotations

import numpy as np

import torch

from structvpr_edge.images import normalize
from structvpr_edge.modelinfo import ModelInfo
from structvpr_edge.models.efficientnet_lite import MEAN_RGB, STD_RGB
from structvpr_edge.runtime.preprocess import Preprocessor

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_normalize_is_the_documented_formula_in_the_asked_channel_order():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 6, 8, 3), dtype=np.uint8)
    expected = ((pixels / 255 - np.array(MEAN)) / np.array(STD)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(normalize(pixels, MEAN, STD), expected, atol=1e-5)
    np.testing.assert_array_equal(normalize(pixels[..., ::-1], MEAN, STD, channels=(2, 1, 0)), normalize(pixels, MEAN, STD))


def test_training_and_the_runtime_feed_a_float_model_the_same_numbers():
    from structvpr_edge.train.data import normalize_images

    rgb = np.random.default_rng(1).integers(0, 256, (1, 12, 16, 3), dtype=np.uint8)
    info = ModelInfo(16, 12, False, "RGB", MEAN_RGB, STD_RGB, layout=None)  # the layout plays no part in preprocessing
    runtime = Preprocessor(info, colour="BGR")([np.ascontiguousarray(rgb[0, ..., ::-1])])
    assert isinstance(normalize_images(rgb), torch.Tensor)
    np.testing.assert_array_equal(normalize_images(rgb).numpy(), runtime)

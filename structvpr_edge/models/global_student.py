"""A plain RGB student: backbone + one aggregator + L2 norm (the baseline and StructVPR-style)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .efficientnet_lite import EfficientNetLite0, conv_bn_relu
from .gem import GeM
from .mixvpr import MixVPR
from .netvlad import NetVLAD
from .teacher import AlignedOutput


@dataclass
class GlobalStudentConfig:
    backbone_stride: int = 16
    frozen_blocks: int = 8
    aggregator: str = "gem"  # gem | mixvpr | netvlad
    dim: int = 512
    aggregator_args: dict = field(default_factory=dict)
    feature_hw: tuple[int, int] = (8, 10)  # (H, W) of backbone features; MixVPR needs it fixed
    local_dim: int = 0  # > 0: a 1x1 conv-BN-ReLU6 head before the aggregator, as the label-aware student has
    imagenet: bool = True
    same_padding: bool = False  # TensorFlow's padding, as the ImageNet weights were trained (models before 2026-12-07: False)


class GeMHead(nn.Module):
    """GeM pooling then a linear projection to the descriptor size."""

    def __init__(self, in_channels: int, out_dim: int, **kwargs) -> None:
        super().__init__()
        self.pool = GeM(**kwargs)
        self.proj = nn.Linear(in_channels, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x))


def build_aggregator(conf: GlobalStudentConfig, in_channels: int) -> nn.Module:
    if conf.aggregator == "mixvpr":  # the one sized for the feature map
        return MixVPR(in_channels, conf.dim, tuple(conf.feature_hw), **conf.aggregator_args)
    aggregators = {"gem": GeMHead, "netvlad": NetVLAD}
    if conf.aggregator not in aggregators:
        raise ConfigError(f"unknown aggregator {conf.aggregator!r}; choose gem, mixvpr or netvlad")
    return aggregators[conf.aggregator](in_channels, conf.dim, **conf.aggregator_args)


class GlobalStudent(nn.Module):
    def __init__(self, conf: GlobalStudentConfig | None = None) -> None:
        super().__init__()
        self.conf = conf = conf or GlobalStudentConfig()
        self.backbone = EfficientNetLite0(conf.backbone_stride, conf.frozen_blocks, imagenet=conf.imagenet, same_padding=conf.same_padding)
        channels = self.backbone.out_channels
        self.local = conv_bn_relu(channels, conf.local_dim) if conf.local_dim else nn.Identity()
        self.aggregator = build_aggregator(conf, conf.local_dim or channels)

    def forward_parts(self, x: torch.Tensor, from_frozen: bool = False) -> AlignedOutput:
        trunk = self.backbone.forward_trainable(x) if from_frozen else self.backbone(x)
        descriptor = F.normalize(self.aggregator(self.local(trunk)), dim=1)
        return AlignedOutput(descriptor, descriptor, descriptor[:, None, :0], descriptor[:, :0], trunk=trunk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_parts(x).descriptor

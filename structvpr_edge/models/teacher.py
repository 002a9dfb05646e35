"""The segmentation teacher: sees only a label map, never RGB.

Input: per label group, the fraction of each cell of a coarse grid that the group covers
(B, K, H, W). A cell's impurity ``1 - max_k fraction`` is added as one more channel: it is high
on group boundaries (skyline, facade edges, tree crowns), the layout lines that identify a
place. A small CNN encodes both; a GeM-pooled global feature and one feature per group, pooled
inside that group's mask, are assembled by :class:`SemanticAlignment` into the descriptor.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import NUM_GROUPS
from .alignment import GroupProjection, SemanticAlignment, masked_pool
from .efficientnet_lite import conv_bn_relu
from .gem import GeM


@dataclass
class TeacherConfig:
    input_size: tuple[int, int] = (64, 48)  # (W, H) of the label-fraction grid
    channels: tuple[int, ...] = (32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 1)
    global_dim: int = 128
    group_dim: int = 64
    presence_power: float = 0.5


@dataclass
class AlignedOutput:
    """Everything the losses need; ``descriptor`` is what retrieval uses."""

    descriptor: torch.Tensor  # (B, D) unit norm
    global_vec: torch.Tensor  # (B, Dg)
    group_vecs: torch.Tensor  # (B, K, Dk)
    presence: torch.Tensor  # (B, K), sums to <= 1
    mask_logits: torch.Tensor | None = None  # (B, K, h, w), student only
    trunk: torch.Tensor | None = None  # (B, C, h, w) backbone output, RGB students: what feature preservation compares

    def float(self) -> AlignedOutput:
        """Every tensor in float32: after a bfloat16 forward the ranks and losses need full precision
        (bf16 similarities step by 0.004 near 1, so close negatives tie with the positive)."""
        return replace(self, **{f.name: value.float() for f in fields(self) if (value := getattr(self, f.name)) is not None})


def with_boundaries(fractions: torch.Tensor) -> torch.Tensor:
    """Append the impurity channel ``1 - max_k fraction`` (high where groups meet)."""
    return torch.cat([fractions, 1 - fractions.amax(dim=1, keepdim=True)], dim=1)


class SegTeacher(nn.Module):
    def __init__(self, conf: TeacherConfig | None = None, num_groups: int = NUM_GROUPS) -> None:
        super().__init__()
        self.conf = conf = conf or TeacherConfig()
        layers, cin = [], num_groups + 1
        for cout, stride in zip(conf.channels, conf.strides):
            layers.append(conv_bn_relu(cin, cout, 3, stride))
            cin = cout
        self.encoder = nn.Sequential(*layers)
        self.pool = GeM()
        self.global_proj = nn.Linear(cin, conf.global_dim)
        self.group_proj = GroupProjection(num_groups, cin, conf.group_dim)
        self.alignment = SemanticAlignment(num_groups, conf.presence_power)

    def forward_parts(self, fractions: torch.Tensor) -> AlignedOutput:
        features = self.encoder(with_boundaries(fractions))
        masks = F.adaptive_avg_pool2d(fractions, features.shape[-2:])
        presence = fractions.mean(dim=(2, 3))
        global_vec = self.global_proj(self.pool(features))
        group_vecs = self.group_proj(masked_pool(features, masks))
        return AlignedOutput(self.alignment(global_vec, group_vecs, presence), global_vec, group_vecs, presence)

    def forward(self, fractions: torch.Tensor) -> torch.Tensor:
        return self.forward_parts(fractions).descriptor

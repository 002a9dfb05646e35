"""The StructVPR++ student: RGB in, a semantically aligned descriptor out.

Backbone features feed two light heads: one predicts soft masks of the K label groups
(supervised by label maps in training, never needed at inference), the other projects local
features. Each group's sub-descriptor is pooled inside its predicted mask; a GeM global
sub-descriptor and the per-image group presences complete the parts that
:class:`SemanticAlignment` folds into one L2-normalised vector.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..labels import NUM_GROUPS
from .alignment import GroupProjection, SemanticAlignment, masked_pool
from .efficientnet_lite import EfficientNetLite0, conv_bn_relu
from .gem import GeM
from .teacher import AlignedOutput


@dataclass
class StudentConfig:
    backbone_stride: int = 16
    frozen_blocks: int = 8
    feature_dim: int = 256
    mask_hidden: int = 64
    global_dim: int = 128
    group_dim: int = 64  # 128 + 6 x 64 = 512 floats: a 10k map fits in L2/L3 for fast exact search
    presence_power: float = 0.5
    imagenet: bool = True  # start the backbone from the shipped ImageNet weights
    same_padding: bool = False  # TensorFlow's padding, as the ImageNet weights were trained (models before 2026-12-07: False)


class StructVPRStudent(nn.Module):
    def __init__(self, conf: StudentConfig | None = None, num_groups: int = NUM_GROUPS) -> None:
        super().__init__()
        self.conf = conf = conf or StudentConfig()
        self.backbone = EfficientNetLite0(conf.backbone_stride, conf.frozen_blocks, imagenet=conf.imagenet, same_padding=conf.same_padding)
        channels = self.backbone.out_channels
        self.local = conv_bn_relu(channels, conf.feature_dim)
        self.mask_head = nn.Sequential(conv_bn_relu(channels, conf.mask_hidden), nn.Conv2d(conf.mask_hidden, num_groups, 1))
        self.pool = GeM()
        self.global_proj = nn.Linear(conf.feature_dim, conf.global_dim)
        self.group_proj = GroupProjection(num_groups, conf.feature_dim, conf.group_dim)
        self.alignment = SemanticAlignment(num_groups, conf.presence_power)

    def forward_parts(self, x: torch.Tensor, from_frozen: bool = False) -> AlignedOutput:
        """``x`` is a normalised image, or the cached output of the frozen backbone part."""
        trunk = self.backbone.forward_trainable(x) if from_frozen else self.backbone(x)
        features = self.local(trunk)
        mask_logits = self.mask_head(trunk)
        masks = mask_logits.softmax(dim=1)
        presence = masks.mean(dim=(2, 3))
        global_vec = self.global_proj(self.pool(features))
        group_vecs = self.group_proj(masked_pool(features, masks))
        descriptor = self.alignment(global_vec, group_vecs, presence)
        return AlignedOutput(descriptor, global_vec, group_vecs, presence, mask_logits, trunk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_parts(x).descriptor

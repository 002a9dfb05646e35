"""Semantic alignment folded into one inner product.

Two images a, b are compared part against part:

    S(a, b) = w_0 <g_a, g_b> + sum_k w_k (p_ak p_bk)^gamma <d_ak, d_bk>

with unit global vectors g, unit per-group vectors d_k, group presences p_k in [0, 1] and
learned importances w = softplus(theta). Writing each part as
``sqrt(w_k) * p_k^gamma * d_k`` makes the plain inner product of the concatenations equal S;
L2-normalising the concatenation makes it the cosine form S(a,b)/sqrt(S(a,a) S(b,b)), so FAISS
inner-product search performs the alignment at deployment.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def masked_pool(features: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Average features inside each soft mask: (B,C,H,W), (B,K,H,W) -> (B,K,C). One batched MatMul."""
    flat_masks = masks.flatten(2)
    pooled = torch.matmul(flat_masks, features.flatten(2).transpose(1, 2))
    return pooled / (flat_masks.sum(dim=2, keepdim=True) + eps)


class GroupProjection(nn.Module):
    """A separate linear map per group, (B,K,C) -> (B,K,D), as one broadcast MatMul."""

    def __init__(self, num_groups: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_groups, in_dim, out_dim) / math.sqrt(in_dim))
        self.bias = nn.Parameter(torch.zeros(num_groups, 1, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.matmul(x.transpose(0, 1), self.weight) + self.bias).transpose(0, 1)


class SemanticAlignment(nn.Module):
    """Scale global and group sub-descriptors so that one inner product is the aligned similarity."""

    def __init__(self, num_groups: int, presence_power: float = 0.5, learn_importance: bool = True) -> None:
        super().__init__()
        start = math.log(math.expm1(1.0))  # softplus(start) == 1: every part starts equally important
        self.importance_logit = nn.Parameter(torch.full((num_groups + 1,), start), requires_grad=learn_importance)
        self.presence_power = presence_power

    def importance(self) -> torch.Tensor:
        """w_0 (global) then w_1..w_K (groups)."""
        return F.softplus(self.importance_logit)

    def group_scale(self, presence: torch.Tensor) -> torch.Tensor:
        """p_k^gamma, with p clamped away from 0 so the gradient of the root stays finite."""
        return presence.clamp_min(1e-6).pow(self.presence_power)

    def forward(self, global_vec: torch.Tensor, group_vecs: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        w = self.importance().sqrt()
        g = F.normalize(global_vec, dim=1) * w[0]
        d = F.normalize(group_vecs, dim=2) * (w[1:, None] * self.group_scale(presence)[..., None])
        return F.normalize(torch.cat([g, d.flatten(1)], dim=1), dim=1)

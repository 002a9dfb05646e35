"""NetVLAD aggregation (Arandjelović et al., CVPR 2016) written as batched matmuls.

The residual sum over clusters ``sum_n a_kn (x_n - c_k)`` equals ``a @ x^T - a.sum(n) * c``, so
every cluster is handled at once by one MatMul: no python loop, and the ONNX graph stays small
and valid for any feature-map size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ModelError


class NetVLAD(nn.Module):
    """(B, C, H, W) -> (B, out_dim), not L2-normalised.

    Local features are L2-normalised, soft-assigned to ``num_clusters`` centroids by a 1x1
    conv, their residuals summed per cluster, intra-normalised, flattened and L2-normalised
    (as in the paper, so the projection sees a unit vector whatever K), then projected by a
    Linear layer (the learned counterpart of the paper's PCA) to ``out_dim``.
    """

    def __init__(self, in_channels: int, out_dim: int, num_clusters: int = 16) -> None:
        super().__init__()
        if min(in_channels, out_dim) <= 0 or num_clusters < 2:
            raise ConfigError(
                f"NetVLAD needs positive sizes and at least 2 clusters, got in_channels={in_channels} "
                f"out_dim={out_dim} num_clusters={num_clusters}"
            )
        self.in_channels = in_channels
        self.num_clusters = num_clusters
        self.assign = nn.Conv2d(in_channels, num_clusters, 1)
        self.centroids = nn.Parameter(torch.rand(num_clusters, in_channels))
        self.proj = nn.Linear(num_clusters * in_channels, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Checked eagerly only: while tracing for ONNX the sizes are symbolic and the check would warn.
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != self.in_channels):
            raise ModelError(f"NetVLAD expects features (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        x = F.normalize(x, dim=1)
        assign = self.assign(x).flatten(2).softmax(dim=1)  # (B, K, N)
        vlad = assign @ x.flatten(2).transpose(1, 2) - assign.sum(dim=2, keepdim=True) * self.centroids  # (B, K, C)
        vlad = F.normalize(vlad, dim=2)  # intra-normalisation
        return self.proj(F.normalize(vlad.flatten(1), dim=1))

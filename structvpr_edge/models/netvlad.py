"""NetVLAD aggregation (Arandjelović et al., CVPR 2016) written as batched matmuls.

The residual sum over clusters ``sum_n a_kn (x_n - c_k)`` equals ``a @ x^T - a.sum(n) * c``, so
every cluster is handled at once by one MatMul: no python loop, and the ONNX graph stays small
and valid for any feature-map size.
"""
from __future__ import annotations

import math

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

    @torch.no_grad()
    def init_from_features(
        self, features: torch.Tensor, iterations: int = 10, max_samples: int = 50_000, seed: int = 0
    ) -> "NetVLAD":
        """Centroids from k-means on sampled, L2-normalised local features; assignment sharpened to match.

        ``features``: backbone maps (B, C, H, W) or local descriptors (N, C). As in the reference
        implementation, the 1x1 conv gets ``alpha * centroid`` with ``alpha`` chosen so the best
        centroid gets about 100x the weight of the second best on average: training starts from
        a near-hard assignment instead of a uniform one.
        """
        if features.dim() == 4:
            features = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
        if features.dim() != 2 or features.shape[1] != self.in_channels:
            raise ModelError(
                f"NetVLAD init expects (B, {self.in_channels}, H, W) or (N, {self.in_channels}), "
                f"got {tuple(features.shape)}"
            )
        if len(features) < self.num_clusters:
            raise ModelError(f"NetVLAD init needs at least {self.num_clusters} local features, got {len(features)}")
        generator = torch.Generator().manual_seed(seed)
        samples = F.normalize(features.float(), dim=1)
        samples = samples[torch.randperm(len(samples), generator=generator)[:max_samples]]
        centroids = samples[: self.num_clusters].clone()  # already a random pick after the shuffle
        for _ in range(iterations):
            nearest = torch.cdist(samples, centroids).argmin(dim=1)
            counts = torch.bincount(nearest, minlength=self.num_clusters)
            sums = torch.zeros_like(centroids).index_add_(0, nearest, samples)
            filled = counts > 0  # an empty cluster keeps its previous centroid
            centroids[filled] = sums[filled] / counts[filled, None]
        directions = F.normalize(centroids, dim=1)
        top2 = (samples @ directions.T).topk(2, dim=1).values
        alpha = -math.log(0.01) / (top2[:, 0] - top2[:, 1]).mean().clamp(min=1e-6).item()
        self.centroids.copy_(centroids)
        self.assign.weight.copy_(alpha * directions[:, :, None, None])
        self.assign.bias.zero_()
        return self

"""MixVPR aggregation (Ali-bey et al., WACV 2023): MLPs that mix the spatial tokens of each channel.

Each Feature-Mixer block sees one channel's whole H*W map as a vector, so the layer has a fixed
input size: the token-mixing Linear layers are sized for ``feature_hw`` and no other. Only
Linear, LayerNorm and ReLU, so it exports to ONNX and TensorRT as plain matmuls.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, ModelError


class FeatureMixer(nn.Module):
    """Residual MLP over the flattened spatial axis: (B, C, HW) -> (B, C, HW)."""

    def __init__(self, hw: int, mlp_ratio: int) -> None:
        super().__init__()
        self.mix = nn.Sequential(
            nn.LayerNorm(hw),
            nn.Linear(hw, hw * mlp_ratio),
            nn.ReLU(),
            nn.Linear(hw * mlp_ratio, hw),
        )
        for layer in self.mix:  # the paper's init: small weights keep each block near identity
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(x)


class MixVPR(nn.Module):
    """(B, C, H, W) with (H, W) == ``feature_hw`` -> (B, out_dim), not L2-normalised.

    ``out_dim = out_channels * out_rows``: channels are projected C -> out_channels and the
    mixed spatial tokens HW -> out_rows, then flattened.
    """

    def __init__(
        self,
        in_channels: int,
        out_dim: int,
        feature_hw: tuple[int, int],
        mix_depth: int = 4,
        mlp_ratio: int = 1,
        out_rows: int = 4,
    ) -> None:
        super().__init__()
        if min(in_channels, out_dim, out_rows, mlp_ratio, *feature_hw) <= 0 or mix_depth < 0:
            raise ConfigError(
                "MixVPR sizes must be positive (mix_depth >= 0), got "
                f"in_channels={in_channels} out_dim={out_dim} feature_hw={feature_hw} "
                f"mix_depth={mix_depth} mlp_ratio={mlp_ratio} out_rows={out_rows}"
            )
        if out_dim % out_rows:
            raise ConfigError(f"MixVPR out_dim ({out_dim}) must be divisible by out_rows ({out_rows})")
        self.in_channels = in_channels
        self.feature_hw = (int(feature_hw[0]), int(feature_hw[1]))
        hw = self.feature_hw[0] * self.feature_hw[1]
        self.mix = nn.Sequential(*(FeatureMixer(hw, mlp_ratio) for _ in range(mix_depth)))
        self.channel_proj = nn.Linear(in_channels, out_dim // out_rows)
        self.row_proj = nn.Linear(hw, out_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Checked eagerly only: while tracing for ONNX the sizes are symbolic and the check would warn.
        if not torch.jit.is_tracing() and (x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, *self.feature_hw)):
            raise ModelError(
                f"MixVPR was built for features (B, {self.in_channels}, {self.feature_hw[0]}, "
                f"{self.feature_hw[1]}), got {tuple(x.shape)}; its token mixing has a fixed "
                "size, so build it with the feature size of the training input"
            )
        x = self.mix(x.flatten(2))  # (B, C, HW)
        x = self.channel_proj(x.transpose(1, 2))  # (B, HW, out_channels)
        x = self.row_proj(x.transpose(1, 2))  # (B, out_channels, out_rows)
        return x.flatten(1)

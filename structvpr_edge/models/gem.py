"""GeM pooling (generalised mean), written as a mean over spatial dims.

A ``mean`` over H and W exports to ONNX as ReduceMean and stays valid for any input size; an
``avg_pool2d`` with a kernel taken from the feature size would freeze that size at trace time.
"""
from __future__ import annotations

import torch
from torch import nn


class GeM(nn.Module):
    """(B, C, H, W) -> (B, C): ``mean(x^p)^(1/p)`` with a learnable ``p``."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learn_p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)

"""MixStyle (Zhou et al., ICLR 2021): in training, each image's per-channel feature mean and std
are mixed with another image's of the batch at the inputs of the trainable backbone blocks (the
last excepted). A batch holds SynthCity and real frames, so the "style" of one domain is laid on
the content of the other, and the heads learn places from what survives the change. Training
only: nothing is saved with the model, and inference and every export are untouched."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

ALPHA = 0.1  # Beta(alpha, alpha) mixing weights: most near 0 or 1, the paper's value
EPS = 1e-6


def mix_styles(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, H, W) normalised per image and channel, then given a mix of its own and a
    random partner's statistics; statistics carry no gradient, as in the paper."""
    mean = x.mean(dim=(2, 3), keepdim=True).detach()
    std = (x.var(dim=(2, 3), keepdim=True) + EPS).sqrt().detach()
    weight = torch.distributions.Beta(ALPHA, ALPHA).sample((x.shape[0], 1, 1, 1)).to(x.device, x.dtype)
    partner = torch.randperm(x.shape[0], device=x.device)
    mixed_mean = weight * mean + (1 - weight) * mean[partner]
    mixed_std = weight * std + (1 - weight) * std[partner]
    return (x - mean) / std * mixed_std + mixed_mean


def attach_mixstyle(backbone: nn.Module, probability: float) -> list[RemovableHandle]:
    """Forward pre-hooks on the trainable blocks but the last: in train mode each mixes its input
    with ``probability``. Returns the handles (``remove()`` detaches)."""
    blocks = list(backbone._blocks[backbone.frozen_blocks :])[:-1]

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        if not module.training or args[0].shape[0] < 2 or torch.rand(()) >= probability:
            return None
        return (mix_styles(args[0]), *args[1:])

    return [block.register_forward_pre_hook(hook) for block in blocks]

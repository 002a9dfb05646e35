"""Metric losses (multi-similarity with its miner, triplet margin), the relational distillation
loss and the auxiliary mask loss. All work on one batch of L2-normalised descriptors."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class MultiSimilarityConfig:
    alpha: float = 1.0  # positive scale
    beta: float = 50.0  # negative scale
    base: float = 0.0  # similarity margin lambda
    epsilon: float = 0.1  # miner margin


def _pair_masks(labels: torch.Tensor, near: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(positives, negatives); ``near``: (B, B) pairs of neighbouring places, neither."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same if near is None else ~same & ~near


def multi_similarity_loss(descriptors: torch.Tensor, labels: torch.Tensor, conf: MultiSimilarityConfig, near: torch.Tensor | None = None) -> torch.Tensor:
    """Wang et al. 2019: mine informative pairs (a negative more similar than the hardest positive
    minus epsilon, a positive less similar than the hardest negative plus epsilon), then soft-weight them."""
    sim = descriptors @ descriptors.T
    pos_mask, neg_mask = _pair_masks(labels, near)
    with torch.no_grad():
        hardest_pos = torch.where(pos_mask, sim, torch.inf).amin(dim=1, keepdim=True)
        hardest_neg = torch.where(neg_mask, sim, -torch.inf).amax(dim=1, keepdim=True)
        pos_keep = pos_mask & (sim - conf.epsilon < hardest_neg)
        neg_keep = neg_mask & (sim + conf.epsilon > hardest_pos)
    pos_term = torch.where(pos_keep, torch.exp(-conf.alpha * (sim - conf.base)), 0).sum(dim=1)
    neg_term = torch.where(neg_keep, torch.exp(conf.beta * (sim - conf.base)), 0).sum(dim=1)
    per_anchor = torch.log1p(pos_term) / conf.alpha + torch.log1p(neg_term) / conf.beta
    active = pos_keep.any(dim=1) | neg_keep.any(dim=1)
    return per_anchor[active].sum() / max(int(active.sum()), 1)


def triplet_margin_loss(descriptors: torch.Tensor, labels: torch.Tensor, margin: float = 0.1, near: torch.Tensor | None = None) -> torch.Tensor:
    """Batch-hard triplet loss on cosine similarity; 0 when no anchor has both a positive and a
    negative (every other place a neighbour), as the multi-similarity loss, not the NaN of an empty mean."""
    sim = descriptors @ descriptors.T
    pos_mask, neg_mask = _pair_masks(labels, near)
    hardest_pos = torch.where(pos_mask, sim, torch.inf).amin(dim=1)
    hardest_neg = torch.where(neg_mask, sim, -torch.inf).amax(dim=1)
    valid = pos_mask.any(dim=1) & neg_mask.any(dim=1)
    per_anchor = F.relu(hardest_neg - hardest_pos + margin)[valid]
    return per_anchor.mean() if len(per_anchor) else per_anchor.sum()  # mean() kept: the same value as before, to the bit


def off_diagonal_log_softmax(sim: torch.Tensor, temperature: float) -> torch.Tensor:
    eye = torch.eye(len(sim), dtype=torch.bool, device=sim.device)
    return (sim / temperature).masked_fill(eye, -torch.inf).log_softmax(dim=1)


def relational_kd(student_sim: torch.Tensor, teacher_sim: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B,) KL(teacher || student) of softened in-batch similarity distributions per anchor (each
    carries its own sample weight): the two live in different spaces, only their structures compare.
    No tau^2 factor (Hinton's, to keep the gradient's size across temperatures): ``distill.weight`` alone scales it."""
    log_p_teacher = off_diagonal_log_softmax(teacher_sim, temperature)
    log_p_student = off_diagonal_log_softmax(student_sim, temperature)
    terms = log_p_teacher.exp() * (log_p_teacher - log_p_student)
    return torch.nan_to_num(terms, nan=0.0).sum(dim=1)


def mask_loss(mask_logits: torch.Tensor, target_fractions: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy between predicted group masks and the label map's group fractions pooled
    to the mask's cells: a mostly ignore-label cell weighs little (its fractions sum to under one)."""
    target = F.adaptive_avg_pool2d(target_fractions, mask_logits.shape[-2:])
    return -(target * mask_logits.log_softmax(dim=1)).sum(dim=1).mean()


def preservation_loss(trunk: torch.Tensor, imagenet_trunk: torch.Tensor) -> torch.Tensor:
    """1 - cosine between the trained backbone's features and the ImageNet backbone's, per location:
    direction only, so the heads may rescale features freely."""
    return (1 - F.cosine_similarity(trunk.float(), imagenet_trunk.float(), dim=1)).mean()

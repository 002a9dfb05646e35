"""What the frozen teacher teaches the student, per anchor of a batch.

The method's term is relational KD: the student's in-batch similarity structure of the aligned
descriptor, and (label split) of each label group's aligned term, matched to the teacher's. The
three terms after it were tried for a stronger signal (issue 9; docs/method.md, Training); each is
(B,), so sample weights apply to it as to the relational term (weights and schedule: ``objective.py``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.alignment import GroupProjection
from ..models.student import StructVPRStudent
from ..models.teacher import AlignedOutput
from .config import DistillConfig
from .losses import relational_kd


def batch_similarities(parts: AlignedOutput, teacher: AlignedOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, B) student and teacher aligned similarities (one inner product each, as FAISS scores)."""
    return parts.descriptor.float() @ parts.descriptor.float().T, teacher.descriptor @ teacher.descriptor.T


def aligned_group_sims(parts: AlignedOutput, alignment: nn.Module) -> torch.Tensor:
    """(K, B, B): each group's presence-weighted similarity, the terms of the aligned similarity."""
    vecs = F.normalize(parts.group_vecs, dim=2)
    scale = alignment.group_scale(parts.presence)
    return torch.einsum("bkd,ckd->kbc", vecs, vecs) * torch.einsum("bk,ck->kbc", scale, scale)


def relational_terms(parts: AlignedOutput, teacher: AlignedOutput, student_model: nn.Module, teacher_model: nn.Module,
                     distill: DistillConfig) -> torch.Tensor:
    """(B,) per-anchor KD: the aligned similarity's in-batch structure, plus (StructVPR++) each
    label group's presence-weighted similarity structure, student against teacher."""
    kd = relational_kd(*batch_similarities(parts, teacher), distill.temperature)
    if distill.per_group and isinstance(student_model, StructVPRStudent):
        student_groups = aligned_group_sims(parts, student_model.alignment).float()
        teacher_groups = aligned_group_sims(teacher, teacher_model.alignment)
        per_group = torch.stack([relational_kd(s, t, distill.temperature) for s, t in zip(student_groups, teacher_groups)])
        kd = kd + distill.group_weight * per_group.mean(dim=0)
    return kd


class FeatureProjector(nn.Module):
    """Linear maps from the student's sub-descriptor spaces to the teacher's (training only)."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        if not isinstance(student, StructVPRStudent):
            raise ConfigError("distill.feature_weight needs the label-aware student (mode structvpr++)")
        groups, student_dim, teacher_dim = student.group_proj.weight.shape[0], student.group_proj.weight.shape[2], teacher.group_proj.weight.shape[2]
        self.global_map = nn.Linear(student.global_proj.out_features, teacher.global_proj.out_features)
        self.group_map = GroupProjection(groups, student_dim, teacher_dim)

    def forward(self, parts: AlignedOutput) -> tuple[torch.Tensor, torch.Tensor]:
        return self.global_map(parts.global_vec.float()), self.group_map(parts.group_vecs.float())


def feature_kd(projected: tuple[torch.Tensor, torch.Tensor], teacher: AlignedOutput) -> torch.Tensor:
    """(B,): mean of the global cosine distance and the teacher-presence-weighted mean over
    groups of the per-group cosine distances (a group the image lacks teaches nothing)."""
    global_vec, group_vecs = projected
    global_term = 1 - F.cosine_similarity(global_vec, teacher.global_vec, dim=1)
    group_distance = 1 - F.cosine_similarity(group_vecs, teacher.group_vecs, dim=2)
    presence = teacher.presence
    group_term = (presence * group_distance).sum(dim=1) / presence.sum(dim=1).clamp_min(1e-6)
    return 0.5 * (global_term + group_term)


def similarity_kd(parts: AlignedOutput, teacher: AlignedOutput) -> torch.Tensor:
    """(B,): mean over the other images of the squared difference of aligned similarities."""
    student_sim, teacher_sim = batch_similarities(parts, teacher)
    off_diagonal = ~torch.eye(len(student_sim), dtype=torch.bool, device=student_sim.device)
    return ((student_sim - teacher_sim) ** 2 * off_diagonal).sum(dim=1) / max(len(student_sim) - 1, 1)


def teacher_ranked_negatives(parts: AlignedOutput, teacher: AlignedOutput, places: torch.Tensor, ids: torch.Tensor,
                             near: torch.Tensor | None = None) -> torch.Tensor:
    """(B,): hinge ``(t_ap - t_an) - (s_ap - s_an)`` with p the teacher's best true match of the
    anchor and n the student's hardest negative among those the teacher ranks below p. Negatives
    the teacher itself confuses with the place are left out: its ranking is trusted only where it
    is right. 0 for an anchor without such a pair.

    ``ids``: each row's image (the sampler's index). A copy of the anchor, as drawn for a place of
    fewer than K images, is no true match (as in ``weights.positive_ranks``). ``near``: (B, B) pairs of
    neighbouring places, never taken as the negative."""
    student_sim, teacher_sim = batch_similarities(parts, teacher)
    same = places[:, None] == places[None, :]
    positive = same & (ids[:, None] != ids[None, :])
    best_pos = torch.where(positive, teacher_sim, -torch.inf).argmax(dim=1, keepdim=True)
    teacher_pos = teacher_sim.gather(1, best_pos)
    trusted = ~same & (teacher_sim < teacher_pos) & positive.any(dim=1, keepdim=True)
    if near is not None:
        trusted &= ~near
    hardest = torch.where(trusted, student_sim, -torch.inf).argmax(dim=1, keepdim=True)
    teacher_gap = teacher_pos - teacher_sim.gather(1, hardest)
    student_gap = student_sim.gather(1, best_pos) - student_sim.gather(1, hardest)
    has_pair = trusted.any(dim=1, keepdim=True)
    return torch.where(has_pair, F.relu(teacher_gap - student_gap), 0).squeeze(1)


"""Sample-wise distillation weights by group partition (StructVPR++).

For each anchor, x is the rank of its best true positive among the batch under the teacher,
y the same under the student. The pair (x, y) puts the sample in one group:

    teacher_right_student_wrong  x <= right_rank < y     most to learn from the teacher
    both_right                   x <= right_rank, y <= right_rank
    teacher_moderate             right_rank < x <= noisy_rank    teacher unsure: less weight
    noisy                        x > noisy_rank          teacher wrong: weight 0

Weights are computed without gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

GROUPS = ("teacher_right_student_wrong", "both_right", "teacher_moderate", "noisy")


@dataclass
class SampleWeightConfig:
    enabled: bool = True
    right_rank: int = 1
    noisy_rank: int = 5
    teacher_right_student_wrong: float = 2.0
    both_right: float = 1.0
    teacher_moderate: float = 0.5
    noisy: float = 0.0


@torch.no_grad()
def positive_ranks(sim: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1-based rank of the most similar same-place image among all other batch images."""
    eye = torch.eye(len(sim), dtype=torch.bool, device=sim.device)
    sim = sim.masked_fill(eye, -torch.inf)
    same = (labels[:, None] == labels[None, :]) & ~eye
    best_pos = torch.where(same, sim, -torch.inf).amax(dim=1, keepdim=True)
    return (sim > best_pos).sum(dim=1) + 1


@torch.no_grad()
def sample_groups(teacher_sim: torch.Tensor, student_sim: torch.Tensor, labels: torch.Tensor, conf: SampleWeightConfig) -> torch.Tensor:
    """Index into GROUPS for every anchor."""
    x = positive_ranks(teacher_sim, labels)
    y = positive_ranks(student_sim, labels)
    group = torch.full_like(x, GROUPS.index("teacher_moderate"))
    group[(x <= conf.right_rank) & (y > conf.right_rank)] = GROUPS.index("teacher_right_student_wrong")
    group[(x <= conf.right_rank) & (y <= conf.right_rank)] = GROUPS.index("both_right")
    group[x > conf.noisy_rank] = GROUPS.index("noisy")
    return group


def group_weights(groups: torch.Tensor, conf: SampleWeightConfig) -> torch.Tensor:
    """Per-anchor weight; all ones when sample weighting is disabled (an ablation)."""
    if not conf.enabled:
        return torch.ones(len(groups), device=groups.device)
    table = torch.tensor([getattr(conf, name) for name in GROUPS], device=groups.device)
    return table[groups]

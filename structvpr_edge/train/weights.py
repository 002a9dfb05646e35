"""Sample-wise distillation weights by group partition (StructVPR++).

For each anchor, x is the rank of its best true positive under the teacher, y the same under
the student, both taken among the batch plus a memory of the last ``memory_batches`` batches
(thousands of images: within one batch of 64 nearly every rank is 1 and the weights say
nothing). The pair (x, y) puts the sample in one group:

    teacher_right_student_wrong  x <= right_rank < y     most to learn from the teacher
    both_right                   x <= right_rank, y <= right_rank
    teacher_moderate             right_rank < x <= noisy_rank    teacher unsure: less weight
    noisy                        x > noisy_rank          teacher wrong: weight 0
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

GROUPS = ("teacher_right_student_wrong", "both_right", "teacher_moderate", "noisy")


@dataclass
class SampleWeightConfig:
    enabled: bool = True
    memory_batches: int = 64  # 0: ranks among the batch alone
    right_rank: int = 1
    noisy_rank: int = 5
    teacher_right_student_wrong: float = 2.0
    both_right: float = 1.0
    teacher_moderate: float = 0.5
    noisy: float = 0.0


@dataclass
class Keys:
    """The images an anchor is ranked against: descriptors under both models, places, image ids."""

    teacher: torch.Tensor
    student: torch.Tensor
    places: torch.Tensor
    ids: torch.Tensor


class RankMemory:
    """First-in first-out memory of recent batches' descriptors (no gradient; slightly stale)."""

    def __init__(self, batches: int) -> None:
        self.entries: deque[Keys] = deque(maxlen=batches)  # maxlen 0 remembers nothing

    def keys(self, batch: Keys) -> Keys:
        """The batch itself first, then the remembered batches."""
        entries = [batch, *self.entries]
        return Keys(*(torch.cat([getattr(e, f) for e in entries]) for f in ("teacher", "student", "places", "ids")))

    def push(self, batch: Keys) -> None:
        self.entries.appendleft(Keys(batch.teacher.detach(), batch.student.detach(), batch.places, batch.ids))

    def state(self) -> list[dict[str, torch.Tensor]]:
        """The remembered batches, newest first, as plain data: a resume file keeps them, so that a
        resumed run ranks its first batches as the run it continues would have."""
        return [dict(vars(entry)) for entry in self.entries]

    def restore(self, state: list[dict[str, torch.Tensor]], device: torch.device) -> None:
        self.entries.clear()
        self.entries.extend(Keys(**{name: value.to(device) for name, value in entry.items()}) for entry in state)


@torch.no_grad()
def positive_ranks(sim: torch.Tensor, places: torch.Tensor, key_places: torch.Tensor, ids: torch.Tensor, key_ids: torch.Tensor,
                   near: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank of each anchor's most similar same-place image among the keys.

    ``sim`` is (anchors, keys). Copies of the anchor image itself (same id) and images of
    neighbouring places (``near``, (anchors, keys)) are neither positives nor negatives; an anchor
    without any other image of its place ranks last.
    """
    same_image = ids[:, None] == key_ids[None, :]
    same_place = (places[:, None] == key_places[None, :]) & ~same_image
    sim = sim.masked_fill(same_image if near is None else same_image | near, -torch.inf)
    best_pos = torch.where(same_place, sim, -torch.inf).amax(dim=1, keepdim=True)
    return ((sim > best_pos) & ~same_place).sum(dim=1) + 1


@torch.no_grad()
def sample_groups(batch: Keys, keys: Keys, conf: SampleWeightConfig, near: torch.Tensor | None = None) -> torch.Tensor:
    """Index into GROUPS for every anchor of ``batch``, ranked among ``keys`` (``near``: pairs left out)."""
    x = positive_ranks(batch.teacher @ keys.teacher.T, batch.places, keys.places, batch.ids, keys.ids, near)
    y = positive_ranks(batch.student @ keys.student.T, batch.places, keys.places, batch.ids, keys.ids, near)
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

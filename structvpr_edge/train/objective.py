"""The training objective in one table: every loss term with its name, weight, function and schedule.

A step minimises the sum over the table of ``weight * schedule(step) * loss(batch)``. Each weight
is the term's own multiplier, read from one config key (the relational KD is a plain KL
divergence, so ``distill.weight`` is its weight); a term whose weight is 0 is not in the table.
The distillation terms are per anchor, averaged with the anchors' sample weights
(``weights.py``), and share the KD warm-up. A term's name is ``part`` or ``part/term``: the log
holds one value per part (``metric``, ``mask``, ``distill``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..models.teacher import AlignedOutput
from .config import OptimConfig, Recipe, TrainConfig
from .distill import FeatureProjector, feature_kd, relational_terms, similarity_kd, teacher_ranked_negatives
from .losses import mask_loss, multi_similarity_loss, preservation_loss, triplet_margin_loss
from .weights import SampleWeightConfig, group_weights


@dataclass
class Batch:
    """What one step's terms read."""

    parts: AlignedOutput  # the trained model's outputs
    places: torch.Tensor  # (B,) place label of each image
    ids: torch.Tensor  # (B,) the sampler's index of each image: a place of fewer than K images repeats one
    fractions: torch.Tensor | None = None  # label-group fractions: the mask target
    teacher: AlignedOutput | None = None  # the frozen teacher's outputs
    sample_groups: torch.Tensor | None = None  # (B,) index into weights.GROUPS, with a teacher
    imagenet_trunk: torch.Tensor | None = None  # the ImageNet backbone's features, with feature preservation
    real: torch.Tensor | None = None  # (B,) True where the image is a real frame, with real frames in training
    near: torch.Tensor | None = None  # (B, B) pairs of other places closer than neighbour_m: neither positive nor negative


Schedule = Callable[[int], float]


def constant(step: int) -> float:
    return 1.0


def linear_decay(steps: int) -> Schedule:
    """1 at step 0, falling linearly to 0 at ``steps``."""
    return lambda step: 1 - step / steps


def linear_warmup(steps: int) -> Schedule:
    """Rising linearly from 0 at step 0 to 1 at ``steps``, then 1; 0 steps: 1 from the start."""
    return (lambda step: min(1.0, step / steps)) if steps > 0 else constant


@dataclass(frozen=True)
class Term:
    name: str
    weight: float
    loss: Callable[[Batch], torch.Tensor]  # a scalar
    schedule: Schedule = constant

    def __call__(self, batch: Batch, step: int) -> torch.Tensor:
        return self.weight * self.schedule(step) * self.loss(batch)


def anchor_weights(batch: Batch, samples: SampleWeightConfig, real_weight: float) -> torch.Tensor:
    """(B,) each anchor's sample-group weight, times ``real_weight`` where it is a real frame."""
    weights = group_weights(batch.sample_groups, samples)
    return weights if batch.real is None else torch.where(batch.real, real_weight * weights, weights)


def sample_weighted(per_anchor: Callable[[Batch], torch.Tensor], samples: SampleWeightConfig, real_weight: float) -> Callable[[Batch], torch.Tensor]:
    """The mean over anchors of a (B,) term, each anchor weighted by ``anchor_weights``."""
    return lambda batch: (anchor_weights(batch, samples, real_weight) * per_anchor(batch)).mean()


def objective(config: TrainConfig, recipe: Recipe, optim: OptimConfig, model: nn.Module, teacher: nn.Module | None = None,
              projector: FeatureProjector | None = None) -> list[Term]:
    """The loss terms of one stage: ``model`` trained by ``optim``, distilled from ``teacher`` (None:
    no distillation; the trainer loads one where ``recipe.distill``)."""
    if optim.loss == "triplet":
        metric = Term("metric", 1.0, lambda b: triplet_margin_loss(b.parts.descriptor.float(), b.places, optim.triplet_margin, b.near))
    else:
        metric = Term("metric", 1.0, lambda b: multi_similarity_loss(b.parts.descriptor.float(), b.places, optim.multi_similarity, b.near))
    terms = [metric]
    if recipe.mask_loss:
        decay = linear_decay(optim.steps) if config.mask_loss_decay else constant
        terms.append(Term("mask", config.mask_loss_weight, lambda b: mask_loss(b.parts.mask_logits.float(), b.fractions), decay))
    if recipe.rgb:
        terms.append(Term("preserve", config.preserve_weight, lambda b: preservation_loss(b.parts.trunk, b.imagenet_trunk)))
    if teacher is not None:
        kd, warmup = config.distill, linear_warmup(config.distill.warmup_steps)
        per_anchor = {
            "distill/relational": (kd.weight, lambda b: relational_terms(b.parts, b.teacher, model, teacher, kd)),
            "distill/feature": (kd.feature_weight, lambda b: feature_kd(projector(b.parts), b.teacher)),
            "distill/similarity": (kd.similarity_weight, lambda b: similarity_kd(b.parts, b.teacher)),
            "distill/negatives": (kd.negative_weight, lambda b: teacher_ranked_negatives(b.parts, b.teacher, b.places, b.ids, b.near)),
        }
        terms += [Term(name, weight, sample_weighted(term, kd.samples, kd.real_weight), warmup) for name, (weight, term) in per_anchor.items()]
    return [term for term in terms if term.weight > 0]


def part_values(terms: list[Term], batch: Batch, step: int) -> dict[str, torch.Tensor]:
    """Each part's loss this step (the sum of its terms), in table order; their sum is minimised."""
    parts: dict[str, torch.Tensor] = {}
    for term in terms:
        part = term.name.split("/")[0]
        value = term(batch, step)
        parts[part] = parts[part] + value if part in parts else value
    return parts

"""The gradient share of each distillation term over the first batches of an untrained StructVPR++
student (benchmarks/kd_shares.py): the weight that gives a new term the relational term's share."""
from __future__ import annotations

from pathlib import Path

import torch

from ..train.config import dotted_overrides, load_config
from ..train.data import PlaceBatchSampler
from ..train.distill import feature_kd, relational_terms, similarity_kd, teacher_ranked_negatives
from ..train.objective import Batch
from ..train.trainer import Stage, gradient_ratio, setup_context
from ..train.weights import Keys, group_weights, sample_groups

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "structvprpp.yaml"


def gradient_shares(dataset: str, teacher: str, batches: int, settings: list[str]) -> dict[str, list[float]]:
    """Term -> ||grad term|| / ||grad metric loss|| over the trainable weights, per batch: the
    relational KD at the configured ``distill.weight``, the other terms at weight 1."""
    overrides = dotted_overrides([f"dataset={dataset}", f"teacher_checkpoint={teacher}", "distill.feature_weight=1", *settings])
    config = load_config(CONFIG, overrides)
    stage = Stage(config, "student", Path("/tmp/kd-shares"), setup_context("cpu"), Path(teacher))
    distill = config.distill
    sampler = iter(PlaceBatchSampler(stage.groups.places, config.optim.places_per_batch, config.optim.images_per_place, config.seed))
    shares: dict[str, list[float]] = {"relational": [], "feature": [], "similarity": [], "negatives": []}
    for _ in range(batches):
        _, indices, place_labels = next(sampler)
        labels = torch.from_numpy(place_labels)
        parts = stage.parts(stage.model_input(stage.inputs, stage.fractions, indices))
        with torch.no_grad():
            taught = stage.teacher.forward_parts(stage.fraction_tensor(stage.fractions, indices))
        ids, near = torch.from_numpy(indices), stage.near(labels, labels)  # near: None unless neighbour_m is set
        batch = Keys(taught.descriptor, parts.descriptor, labels, ids)
        weights = group_weights(sample_groups(batch, batch, distill.samples, near), distill.samples)
        metric = next(term for term in stage.terms if term.name == "metric").loss(Batch(parts, labels, ids, near=near))
        terms = {
            "relational": distill.weight * relational_terms(parts, taught, stage.model, stage.teacher, distill),
            "feature": feature_kd(stage.projector(parts), taught),
            "similarity": similarity_kd(parts, taught),
            "negatives": teacher_ranked_negatives(parts, taught, labels, ids, near),
        }
        for name, term in terms.items():
            ratio = gradient_ratio((weights * term).mean(), metric, stage.model)
            if ratio is not None:
                shares[name].append(ratio)
    return shares

"""The gradient share of each distillation term, to give a new term a weight that carries.

    python benchmarks/kd_shares.py --dataset data/synthcity-bench --teacher runs/table/teacher-1000/s0/model.pt \
        [--batches 20] [--set distill.feature_weight=1 ...]

For every term (the relational KD at the configured ``distill.weight``, then each of
``feature``, ``similarity`` and ``negatives`` at weight 1), over the first batches of an
untrained StructVPR++ student: the median of ||grad term|| / ||grad metric loss|| over the
trainable weights. A weight that gives a new term the relational term's share is
``share(relational) / share(term)``; the weights are then chosen among such points on val.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from structvpr_edge.train.config import dotted_overrides, load_config
from structvpr_edge.train.data import PlaceBatchSampler
from structvpr_edge.train.distill import feature_kd, relational_terms, similarity_kd, teacher_ranked_negatives
from structvpr_edge.train.trainer import Stage, gradient_ratio, setup_context
from structvpr_edge.train.weights import Keys, group_weights, sample_groups

CONFIG = Path(__file__).resolve().parents[1] / "structvpr_edge" / "configs" / "structvprpp.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--teacher", required=True, help="a trained teacher checkpoint")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = dotted_overrides([f"dataset={args.dataset}", f"teacher_checkpoint={args.teacher}", "distill.feature_weight=1", *args.set])
    config = load_config(CONFIG, overrides)
    stage = Stage(config, "student", Path("/tmp/kd-shares"), setup_context("cpu"), Path(args.teacher))
    distill = config.distill
    batches = iter(PlaceBatchSampler(stage.groups.places, config.optim.places_per_batch, config.optim.images_per_place, config.seed))
    shares: dict[str, list[float]] = {"relational": [], "feature": [], "similarity": [], "negatives": []}
    for _ in range(args.batches):
        _, indices, place_labels = next(batches)
        labels = torch.from_numpy(place_labels)
        parts = stage.parts(stage.model_input(stage.inputs, stage.fractions, indices))
        with torch.no_grad():
            teacher = stage.teacher.forward_parts(stage.fraction_tensor(stage.fractions, indices))
        batch = Keys(teacher.descriptor, parts.descriptor, labels, torch.from_numpy(indices))
        weights = group_weights(sample_groups(batch, batch, distill.samples), distill.samples)
        metric = stage.metric_loss(parts.descriptor, labels)
        terms = {
            "relational": distill.weight * relational_terms(parts, teacher, stage.model, stage.teacher, distill),
            "feature": feature_kd(stage.projector(parts), teacher),
            "similarity": similarity_kd(parts, teacher),
            "negatives": teacher_ranked_negatives(parts, teacher, labels),
        }
        for name, term in terms.items():
            ratio = gradient_ratio((weights * term).mean(), metric, stage.model)
            if ratio is not None:
                shares[name].append(ratio)
    relational = float(np.median(shares["relational"]))
    print(f"median gradient share over {args.batches} batches (untrained student, teacher {args.teacher}):")
    for name, values in shares.items():
        share = float(np.median(values))
        matching = f"  weight for the relational share: {relational / share:.3g}" if name != "relational" and share > 0 else ""
        print(f"  {name:<11} {share:.4f}{matching}")


if __name__ == "__main__":
    main()

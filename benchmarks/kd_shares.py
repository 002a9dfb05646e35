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

import numpy as np

from structvpr_edge.bench.kd_shares import gradient_shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--teacher", required=True, help="a trained teacher checkpoint")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    shares = gradient_shares(args.dataset, args.teacher, args.batches, args.set)
    relational = float(np.median(shares["relational"]))
    print(f"median gradient share over {args.batches} batches (untrained student, teacher {args.teacher}):")
    for name, values in shares.items():
        share = float(np.median(values))
        matching = f"  weight for the relational share: {relational / share:.3g}" if name != "relational" and share > 0 else ""
        print(f"  {name:<11} {share:.4f}{matching}")


if __name__ == "__main__":
    main()

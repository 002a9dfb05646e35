"""How well a StructVPR++ student's group masks match the label maps, per query condition.

    python benchmarks/mask_quality.py --dataset data/bench --model structvprpp --model runs/no-mask-loss/model.pt

For every query of the split, the student's soft masks (softmax over the label groups, on its
feature grid) are compared with the label map's group fractions pooled to the same grid:
overlap = mean over cells of sum_k min(predicted_k, true_k) (1 = the same masks, the share of
each cell the prediction puts on the right groups), and per-group IoU of the argmax on cells one
group dominates. Answers "does the student still predict where each group is, and is that
harder in some conditions (bare trees in winter, say)?".
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from structvpr_edge.data.dataset import load_dataset
from structvpr_edge.errors import DatasetError, ModelError
from structvpr_edge.eval.masks import mask_scores, summarise
from structvpr_edge.labels import LABEL_GROUPS
from structvpr_edge.models.checkpoint import load_checkpoint
from structvpr_edge.models.student import StructVPRStudent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", action="append", required=True, help="StructVPR++ checkpoint or shipped name")
    parser.add_argument("--json", help="write the summary here")
    args = parser.parse_args()
    queries = load_dataset(args.dataset, args.split).queries
    if queries.label_paths is None:
        raise DatasetError(f"{args.dataset}/{args.split} has no label maps to compare the masks with")
    conditions = np.array(queries.column("condition") or ["all"] * len(queries))
    report = {}
    for name in args.model:
        model, meta = load_checkpoint(name)
        if not isinstance(model, StructVPRStudent):
            raise ModelError(f"{name} is a {meta['model_type']} model: only StructVPR++ students predict masks")
        scores = mask_scores(model, tuple(meta["input"]["size"]), queries.paths, queries.label_paths)
        report[name] = {"all": summarise(scores, np.arange(len(conditions)))}
        report[name].update({c: summarise(scores, np.flatnonzero(conditions == c)) for c in sorted(set(conditions))})
    print("| model | condition | overlap | " + " | ".join(f"{g} IoU" for g in LABEL_GROUPS) + " |")
    print("|" + " --- |" * (3 + len(LABEL_GROUPS)))
    for name, by_condition in report.items():
        for condition, s in by_condition.items():
            print(f"| {name} | {condition} | {s['overlap']:.3f} | " + " | ".join(f"{v:.3f}" for v in s["iou"].values()) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

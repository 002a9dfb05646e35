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

from structvpr_edge.bench.quality import mask_report
from structvpr_edge.labels import LABEL_GROUPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", action="append", required=True, help="StructVPR++ checkpoint or shipped name")
    parser.add_argument("--json", help="write the summary here")
    args = parser.parse_args()
    report = mask_report(args.dataset, args.split, args.model)
    print("| model | condition | overlap | " + " | ".join(f"{g} IoU" for g in LABEL_GROUPS) + " |")
    print("|" + " --- |" * (3 + len(LABEL_GROUPS)))
    for name, by_condition in report.items():
        for condition, s in by_condition.items():
            print(f"| {name} | {condition} | {s['overlap']:.3f} | " + " | ".join(f"{v:.3f}" for v in s["iou"].values()) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

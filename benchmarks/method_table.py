"""Recall@1/5/10 overall and per condition for every row of the method table, in one go.

    python benchmarks/method_table.py --dataset data/synthcity-bench \
        --row pixels --row imagenet-gem --row label-oracle \
        --row teacher=runs/teacher/model.pt --row baseline=runs/baseline/model.pt ... \
        --json runs/method_table.json

A row is a model name (built-in reference or shipped model) or NAME=CHECKPOINT. Prints a
markdown table (recalls in %) and writes every evaluation report as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from structvpr_edge.data.dataset import load_dataset  # noqa: E402
from structvpr_edge.eval.evaluate import evaluate  # noqa: E402
from structvpr_edge.eval.models import load_extractor  # noqa: E402
from structvpr_edge.eval.plots import plot_recall_curves  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--row", action="append", required=True, help="NAME or NAME=CHECKPOINT")
    parser.add_argument("--image-size", default=None, help="WxH for RGB models (default: the model's own)")
    parser.add_argument("--json", help="write all reports here")
    parser.add_argument("--plot", help="Recall@N curves of every row (PNG)")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.image_size.split("x")) if args.image_size else None
    dataset = load_dataset(args.dataset, args.split)
    reports = {}
    for row in args.row:
        name, _, model = row.partition("=")
        reports[name] = evaluate(load_extractor(model or name, image_size=size), dataset).to_json()
        print(f"{name}: R@1 {100 * reports[name]['recall']['1']:.1f}", flush=True)
        if args.json:  # after every row, so a run cut short keeps what it measured
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(reports, indent=2) + "\n")
    conditions = sorted({c for r in reports.values() for c in r["per_condition"]})
    header = ["model", "R@1", "R@5", "R@10", *[f"{c} R@1" for c in conditions]]
    print("\n| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for name, report in reports.items():
        cells = [f"{100 * report['recall'][n]:.1f}" for n in ("1", "5", "10")]
        cells += [f"{100 * report['per_condition'][c]['1']:.1f}" if c in report["per_condition"] else "" for c in conditions]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.plot:
        plot_recall_curves({name: r["recall"] for name, r in reports.items()}, Path(args.plot), title=f"{Path(args.dataset).name}/{args.split}")


if __name__ == "__main__":
    main()

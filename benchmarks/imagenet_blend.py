"""Finished runs blended back toward ImageNet at several shares, read on the val (issue 23).

    python benchmarks/imagenet_blend.py --dataset data/synthcity-bench --out runs/blend \
        --row r-filmed=runs/real23/espnet/r-filmed-1000 [--row shipped=structvpr_edge/weights/structvprpp.pt] \
        [--shares 0,0.2,0.4,0.6] [--seeds 0,1,2] [--json runs/blend/table.json] [--plot docs/figures/imagenet-blend.png]

Each row is a method-table run folder (its ``s*/model.pt`` seeds; --seeds picks them, a missing one
refused, default every seed present) or one checkpoint. The JSON records --seeds. Every seed is
blended at every share (``imagenet_blend`` in train/config.py), written under ``--out`` (ship one
with ``structvpr-edge ship``) and measured on SynthCity val and the real val: corridor R@1/R@5 and
CamVid-val mask mIoU. Prints mean ± std over the seeds; the share is chosen on these columns only.
A checkpoint already blended (the shipped file: 0.2) is blended further, and its rows are named by the
share it ends at: ``shipped`` at ``--shares 0,0.2`` reads as ``a=0.2`` and ``a=0.36``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from structvpr_edge.bench.blend import blend_table, plot_blend
from structvpr_edge.bench.table import parse_seeds, summarize
from structvpr_edge.data.dataset import load_dataset
from structvpr_edge.files import replace_whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="the SynthCity dataset whose val split is read")
    parser.add_argument("--row", action="append", required=True, metavar="NAME=RUNS", help="a run folder with s*/model.pt, or a checkpoint")
    parser.add_argument("--shares", default="0,0.2,0.3,0.4,0.5,0.6,0.7,0.8")
    parser.add_argument("--seeds", type=parse_seeds, help="the seeds of each run folder: a count (0..N-1) or a comma-separated list "
                        "(default: every s*/model.pt present)")
    parser.add_argument("--out", required=True, help="where the blended checkpoints go (git-ignored, e.g. runs/blend)")
    parser.add_argument("--corridor", default="../shared/data/corridor")
    parser.add_argument("--camvid", default="../shared/data/camvid")
    parser.add_argument("--json", help="every seed's figures (default OUT/table.json)")
    parser.add_argument("--plot", help="a PNG of corridor and val R@1 against the share")
    args = parser.parse_args()
    if not all("=" in spec for spec in args.row):
        parser.error("--row is NAME=RUNS")
    rows = {name: Path(runs) for name, runs in (spec.split("=", 1) for spec in args.row)}
    try:
        shares = [float(s) for s in args.shares.split(",")]
    except ValueError:
        parser.error(f"--shares is a comma-separated list of numbers in [0, 1], got {args.shares!r}")
    out = Path(args.out)
    results = blend_table(rows, shares, out, load_dataset(args.dataset, "val"), Path(args.corridor), Path(args.camvid), args.seeds)
    record = {"seeds": "all present" if args.seeds is None else args.seeds, "results": results}
    replace_whole(args.json or out / "table.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    if args.plot:
        print(f"plot: {plot_blend(results, Path(args.plot))}")
    print(summarize(results, ["val", "corridor R@1", "corridor R@5", "camvid mIoU"]))


if __name__ == "__main__":
    main()

"""Train every row of the method table on several seeds with one budget, then print mean +- std.

    python benchmarks/method_table.py --dataset data/synthcity-bench --runs runs/table \
        [--rows baseline,baseline-head,student-nokd,global-kd,group-kd,relational-kd,negatives-kd,structvprpp,structvpr] \
        [--row 'kd-w0.1=structvprpp.yaml:distill.weight=0.1'] [--seeds 3] [--steps 1000] [--jobs 1] [--test]
        [--distill-set distill.weight=0.1] [--set real.root=../shared/data/camvid] [--real-val] [--deadline-min M]

Val R@1 (the last validation of each run) is always reported: settings are chosen on it.
``--test`` also evaluates every finished run on the test split, for the report (read once per
finished model). ``--real-val`` adds the real val columns: corridor R@1 / R@5 and the students'
mask mIoU on CamVid val. Writes every run's figures to --json (default RUNS/table-STEPS.json),
replacing the rows of this call and keeping the others. A requested seed whose run did not finish
stays there as ``"finished": false``, and its row prints ``K of N`` seeds and ``(n=K of N requested)``.
A finished run in --runs trained with another config (--set, --distill-set, --dataset, the row's
YAML) is refused, its differing keys named: runs are kept by row, steps and seed only.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from structvpr_edge.bench.table import ROWS, parse_row, parse_seeds, provenance_warning, summarize, table_results, train_table
from structvpr_edge.data.dataset import load_dataset

DEFAULT_ROWS = "baseline,baseline-head,student-nokd,global-kd,group-kd,relational-kd,negatives-kd,structvprpp,structvpr"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--runs", required=True, help="folder of the runs (git-ignored, e.g. runs/table)")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated rows of {sorted(ROWS)}")
    parser.add_argument("--row", action="append", default=[], help="an extra row NAME=CONFIG.yaml[:KEY=VALUE...]")
    parser.add_argument("--seeds", type=parse_seeds, default="3", help="how many seeds (0..N-1), or a comma-separated list of seeds ('1,' is seed 1 alone)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--teacher-steps", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (1 on a 2-core CPU; several on a GPU)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--distill-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an option for every row that distils (e.g. distill.weight=0.1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="an option for every row and the teachers (e.g. real.root=../shared/data/camvid)")
    parser.add_argument("--real-val", action="store_true", help="add the real val columns (corridor R@1/R@5, CamVid-val mask mIoU)")
    parser.add_argument("--corridor", default="../shared/data/corridor", help="the real place-recognition val")
    parser.add_argument("--camvid", default="../shared/data/camvid", help="real street frames with labels (val split)")
    parser.add_argument("--deadline-min", type=float, default=None, help="start no run after this many minutes")
    parser.add_argument("--test", action="store_true", help="also evaluate every finished run on the test split")
    parser.add_argument("--json", help="where to write every run's figures (default RUNS/table-STEPS.json)")
    args = parser.parse_args()
    rows = [parse_row(spec) for spec in args.rows.split(",") if spec] + [parse_row(spec) for spec in args.row]
    seeds, runs = args.seeds, Path(args.runs)
    deadline = time.time() + 60 * args.deadline_min if args.deadline_min is not None else None
    train_table(rows, args.dataset, seeds, args.steps, runs, args.jobs, args.teacher_steps, args.threads, tuple(args.distill_set), deadline,
                overrides=tuple(args.overrides))
    test = load_dataset(args.dataset, "test") if args.test else None
    real = (Path(args.corridor), Path(args.camvid)) if args.real_val else None
    results = table_results(rows, args.dataset, seeds, args.steps, args.teacher_steps, runs, real, test, tuple(args.distill_set), tuple(args.overrides))
    out = Path(args.json or runs / f"table-{args.steps}.json")
    earlier = json.loads(out.read_text()) if out.is_file() else {}  # rows of earlier calls into the same runs stay
    out.write_text(json.dumps(earlier | results, indent=2) + "\n")
    columns = sorted({c for runs_ in results.values() for r in runs_ for c in r if c not in ("seed", "finished", "kd_grad_ratio", "provenance")},
                     key=lambda c: (c != "val", c != "test", c))
    print(summarize(results, columns))
    warning = provenance_warning(results)
    if warning:
        print(f"\n{warning}")
    print("\nKD share of the gradient (median over logged steps of ||grad KD|| / ||grad metric||):")
    for name, runs_ in results.items():
        ratios = [r["kd_grad_ratio"] for r in runs_ if r.get("kd_grad_ratio") is not None]
        if ratios:
            print(f"  {name}: {sum(ratios) / len(ratios):.3f}")


if __name__ == "__main__":
    main()

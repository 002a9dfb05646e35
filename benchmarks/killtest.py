"""Crash and race test of map writes: SIGKILL a writer at random moments of an append + save,
then open the map and classify what a vehicle would find; and race two appenders.

    python benchmarks/killtest.py --entries 50000 --trials 200          # kills during saves
    python benchmarks/killtest.py --entries 50000 --races 10            # concurrent double appends
    python benchmarks/killtest.py --trials 0 --export 100 --calibrate 100  # kills of the CLI writers

Kills: the map starts with ``--entries`` entries; each trial forks a writer that appends
``--append`` entries and saves, and kills it (SIGKILL) at a uniformly random moment of that
write (its length measured first). Outcomes: unopenable (load raises), partial (opens, but the
entries are neither the old nor the new set), old-whole, new-whole (the kill came after the
switch, or the write had finished). Races: two forked writers load the same generation, meet at
a barrier, append distinct entries and save; every appended entry must be in the final map.

CLI writers: ``structvpr-edge export --model structvprpp`` over a good model.onnx, and
``structvpr-edge calibrate`` (``--num 4`` random frames) over a good kit, each SIGKILLed at a
uniformly random moment of its measured run time. Outcomes: whole (the export is byte-identical
to an uninterrupted one; the kit passes check_kit), refused (opening raises our typed error),
and the failures loads-mixed and untyped-error.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from functools import partial
from pathlib import Path

import cv2

from structvpr_edge.bench.killtest import cli_kill_trials, file_sha, inspect_export, inspect_kit, kill_trials, make_map, race_trials, run_seconds
from structvpr_edge.bench.rig import camera_frames

CLI = [sys.executable, "-m", "structvpr_edge.cli"]


def cli_targets(tmp: Path, export: int, calibrate: int, seed: int) -> None:
    """Kill export and calibrate; each target first runs once whole (its good artifact and run time)."""
    onnx = tmp / "model.onnx"
    export_argv = [*CLI, "export", "--model", "structvprpp", "--out", str(onnx)]
    window = run_seconds(export_argv)
    if export:
        counts = cli_kill_trials("export", export_argv, partial(inspect_export, onnx, file_sha(onnx)), export, window, seed)
        print(f"{export} SIGKILLs during export ({window:.1f} s a run): " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    if calibrate:
        frames = tmp / "frames"
        frames.mkdir()
        for i, frame in enumerate(camera_frames(8, (320, 240))):
            cv2.imwrite(str(frames / f"{i}.png"), frame)
        kit = tmp / "kit"
        argv = [*CLI, "calibrate", "--model", str(onnx), "--dataset", str(frames), "--num", "4", "--out", str(kit)]
        window = run_seconds(argv)
        counts = cli_kill_trials("calibrate", argv, partial(inspect_kit, kit), calibrate, window, seed)
        print(f"{calibrate} SIGKILLs during calibrate ({window:.1f} s a run): " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    print(f"  temporaries the kills left beside the outputs: {len(list(tmp.glob('.*.tmp-*')))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=50_000, help="entries of the map before the first trial")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--append", type=int, default=16, help="entries each writer appends")
    parser.add_argument("--trials", type=int, default=200, help="SIGKILL trials (0: none)")
    parser.add_argument("--races", type=int, default=0, help="concurrent double-append trials")
    parser.add_argument("--export", type=int, default=0, help="SIGKILLs of structvpr-edge export")
    parser.add_argument("--calibrate", type=int, default=0, help="SIGKILLs of structvpr-edge calibrate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the CLI kills' moments")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="killtest-") as tmp:
        directory = Path(tmp) / "map"
        if args.trials or args.races:
            make_map(directory, args.entries, args.dim)
        if args.trials:
            counts = kill_trials(directory, args.trials, args.append)
            print(f"{args.trials} SIGKILLs during append+save of a {args.entries}-entry map (dim {args.dim}):")
            print("  " + ", ".join(f"{name}: {counts[name]}" for name in counts))
        if args.races:
            counts = race_trials(directory, args.races, args.append)
            print(f"{args.races} concurrent double appends ({args.append} entries each) on a {args.entries}-entry map:")
            print("  " + ", ".join(f"{name}: {counts[name]}" for name in counts))
        if args.export or args.calibrate:
            cli_targets(Path(tmp), args.export, args.calibrate, args.seed)


if __name__ == "__main__":
    main()

"""Crash and race test of map writes: SIGKILL a writer at random moments of an append + save,
then open the map and classify what a vehicle would find; and race two appenders.

    python benchmarks/killtest.py --entries 50000 --trials 200          # kills during saves
    python benchmarks/killtest.py --entries 50000 --races 10            # concurrent double appends

Kills: the map starts with ``--entries`` entries; each trial forks a writer that appends
``--append`` entries and saves, and kills it (SIGKILL) at a uniformly random moment of that
write (its length measured first). Outcomes: unopenable (load raises), partial (opens, but the
entries are neither the old nor the new set), old-whole, new-whole (the kill came after the
switch, or the write had finished). Races: two forked writers load the same generation, meet at
a barrier, append distinct entries and save; every appended entry must be in the final map.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from structvpr_edge.bench.killtest import kill_trials, make_map, race_trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=50_000, help="entries of the map before the first trial")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--append", type=int, default=16, help="entries each writer appends")
    parser.add_argument("--trials", type=int, default=200, help="SIGKILL trials (0: none)")
    parser.add_argument("--races", type=int, default=0, help="concurrent double-append trials")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="killtest-") as tmp:
        directory = Path(tmp) / "map"
        make_map(directory, args.entries, args.dim)
        if args.trials:
            counts = kill_trials(directory, args.trials, args.append)
            print(f"{args.trials} SIGKILLs during append+save of a {args.entries}-entry map (dim {args.dim}):")
            print("  " + ", ".join(f"{name}: {counts[name]}" for name in counts))
        if args.races:
            counts = race_trials(directory, args.races, args.append)
            print(f"{args.races} concurrent double appends ({args.append} entries each) on a {args.entries}-entry map:")
            print("  " + ", ".join(f"{name}: {counts[name]}" for name in counts))


if __name__ == "__main__":
    main()

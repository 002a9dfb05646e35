#!/usr/bin/env bash
# The method table on a CUDA machine: generate the SynthCity benchmark, train every row with the
# same step budget as the CPU configs (benchmarks/method_table.sh), evaluate the trained rows.
#   bash benchmarks/gpu_table.sh OUT_DIR [STEPS]
# Finished runs are copied to OUT_DIR as they complete (logs, curves, checkpoints).
set -euo pipefail
OUT=${1:?output folder}
STEPS=${2:-1000}
D=/tmp/synthcity-bench
mkdir -p "$OUT"
[ -f "$D/synthcity.json" ] || python3 -m structvpr_edge.cli synth --out "$D" --seed 0 --preset benchmark > "$OUT/synth.log" 2>&1
SKIP_REFERENCES=1 bash benchmarks/method_table.sh "$D" "$STEPS" 12 > "$OUT/table.log" 2>&1 &
TABLE=$!
while kill -0 $TABLE 2>/dev/null; do
  for run in runs/*/; do
    name=$(basename "$run")
    if [ -f "$run/model.pt" ] && [ ! -f "$OUT/$name.tgz" ]; then tar czf "$OUT/$name.tgz" --exclude=last.pt -C runs "$name"; fi
  done
  sleep 5
done
wait $TABLE
cp runs/method_table.json runs/method_table.png "$OUT/" 2>/dev/null || true
for run in runs/*/; do
  name=$(basename "$run")
  if [ -f "$run/model.pt" ] && [ ! -f "$OUT/$name.tgz" ]; then tar czf "$OUT/$name.tgz" --exclude=last.pt -C runs "$name"; fi
done

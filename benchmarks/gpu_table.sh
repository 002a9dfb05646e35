#!/usr/bin/env bash
# The method table on a CUDA machine: generate the SynthCity benchmark, train every row with the
# same step budget as the CPU (benchmarks/method_table.sh, JOBS rows at once on the one GPU),
# evaluate them. Every 20 s the logs, the table so far and the StructVPR++ and teacher
# checkpoints are packed into OUT_DIR, so a run cut short still returns what it finished.
#   [JOBS=6] bash benchmarks/gpu_table.sh OUT_DIR [STEPS] [PRESET]
set -euo pipefail
OUT=${1:?output folder}
STEPS=${2:-1000}
PRESET=${3:-benchmark}
D=/tmp/synthcity-$PRESET
RUNS=/tmp/table-runs
mkdir -p "$OUT" "$RUNS"
pack() {
  (cd "$RUNS" && tar czf "$OUT/logs.tgz.tmp" --exclude='*.pt' --exclude=cache . && mv "$OUT/logs.tgz.tmp" "$OUT/logs.tgz")
  for name in structvprpp teacher; do [ -f "$RUNS/$name/model.pt" ] && cp "$RUNS/$name/model.pt" "$OUT/$name.pt"; done
  return 0
}
[ -f "$D/synthcity.json" ] || python3 -m structvpr_edge.cli synth --out "$D" --seed 0 --preset "$PRESET" > "$OUT/synth.log" 2>&1
JOBS=${JOBS:-6} RUNS=$RUNS SKIP_REFERENCES=1 bash benchmarks/method_table.sh "$D" "$STEPS" 12 > "$RUNS/table.log" 2>&1 &
TABLE=$!
while kill -0 $TABLE 2>/dev/null; do pack; sleep 20; done
STATUS=0
wait $TABLE || STATUS=$?
pack
exit $STATUS

#!/usr/bin/env bash
# The issue-9 method table on a lent CUDA machine, in one call (docs/RESULTS.md):
#   [JOBS=14] [MINUTES=5] bash benchmarks/gpu_table.sh OUT_DIR [STEPS] [SEEDS]
# 1. SynthCity benchmark (seed 0) and a city no model sees (seed 7, test split only).
# 2. Teachers, the rows without a teacher and two KD weights, SEEDS seeds each.
# 3. The KD weight with the best mean val R@1 is chosen; the KD ablations run with it while the
#    runs of step 2 are evaluated on test (report only), and the shipped candidates (the best val
#    seed of structvprpp at the chosen weight, student-nokd, baseline) are copied out and
#    evaluated on the unseen city.
# 4. The ablations are evaluated on test; GPU_CHECK=1 then runs benchmarks/gpu_check.py.
# Runs start only within MINUTES, so the call ends in time. OUT_DIR gets the tables (JSON), the
# three checkpoints, the unseen-city reports and logs.tgz (every log).
set -uo pipefail
OUT=${1:?output folder}
STEPS=${2:-1000}
SEEDS=${3:-3}
JOBS=${JOBS:-14}
MINUTES=${MINUTES:-5}
D=${DATASET:-/tmp/synthcity-bench}
CITY=${CITY:-/tmp/synthcity-city7}
R=/tmp/table
L=$R/logs
mkdir -p "$OUT" "$L"
SECONDS=0
left() { python3 -c "print(max(0.2, $MINUTES - $SECONDS / 60))"; }
[ -f "$D/synthcity.json" ] || python3 -m structvpr_edge.cli synth --out "$D" --seed 0 --preset benchmark > "$L/synth.log" 2>&1
[ -f "$CITY/synthcity.json" ] || python3 -m structvpr_edge.cli synth --out "$CITY" --seed 7 --preset benchmark --splits test > "$L/city.log" 2>&1 &
CITY_JOB=$!
echo "data ready at ${SECONDS}s"
TABLE="python3 benchmarks/method_table.py --dataset $D --runs $R --seeds $SEEDS --steps $STEPS --teacher-steps ${TEACHER_STEPS:-1000} --jobs $JOBS --threads 1"
PHASE1="--rows baseline,student-nokd,baseline-head --row kd-w10=structvprpp.yaml:distill.weight=10 --row kd-w100=structvprpp.yaml:distill.weight=100"
$TABLE $PHASE1 --deadline-min "$(python3 -c "print(${PHASE1_MINUTES:-3.5} - $SECONDS / 60)")" --json "$L/phase1-val.json" > "$L/phase1.log" 2>&1
echo "phase 1 trained at ${SECONDS}s"
W=$(python3 - "$L/phase1-val.json" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))
mean = {w: sum(r["val"] for r in rows[f"kd-w{w}"]) / len(rows[f"kd-w{w}"]) for w in (10, 100) if rows.get(f"kd-w{w}")}
print(max(mean, key=mean.get) if mean else 100)
EOF
)
echo "KD weight chosen on val: $W" | tee "$L/choice.txt"
$TABLE --rows global-kd,group-kd,relational-kd,structvpr --distill-set "distill.weight=$W" --deadline-min "$(left)" --json "$L/phase2-val.json" > "$L/phase2.log" 2>&1 &
PHASE2=$!
$TABLE $PHASE1 --deadline-min 0 --test --json "$OUT/table-phase1.json" > "$L/table-phase1.md" 2> "$L/eval1.log"
echo "phase 1 evaluated at ${SECONDS}s"
python3 - "$R" "$STEPS" "$W" "$OUT" "$SEEDS" <<'EOF' > "$L/shipped.txt"
import shutil, sys
from pathlib import Path
from structvpr_edge.train.table import last_val_recall
runs, steps, w, out, seeds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
for shipped, row in (("structvprpp", f"kd-w{w}"), ("student-nokd", "student-nokd"), ("baseline", "baseline")):
    recalls = {s: last_val_recall(runs / f"{row}-{steps}" / f"s{s}") for s in range(seeds)}
    recalls = {s: v for s, v in recalls.items() if v is not None}
    if recalls:
        best = max(recalls, key=recalls.get)
        shutil.copy(runs / f"{row}-{steps}" / f"s{best}" / "model.pt", out / f"{shipped}.pt")
        print(shipped, row, "seed", best, "val", recalls[best])
EOF
wait $CITY_JOB
for m in structvprpp student-nokd baseline; do
  [ -f "$OUT/$m.pt" ] && python3 -m structvpr_edge.cli eval --model "$OUT/$m.pt" --dataset "$CITY" --json "$L/city7-$m.json" > /dev/null 2>> "$L/eval-city.log"
done
echo "shipped candidates evaluated at ${SECONDS}s"
(cd "$R" && tar czf "$OUT/logs.tgz" --exclude='*.pt' --exclude=cache .)
wait $PHASE2
echo "phase 2 trained at ${SECONDS}s"
$TABLE --rows global-kd,group-kd,relational-kd,structvpr --distill-set "distill.weight=$W" --deadline-min 0 --test \
  --json "$OUT/table-phase2.json" > "$L/table-phase2.md" 2> "$L/eval2.log"
echo "phase 2 evaluated at ${SECONDS}s"
wait
[ -n "${GPU_CHECK:-}" ] && [ "$SECONDS" -lt 500 ] && timeout 60 python3 benchmarks/gpu_check.py --json "$OUT/gpu_check.json" --work /tmp/gpu-check > "$L/gpu_check.log" 2>&1
echo "all done at ${SECONDS}s" | tee "$L/done.txt"
(cd "$R" && tar czf "$OUT/logs.tgz" --exclude='*.pt' --exclude=cache .)

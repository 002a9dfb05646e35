#!/usr/bin/env bash
# Train every row of the method table and every hypothesis run of docs/RESULTS.md with the same
# step budget, then evaluate them all.
#   [JOBS=N] [RUNS=DIR] bash benchmarks/method_table.sh [DATASET] [STEPS] [MINUTES]
# The teacher and the baseline run first (they build the label-fraction and frozen-feature
# caches); the other rows then run JOBS at a time (1 on the 2-core CPU; a GPU takes several).
# MINUTES caps one row's wall time (a safety net, not the budget). A finished row is skipped.
set -euo pipefail
D=${1:-data/synthcity-bench}
STEPS=${2:-1000}
MIN=${3:-12}
JOBS=${JOBS:-1}
RUNS=${RUNS:-runs}
C=structvpr_edge/configs
mkdir -p "$RUNS"
train() {  # train OUT ARGS...: one row, its console output in OUT.log
  local out=$1; shift
  [ -f "$out/model.pt" ] || structvpr-edge train --out "$out" --set "dataset=$D" --set "optim.steps=$STEPS" \
    --set "optim.time_budget_min=$MIN" "$@" > "$out.log" 2>&1
}

train "$RUNS/teacher" --config $C/teacher.yaml --set "teacher_optim.steps=$STEPS" --set "teacher_optim.time_budget_min=$MIN"
train "$RUNS/baseline" --config $C/baseline.yaml
T="--set teacher_checkpoint=$RUNS/teacher/model.pt"
ROWS=(  # NAME ARGS (the first five words of each line of docs/RESULTS.md's tables)
  "structvprpp --config $C/structvprpp.yaml $T"
  "structvpr --config $C/structvpr.yaml $T"
  "no-sample-weights --config $C/structvprpp.yaml $T --set distill.samples.enabled=false"
  "no-label-split --config $C/structvprpp.yaml $T --set distill.per_group=false"
  "no-mask-loss --config $C/structvprpp.yaml $T --set mask_loss_weight=0"
  "in-batch-ranks --config $C/structvprpp.yaml $T --set distill.samples.memory_batches=0"
  "mask-0.1 --config $C/structvprpp.yaml $T --set mask_loss_weight=0.1"
  "presence-0 --config $C/structvprpp.yaml $T --set student.presence_power=0"
  "presence-1 --config $C/structvprpp.yaml $T --set student.presence_power=1"
  "baseline-3x --config $C/baseline.yaml --set optim.steps=$((3 * STEPS)) --set optim.time_budget_min=$((3 * MIN))"
  "structvprpp-3x --config $C/structvprpp.yaml $T --set optim.steps=$((3 * STEPS)) --set optim.time_budget_min=$((3 * MIN))"
  "no-mask-loss-3x --config $C/structvprpp.yaml $T --set mask_loss_weight=0 --set optim.steps=$((3 * STEPS)) --set optim.time_budget_min=$((3 * MIN))"
)
for row in "${ROWS[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  # shellcheck disable=SC2086
  train "$RUNS/${row%% *}" ${row#* } &
done
wait

REFERENCES="--row pixels --row imagenet-gem --row label-oracle"
[ -n "${SKIP_REFERENCES:-}" ] && REFERENCES=""
TRAINED="--row teacher=$RUNS/teacher/model.pt --row baseline=$RUNS/baseline/model.pt"
for row in "${ROWS[@]}"; do TRAINED="$TRAINED --row ${row%% *}=$RUNS/${row%% *}/model.pt"; done
# shellcheck disable=SC2086
python3 benchmarks/method_table.py --dataset "$D" --json "$RUNS/method_table.json" --plot "$RUNS/method_table.png" $REFERENCES $TRAINED

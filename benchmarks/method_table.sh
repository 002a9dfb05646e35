#!/usr/bin/env bash
# Train every row of the method table (docs/RESULTS.md) with the same budget, then evaluate all.
#   bash benchmarks/method_table.sh [DATASET] [STEPS] [MINUTES]
# Rows run one after another (2 CPU cores); each runs STEPS steps (MINUTES is only a safety cap).
set -euo pipefail
D=${1:-data/synthcity-bench}
STEPS=${2:-1000}
MIN=${3:-12}
BUDGET="--set dataset=$D --set optim.steps=$STEPS --set optim.time_budget_min=$MIN"
train() { local out=$1; shift; [ -f "$out/model.pt" ] || structvpr-edge train --out "$out" "$@"; }

train runs/teacher --config structvpr_edge/configs/teacher.yaml --set dataset=$D --set teacher_optim.steps=$STEPS --set teacher_optim.time_budget_min=$MIN
train runs/baseline --config structvpr_edge/configs/baseline.yaml $BUDGET
train runs/structvprpp --config structvpr_edge/configs/structvprpp.yaml $BUDGET
train runs/structvpr --config structvpr_edge/configs/structvpr.yaml $BUDGET
train runs/no-sample-weights --config structvpr_edge/configs/structvprpp.yaml $BUDGET --set distill.samples.enabled=false
train runs/no-label-split --config structvpr_edge/configs/structvprpp.yaml $BUDGET --set distill.per_group=false
train runs/no-mask-loss --config structvpr_edge/configs/structvprpp.yaml $BUDGET --set mask_loss_weight=0

REFERENCES="--row pixels --row imagenet-gem --row label-oracle"
[ -n "${SKIP_REFERENCES:-}" ] && REFERENCES=""
python3 benchmarks/method_table.py --dataset "$D" --json runs/method_table.json --plot runs/method_table.png \
  $REFERENCES --row teacher=runs/teacher/model.pt \
  --row baseline=runs/baseline/model.pt --row structvpr=runs/structvpr/model.pt --row structvpr++=runs/structvprpp/model.pt \
  --row no-sample-weights=runs/no-sample-weights/model.pt --row no-label-split=runs/no-label-split/model.pt \
  --row no-mask-loss=runs/no-mask-loss/model.pt

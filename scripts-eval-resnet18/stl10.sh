#!/usr/bin/env bash
# kNN, linear probe and transfer of the released resnet18 stl10 checkpoint, in one table (paper kNN / linear top-1: 88.94 / 91.02).
# Edit the variables below, or override any of them from the environment, e.g.
#   EPOCHS=100 bash scripts-eval-resnet18/stl10.sh
#   MODEL_PATH=results/<run>/<...>_model.pth bash scripts-eval-resnet18/stl10.sh   # a checkpoint of your own
# Extra flags are passed through to evaluate.py: bash scripts-eval-resnet18/stl10.sh --transfer_epochs 50
# Started again, it continues where it stopped; the table: $RESULTS_DIR/<checkpoint name>/evaluation.md
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

gpu=${GPU:-0}
dataset=stl10
arch=resnet18
epochs=${EPOCHS:-200}                 # linear probe (transfer: 100, --transfer_epochs N)
checkpoint_dir=${CHECKPOINT_DIR:-$ROOT/checkpoints}
model_path=${MODEL_PATH:-$checkpoint_dir/i7det4xq_0.0078125_1024_256_stl10_model.pth}
data_root=${DATA_ROOT:-$ROOT/data}          # stl10 and the transfer sets (README: Data)
results_dir=${RESULTS_DIR:-$ROOT/results/eval}

check_settings
require_checkpoint "$model_path"
"$PYTHON" "$ROOT/evaluate.py" "$model_path" --dataset "$dataset" --arch "$arch" --epochs "$epochs" --gpu "$gpu" \
  --data_root "$data_root" --results_dir "$results_dir" "$@"

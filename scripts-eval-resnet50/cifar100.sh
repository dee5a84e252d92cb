#!/usr/bin/env bash
# kNN, linear probe and transfer of the released resnet50 cifar100 checkpoint, in one table (paper kNN / linear top-1: 64.32 / 72.51).
# Edit the variables below, or override any of them from the environment, e.g.
#   EPOCHS=100 bash scripts-eval-resnet50/cifar100.sh
#   MODEL_PATH=results/<run>/<...>_model.pth bash scripts-eval-resnet50/cifar100.sh   # a checkpoint of your own
# Extra flags are passed through to evaluate.py: bash scripts-eval-resnet50/cifar100.sh --transfer_epochs 50
# Started again, it continues where it stopped; the table: $RESULTS_DIR/<checkpoint name>/evaluation.md
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

gpu=${GPU:-0}
dataset=cifar100
arch=resnet50
epochs=${EPOCHS:-200}                 # linear probe (transfer: 100, --transfer_epochs N)
checkpoint_dir=${CHECKPOINT_DIR:-$ROOT/checkpoints}
model_path=${MODEL_PATH:-$checkpoint_dir/z6ngefw7_0.0078125_1024_256_cifar100_model.pth}
data_root=${DATA_ROOT:-$ROOT/data}          # cifar100 and the transfer sets (README: Data)
results_dir=${RESULTS_DIR:-$ROOT/results/eval}

check_settings
require_checkpoint "$model_path"
"$PYTHON" "$ROOT/evaluate.py" "$model_path" --dataset "$dataset" --arch "$arch" --epochs "$epochs" --gpu "$gpu" \
  --data_root "$data_root" --results_dir "$results_dir" "$@"

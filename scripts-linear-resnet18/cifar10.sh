#!/usr/bin/env bash
# Linear evaluation, resnet18 on cifar10: the released checkpoint (paper: linear top-1 92.58).
# Edit the variables below, or override any of them from the environment, e.g.
#   EPOCHS=100 bash scripts-linear-resnet18/cifar10.sh
# Extra flags are passed through to linear.py: bash scripts-linear-resnet18/cifar10.sh --seed 1
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

gpu=${GPU:-0}
dataset=cifar10
arch=resnet18
batch_size=${BATCH_SIZE:-512}
epochs=${EPOCHS:-200}
checkpoint_dir=${CHECKPOINT_DIR:-$ROOT/checkpoints}
model_path=${MODEL_PATH:-$checkpoint_dir/4wdhbpcf_0.0078125_1024_256_cifar10_model.pth}
data_root=${DATA_ROOT:-$ROOT/data}
results_dir=${RESULTS_DIR:-$ROOT/results/linear}

check_settings
require_checkpoint "$model_path"
"$PYTHON" "$ROOT/linear.py" --dataset "$dataset" --model_path "$model_path" --arch "$arch" --batch_size "$batch_size" \
  --epochs "$epochs" --gpu "$gpu" --data_root "$data_root" --results_dir "$results_dir" "$@"

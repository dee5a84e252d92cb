#!/usr/bin/env bash
# ImageNet linear evaluation (frozen ResNet-50, 100 epochs): paper 72.2 for lambda_mixup 1.0.
# Defaults from linear.py, not restated here: classifier lr 0.3; pass e.g. --lr-classifier 0.1 to change one.
# Edit the variables below, or override any of them from the environment, e.g.
#   EPOCHS=100 bash scripts-linear-resnet50/imagenet_sup.sh
# Extra flags are passed through to linear.py: bash scripts-linear-resnet50/imagenet_sup.sh --seed 1
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

nproc=${NPROC:-8}                  # GPUs (torchrun)
data_root=${DATA_ROOT:-$ROOT/data/imagenet}
checkpoint_dir=${CHECKPOINT_DIR:-$ROOT/checkpoints}
model_path=${MODEL_PATH:-$checkpoint_dir/3fb1op86_1.0000_8192_1024_imagenet_resnet50.pth}
batch_size=${BATCH_SIZE:-256}
epochs=${EPOCHS:-100}
results_dir=${RESULTS_DIR:-$ROOT/results/linear}

check_settings
require_checkpoint "$model_path"
launch "$nproc" "$ROOT/linear.py" --dataset imagenet --data_root "$data_root" --model_path "$model_path" \
  --batch_size "$batch_size" --epochs "$epochs" --results_dir "$results_dir" "$@"

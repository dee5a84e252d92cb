#!/usr/bin/env bash
# The linear probe of the released ImageNet ResNet-50 (lambda_mixup 1.0, paper 72.2) through evaluate.py:
# kNN and transfer are defined for the small data sets only.
# Edit the variables below, or override any of them from the environment, e.g.
#   EPOCHS=100 bash scripts-eval-resnet50/imagenet.sh
#   MODEL_PATH=results/<run>/<...>_model.pth bash scripts-eval-resnet50/imagenet.sh   # a checkpoint of your own
# Extra flags are passed through to evaluate.py: bash scripts-eval-resnet50/imagenet.sh --precision fp32
# Started again, it continues where it stopped; the table: $RESULTS_DIR/<checkpoint name>/evaluation.md
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

nproc=${NPROC:-8}                  # GPUs (torchrun)
dataset=imagenet
arch=resnet50
epochs=${EPOCHS:-100}
checkpoint_dir=${CHECKPOINT_DIR:-$ROOT/checkpoints}
model_path=${MODEL_PATH:-$checkpoint_dir/3fb1op86_1.0000_8192_1024_imagenet_resnet50.pth}
data_root=${DATA_ROOT:-$ROOT/data/imagenet}
results_dir=${RESULTS_DIR:-$ROOT/results/eval}

check_settings
require_checkpoint "$model_path"
launch "$nproc" "$ROOT/evaluate.py" "$model_path" --dataset "$dataset" --arch "$arch" --epochs "$epochs" \
  --data_root "$data_root" --results_dir "$results_dir" "$@"

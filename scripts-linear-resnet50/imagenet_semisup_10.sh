#!/usr/bin/env bash
# ImageNet semi-supervised fine-tuning on the 10% subset (SimCLR list).
# Edit the variables below, or override any of them from the environment, e.g.
#   EPOCHS=100 bash scripts-linear-resnet50/imagenet_semisup_10.sh
# Extra flags are passed through to linear.py: bash scripts-linear-resnet50/imagenet_semisup_10.sh --seed 1
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

nproc=${NPROC:-8}                  # GPUs (torchrun)
data_root=${DATA_ROOT:-$ROOT/data/imagenet}
checkpoint_dir=${CHECKPOINT_DIR:-$ROOT/checkpoints}
model_path=${MODEL_PATH:-$checkpoint_dir/3fb1op86_1.0000_8192_1024_imagenet_resnet50.pth}
batch_size=${BATCH_SIZE:-256}
lr_backbone=${LR_BACKBONE:-0.002}
lr_classifier=${LR_CLASSIFIER:-0.5}
weight_decay=${WEIGHT_DECAY:-0.0}
epochs=${EPOCHS:-20}
train_files=${TRAIN_FILES:-https://raw.githubusercontent.com/google-research/simclr/master/imagenet_subsets/10percent.txt}
results_dir=${RESULTS_DIR:-$ROOT/results/linear}

check_settings
require_checkpoint "$model_path"
launch "$nproc" "$ROOT/linear.py" --dataset imagenet --data_root "$data_root" --model_path "$model_path" \
  --batch_size "$batch_size" --epochs "$epochs" --weights finetune --train-percent 10 --train-files "$train_files" \
  --lr-backbone "$lr_backbone" --lr-classifier "$lr_classifier" --weight-decay "$weight_decay" \
  --results_dir "$results_dir" "$@"

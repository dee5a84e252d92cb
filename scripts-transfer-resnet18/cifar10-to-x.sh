#!/usr/bin/env bash
# Transfer from the released ResNet-18 cifar10 checkpoint to the seven fine-grained data sets.
# Edit the variables below, or override any of them from the environment, e.g.
#   EPOCHS=100 bash scripts-transfer-resnet18/cifar10-to-x.sh
# Extra flags are passed through to transfer.py: bash scripts-transfer-resnet18/cifar10-to-x.sh --seed 1
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

gpu=${GPU:-0}
dataset=cifar10
arch=resnet18
batch_size=${BATCH_SIZE:-128}
epochs=${EPOCHS:-100}
wandb_group=${WANDB_GROUP:-best-mbt}
checkpoint_dir=${CHECKPOINT_DIR:-$ROOT/checkpoints}
model_path=${MODEL_PATH:-$checkpoint_dir/4wdhbpcf_0.0078125_1024_256_cifar10_model.pth}
transfer_datasets=${TRANSFER_DATASETS:-dtd mnist fashionmnist cu_birds vgg_flower traffic_sign aircraft}
data_root=${DATA_ROOT:-$ROOT/data}
results_dir=${RESULTS_DIR:-$ROOT/results/transfer}

check_settings
require_checkpoint "$model_path"
for transfer_dataset in $transfer_datasets; do
  "$PYTHON" "$ROOT/transfer.py" --dataset "$dataset" --transfer_dataset "$transfer_dataset" --model_path "$model_path" \
    --arch "$arch" --batch_size "$batch_size" --epochs "$epochs" --wandb_group "$wandb_group" --gpu "$gpu" \
    --data_root "$data_root" --results_dir "$results_dir" "$@"
done

#!/usr/bin/env bash
# Mix-BT pretraining, resnet18 on a folder of your own images (docs/own-images.md; no paper row): one
# subfolder per class (an optional val/ holds the test split), or images directly in DATA_ROOT (unlabelled).
# Defaults from main.py, not restated here: --folder_labels auto (labelled when DATA_ROOT holds class subfolders;
#   subfolders, none) and --max_memory_gb 4 (images decoded into memory per process up to this, else streamed);
#   pass e.g. --folder_labels none to change one.
# Edit the variables below, or override any of them from the environment, e.g.
#   DATA_ROOT=~/my-images IMAGE_SIZE=96 bash scripts-pretrain-resnet18/folder.sh
# Extra flags are passed through to main.py: bash scripts-pretrain-resnet18/folder.sh --seed 1
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

gpu=${GPU:-0}                      # CUDA device of a single-process run (-1: CPU)
nproc=${NPROC:-1}                  # processes (GPUs) for torchrun; the global batch is split over them
dataset=folder
arch=resnet18
data_root=${DATA_ROOT:-$ROOT/data/images}   # the folder of your images
image_size=${IMAGE_SIZE:-64}       # about 32: CIFAR stem and views; 64: STL-10/Tiny-ImageNet; 96 and up: ImageNet
feature_dim=${FEATURE_DIM:-1024}
is_mixup=${IS_MIXUP:-true}         # true, false
batch_size=${BATCH_SIZE:-256}
epochs=${EPOCHS:-200}
lr=${LR:-0.01}
lr_shed=${LR_SHED:-cosine}         # step, cosine
mixup_loss_scale=${MIXUP_LOSS_SCALE:-4.0}   # s (lambda_reg)
lmbda=${LMBDA:-0.0009765}          # lambda_BT = 1/feature_dim, the paper's rule (1/1024 as bc writes it)
results_dir=${RESULTS_DIR:-$ROOT/results}

check_settings
launch "$nproc" "$ROOT/main.py" --lmbda "$lmbda" --corr_zero --batch_size "$batch_size" --feature_dim "$feature_dim" \
  --dataset "$dataset" --data_root "$data_root" --image_size "$image_size" --is_mixup "$is_mixup" \
  --mixup_loss_scale "$mixup_loss_scale" --epochs "$epochs" --arch "$arch" --gpu "$gpu" --lr_shed "$lr_shed" \
  --lr "$lr" --results_dir "$results_dir" "$@"

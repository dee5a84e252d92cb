#!/usr/bin/env bash
# INTL on cifar100.
# Source: winci-ai/INTL scripts/cifar100.sh:
#   python cifar/main.py --dataset cifar100 --arch resnet18 --projection_size 2048 --epochs 1000 --lr 0.3 --wd 1e-4 --method intl
#   cifar/cfg.py defaults: --bs 256, projector 2048-2048-2048, 4 IterNorm iterations, SGD momentum 0.9,
#   lr 0.3 x batch/256 with 2 warm-up epochs, then cosine to 0.001x.
#   INTL's own code has its own views (crop first, scale 0.08-1, grayscale 0.2), neither pipeline here: it runs
#   on the same pipeline as Mix-BT (main.py's default), or with --pipeline wmse on the W-MSE code's (docs/protocol.md
#   section 6).
# Defaults from main.py --method intl, not restated here: lr 0.3, weight decay 1e-4, projector 2048-2048-2048,
#   4 IterNorm iterations, SGD, 2 warm-up epochs; pass e.g. --weight_decay 5e-4 to change one.
# Override any variable from the environment, e.g. EPOCHS=100 NPROC=2 bash ssl-sota/intl/cifar100.sh
# Extra flags are passed through to main.py: bash ssl-sota/intl/cifar100.sh --seed 1
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"

gpu=${GPU:-0}                      # CUDA device of a single-process run (-1: CPU)
nproc=${NPROC:-1}                  # processes (GPUs) for torchrun; the global batch is split over them
dataset=cifar100
arch=${ARCH:-resnet18}
epochs=${EPOCHS:-1000}
batch_size=${BATCH_SIZE:-256}
lr_shed=${LR_SHED:-cosine}         # step, cosine
data_root=${DATA_ROOT:-$ROOT/data}
results_dir=${RESULTS_DIR:-$ROOT/results}

check_settings
launch "$nproc" "$ROOT/main.py" --method intl --dataset "$dataset" --gpu "$gpu" --data_root "$data_root" \
  --results_dir "$results_dir" --arch "$arch" --epochs "$epochs" --batch_size "$batch_size" --lr_shed "$lr_shed" "$@"

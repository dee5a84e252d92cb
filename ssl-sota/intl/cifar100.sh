#!/usr/bin/env bash
# INTL on cifar100.
# Source: winci-ai/INTL scripts/cifar100.sh:
#   python cifar/main.py --dataset cifar100 --arch resnet18 --projection_size 2048 --epochs 1000 --lr 0.3 --wd 1e-4 --method intl
#   cifar/cfg.py defaults: --bs 256, projector 2048-2048-2048, 4 IterNorm iterations, SGD momentum 0.9,
#   lr 0.3 x batch/256 with 2 warm-up epochs, then cosine to 0.001x.
#   INTL's own code has its own views (crop first, scale 0.08-1, grayscale 0.2), neither pipeline here: PIPELINE=mixbt
#   (default) runs it on the same pipeline as Mix-BT, PIPELINE=wmse on the W-MSE code's (docs/protocol.md section 6).
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
lr=${LR:-0.3}
weight_decay=${WEIGHT_DECAY:-1e-4}
projector=${PROJECTOR:-2048-2048-2048}
iters=${ITERS:-4}
optimizer=${OPTIMIZER:-sgd}
lr_shed=${LR_SHED:-cosine}         # step, cosine
warmup_epochs=${WARMUP_EPOCHS:-2}
pipeline=${PIPELINE:-mixbt}        # mixbt: Mix-BT's views and normalisation; wmse: the W-MSE code's
data_root=${DATA_ROOT:-$ROOT/data}
results_dir=${RESULTS_DIR:-$ROOT/results}

check_settings
launch "$nproc" "$ROOT/main.py" --method intl --dataset "$dataset" --gpu "$gpu" --data_root "$data_root" \
  --results_dir "$results_dir" --arch "$arch" --epochs "$epochs" --batch_size "$batch_size" --lr "$lr" \
  --weight_decay "$weight_decay" --projector "$projector" --intl_iters "$iters" --optimizer "$optimizer" \
  --lr_shed "$lr_shed" --warmup_epochs "$warmup_epochs" --pipeline "$pipeline" "$@"

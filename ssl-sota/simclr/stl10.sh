#!/usr/bin/env bash
# SimCLR (the W-MSE repository's "contrastive" method) on stl10.
# Source: htdt/self-supervised README ("To reproduce the results"):
#   python -m train --dataset stl10 --epoch 2000 --lr 2e-3 --emb 128 --method contrastive
#   with its cfg.py defaults: --bs 384, --head_size 1024, Adam (weight decay 1e-6), 500 warm-up steps,
#   x0.2 at epochs E-50 and E-25 (the reference's ssl-sota/ copies this repository).
# Override any variable from the environment, e.g. EPOCHS=100 NPROC=2 bash ssl-sota/simclr/stl10.sh
# Extra flags are passed through to main.py: bash ssl-sota/simclr/stl10.sh --seed 1
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"

gpu=${GPU:-0}                      # CUDA device of a single-process run (-1: CPU)
nproc=${NPROC:-1}                  # processes (GPUs) for torchrun; the global batch is split over them
dataset=stl10
arch=${ARCH:-resnet18}
epochs=${EPOCHS:-2000}
batch_size=${BATCH_SIZE:-384}
lr=${LR:-2e-3}
emb=${EMB:-128}
head_size=${HEAD_SIZE:-1024}
tau=${TAU:-0.5}
optimizer=${OPTIMIZER:-adam}
weight_decay=${WEIGHT_DECAY:-1e-6}
lr_shed=${LR_SHED:-step}           # step (x0.2 at epochs E-50 and E-25), cosine
warmup_steps=${WARMUP_STEPS:-500}
data_root=${DATA_ROOT:-$ROOT/data}
results_dir=${RESULTS_DIR:-$ROOT/results}

launch "$nproc" "$ROOT/main.py" --method simclr --dataset "$dataset" --gpu "$gpu" --data_root "$data_root" \
  --results_dir "$results_dir" --arch "$arch" --epochs "$epochs" --batch_size "$batch_size" --lr "$lr" --emb "$emb" \
  --head_size "$head_size" --tau "$tau" --optimizer "$optimizer" --weight_decay "$weight_decay" --lr_shed "$lr_shed" \
  --warmup_steps "$warmup_steps" "$@"

#!/usr/bin/env bash
# BYOL on stl10, as the Mix-BT paper's baseline was run.
# Source: wgcban/mix-bt ssl-sota/scripts-pretrain/byol/stl10.sh,
#   its copy of the W-MSE code (htdt/self-supervised):
#   python -m train --dataset stl10 --epoch 1000 --lr 3e-3 --emb 64 --method byol --arch resnet50 --eval_every 5
#   with its cfg.py defaults: --bs 384, --head_size 1024, --byol_tau 0.99, Adam (weight decay 1e-6), 500 warm-up steps,
#   x0.2 at epochs E-50 and E-25; its views, normalisation and evaluation are PIPELINE=wmse (docs/protocol.md
#   section 6). PIPELINE=mixbt runs the same recipe on the same pipeline as Mix-BT (its views and normalisation).
#   Where the W-MSE paper's own recipe (its README: ResNet-18) differs, a comment keeps its value.
# Defaults from main.py --method byol, not restated here: head 1024, byol_tau 0.99, Adam, weight decay 1e-6,
#   lr x0.2 at epochs E-50 and E-25, 500 warm-up steps; pass e.g. --head_size 2048 to change one.
# Override any variable from the environment, e.g. EPOCHS=100 NPROC=2 bash ssl-sota/byol/stl10.sh
# Extra flags are passed through to main.py: bash ssl-sota/byol/stl10.sh --seed 1
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"

gpu=${GPU:-0}                      # CUDA device of a single-process run (-1: CPU)
nproc=${NPROC:-1}                  # processes (GPUs) for torchrun; the global batch is split over them
dataset=stl10
arch=${ARCH:-resnet50}             # W-MSE paper README: resnet18
epochs=${EPOCHS:-1000}             # W-MSE paper README: 2000
batch_size=${BATCH_SIZE:-384}
lr=${LR:-3e-3}                     # W-MSE paper README: 2e-3
emb=${EMB:-64}                     # W-MSE paper README: 128
pipeline=${PIPELINE:-wmse}         # wmse: the W-MSE code's views, normalisation, evaluation; mixbt: Mix-BT's
data_root=${DATA_ROOT:-$ROOT/data}
results_dir=${RESULTS_DIR:-$ROOT/results}

check_settings
launch "$nproc" "$ROOT/main.py" --method byol --dataset "$dataset" --gpu "$gpu" --data_root "$data_root" \
  --results_dir "$results_dir" --arch "$arch" --epochs "$epochs" --batch_size "$batch_size" --lr "$lr" --emb "$emb" \
  --pipeline "$pipeline" "$@"

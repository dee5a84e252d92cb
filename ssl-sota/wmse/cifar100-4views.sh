#!/usr/bin/env bash
# W-MSE 4 on cifar100.
# Source: htdt/self-supervised README ("To reproduce the results"), "W-MSE 4":
#   python -m train --dataset cifar100 --epoch 1000 --lr 3e-3 --num_samples 4 --bs 256 --emb 64 --w_size 128
#   batch 256 and --w_eps 10e-3 (= 0.01) as the reference's ssl-sota/scripts-pretrain/w-mse scripts;
#   head 1024, Adam (weight decay 1e-6), 500 warm-up steps, x0.2 at epochs E-50 and E-25.
#   PIPELINE=wmse (default): the views, normalisation and evaluation of the W-MSE code, which this recipe's code
#   uses (docs/protocol.md section 6); PIPELINE=mixbt: the same recipe on the same pipeline as Mix-BT.
# Defaults from main.py --method wmse, not restated here: lr 3e-3, emb 64, head 1024, w_size 128, w_iter 1, Adam,
#   weight decay 1e-6, lr x0.2 at epochs E-50 and E-25, 500 warm-up steps; pass e.g. --head_size 2048 to change one.
# Override any variable from the environment, e.g. EPOCHS=100 NPROC=2 bash ssl-sota/wmse/cifar100-4views.sh
# Extra flags are passed through to main.py: bash ssl-sota/wmse/cifar100-4views.sh --seed 1
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"

gpu=${GPU:-0}                      # CUDA device of a single-process run (-1: CPU)
nproc=${NPROC:-1}                  # processes (GPUs) for torchrun; the global batch is split over them
dataset=cifar100
arch=${ARCH:-resnet18}
epochs=${EPOCHS:-1000}
batch_size=${BATCH_SIZE:-256}
views=${VIEWS:-4}
w_eps=${W_EPS:-1e-2}
pipeline=${PIPELINE:-wmse}         # wmse: the W-MSE code's views, normalisation, evaluation; mixbt: Mix-BT's
data_root=${DATA_ROOT:-$ROOT/data}
results_dir=${RESULTS_DIR:-$ROOT/results}

check_settings
launch "$nproc" "$ROOT/main.py" --method wmse --dataset "$dataset" --gpu "$gpu" --data_root "$data_root" \
  --results_dir "$results_dir" --arch "$arch" --epochs "$epochs" --batch_size "$batch_size" --num_views "$views" \
  --w_eps "$w_eps" --pipeline "$pipeline" "$@"

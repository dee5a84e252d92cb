#!/usr/bin/env bash
# CW-RGP 2 on stl10.
# Source: winci-ai/CW-RGP scripts/base.sh, "CW-RGP 2":
#   python base/train.py --dataset stl10 --epochs 2000 --lr 2e-3 --w_size 64 --group 4
#   with its base/cfg.py defaults (--bs 512): emb 512, head 1024, w_eps 0, Adam (weight decay 1e-6),
#   500 warm-up steps, x0.2 at epochs E-50 and E-25.
#   PIPELINE=wmse (default): the views, normalisation and evaluation of the W-MSE code, which this recipe's code
#   uses (docs/protocol.md section 6); PIPELINE=mixbt: the same recipe on the same pipeline as Mix-BT.
# Defaults from main.py --method cwrgp, not restated here: lr 2e-3, 2 views, emb 512, head 1024, w_size 64, group 4,
#   w_iter 1, w_eps 0, Adam, weight decay 1e-6, lr x0.2 at epochs E-50 and E-25, 500 warm-up steps;
#   pass e.g. --head_size 2048 to change one.
# Override any variable from the environment, e.g. EPOCHS=100 NPROC=2 bash ssl-sota/cwrgp/stl10.sh
# Extra flags are passed through to main.py: bash ssl-sota/cwrgp/stl10.sh --seed 1
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"

gpu=${GPU:-0}                      # CUDA device of a single-process run (-1: CPU)
nproc=${NPROC:-1}                  # processes (GPUs) for torchrun; the global batch is split over them
dataset=stl10
arch=${ARCH:-resnet18}
epochs=${EPOCHS:-2000}
batch_size=${BATCH_SIZE:-512}
pipeline=${PIPELINE:-wmse}         # wmse: the W-MSE code's views, normalisation, evaluation; mixbt: Mix-BT's
data_root=${DATA_ROOT:-$ROOT/data}
results_dir=${RESULTS_DIR:-$ROOT/results}

check_settings
launch "$nproc" "$ROOT/main.py" --method cwrgp --dataset "$dataset" --gpu "$gpu" --data_root "$data_root" \
  --results_dir "$results_dir" --arch "$arch" --epochs "$epochs" --batch_size "$batch_size" --pipeline "$pipeline" \
  "$@"

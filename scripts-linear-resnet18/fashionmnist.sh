#!/usr/bin/env bash
# Linear evaluation, resnet18 on fashionmnist: by default the best model of your latest fashionmnist pretraining run.
# Edit the variables below, or override any of them from the environment, e.g.
#   EPOCHS=100 bash scripts-linear-resnet18/fashionmnist.sh
# Extra flags are passed through to linear.py: bash scripts-linear-resnet18/fashionmnist.sh --seed 1
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

gpu=${GPU:-0}
dataset=fashionmnist
arch=resnet18
batch_size=${BATCH_SIZE:-512}
epochs=${EPOCHS:-200}
pretrain_dir=${PRETRAIN_DIR:-$ROOT/results}     # where scripts-pretrain-resnet18/fashionmnist.sh wrote its runs
model_path=${MODEL_PATH:-$(latest_run_model "$pretrain_dir" "$dataset")}
data_root=${DATA_ROOT:-$ROOT/data}
results_dir=${RESULTS_DIR:-$ROOT/results/linear}

check_settings
require_checkpoint "${model_path:-$pretrain_dir/<run>/<run>_..._${dataset}_model.pth}" \
  "Pretrain first: bash scripts-pretrain-resnet18/$dataset.sh (or the short: bash quickstart.sh); this script
then probes the newest such run in $pretrain_dir (set PRETRAIN_DIR if yours are elsewhere). Or set MODEL_PATH."
"$PYTHON" "$ROOT/linear.py" --dataset "$dataset" --model_path "$model_path" --arch "$arch" --batch_size "$batch_size" \
  --epochs "$epochs" --gpu "$gpu" --data_root "$data_root" --results_dir "$results_dir" "$@"

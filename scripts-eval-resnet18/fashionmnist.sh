#!/usr/bin/env bash
# kNN, linear probe and transfer of the best model of your latest fashionmnist pretraining run, in one table.
# Edit the variables below, or override any of them from the environment, e.g.
#   EPOCHS=100 bash scripts-eval-resnet18/fashionmnist.sh
#   MODEL_PATH=results/<run>/<...>_model.pth bash scripts-eval-resnet18/fashionmnist.sh   # a checkpoint of your own
# Extra flags are passed through to evaluate.py: bash scripts-eval-resnet18/fashionmnist.sh --transfer_epochs 50
# Started again, it continues where it stopped; the table: $RESULTS_DIR/<checkpoint name>/evaluation.md
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

gpu=${GPU:-0}
dataset=fashionmnist
arch=resnet18
epochs=${EPOCHS:-200}                 # linear probe (transfer: 100, --transfer_epochs N)
pretrain_dir=${PRETRAIN_DIR:-$ROOT/results}     # where scripts-pretrain-resnet18/fashionmnist.sh wrote its runs
model_path=${MODEL_PATH:-$(latest_run_model "$pretrain_dir" "$dataset")}
data_root=${DATA_ROOT:-$ROOT/data}          # fashionmnist and the transfer sets (README: Data)
results_dir=${RESULTS_DIR:-$ROOT/results/eval}

check_settings
require_checkpoint "${model_path:-$pretrain_dir/<run>/<run>_..._${dataset}_model.pth}" \
  "Pretrain first: bash scripts-pretrain-resnet18/$dataset.sh (or the short: bash quickstart.sh); this script
then evaluates the newest such run in $pretrain_dir (set PRETRAIN_DIR if yours are elsewhere). Or set MODEL_PATH."
"$PYTHON" "$ROOT/evaluate.py" "$model_path" --dataset "$dataset" --arch "$arch" --epochs "$epochs" --gpu "$gpu" \
  --data_root "$data_root" --results_dir "$results_dir" "$@"

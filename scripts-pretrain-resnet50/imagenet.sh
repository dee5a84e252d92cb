#!/usr/bin/env bash
# Mix-BT pretraining, ResNet-50 on ImageNet (paper: lambda_mixup 1.0 -> linear 72.2).
# Edit the variables below, or override any of them from the environment, e.g.
#   EPOCHS=100 bash scripts-pretrain-resnet50/imagenet.sh
# Extra flags are passed through to main.py: bash scripts-pretrain-resnet50/imagenet.sh --seed 1
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

nproc=${NPROC:-8}                    # GPUs on this node (torchrun); use srun for several nodes
data_root=${DATA_ROOT:-$ROOT/data/imagenet}   # the folder with train/ and val/
is_mixup=${IS_MIXUP:-true}
lambda_mixup=${LAMBDA_MIXUP:-1.0}    # paper: 0 (BT; mixed pass on, weight 0) 71.3, 0.0025 70.9, 0.1 71.6, 1.0 72.2
mixup_warmup_epochs=${MIXUP_WARMUP_EPOCHS:-10}   # linear warm-up of the mixup weight (the reference's ImageNet code)
batch_size=${BATCH_SIZE:-1024}       # global: 128 per GPU on 8 GPUs
epochs=${EPOCHS:-300}
lr_w=${LR_W:-0.2}
lr_b=${LR_B:-0.0048}
lambd=${LAMBD:-0.0051}
projector=${PROJECTOR:-8192-8192-8192}
bt_loss=${BT_LOSS:-imagenet_reference}   # the released runs' loss (per-GPU statistics, alpha and permutation); global: ours
ref_world_size=${REF_WORLD_SIZE:-8}  # the released runs' 8 GPUs: 8 loss groups, gradients x 1/8 (plain all_reduce); NPROC must divide it
results_dir=${RESULTS_DIR:-$ROOT/results/imagenet}
run_name=${RUN_NAME:-mixbt_${lambda_mixup}_${epochs}ep}   # the same name resumes automatically

check_settings
launch "$nproc" "$ROOT/main.py" --dataset imagenet --data_root "$data_root" --arch resnet50 --is_mixup "$is_mixup" \
  --lambda_mixup "$lambda_mixup" --mixup_warmup_epochs "$mixup_warmup_epochs" --batch_size "$batch_size" \
  --epochs "$epochs" --learning-rate-weights "$lr_w" --learning-rate-biases "$lr_b" --lambd "$lambd" \
  --projector "$projector" --bt_loss "$bt_loss" --ref_world_size "$ref_world_size" --results_dir "$results_dir" \
  --run_name "$run_name" "$@"

#!/usr/bin/env bash
# Quick start: install what is needed, then a short Mix-BT pretraining of a ResNet-18 on
# Fashion-MNIST (the embedded default data set) with the kNN monitor and checkpoints.
# About 3-4 minutes on 2 CPU cores; on a GPU raise the subset and epochs (SUBSET=0: all).
#   bash quickstart.sh                       # defaults below
#   EPOCHS=20 SUBSET=0 bash quickstart.sh    # the whole training set
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# requirements.txt. An importable torch + torchvision (say your CUDA build) stays in place and only
# the other requirements are installed, if any is missing. INSTALL=1 installs all of them in any case.
if [ "${INSTALL:-0}" = 1 ] || ! python3 -c 'import torch, torchvision' 2>/dev/null; then
  python3 -m pip install -q -r requirements.txt
elif ! python3 -c 'import numpy, PIL, tqdm, thop, matplotlib, wandb, pytest, scipy' 2>/dev/null; then
  others=$(mktemp)
  grep -v -E '^(torch|torchvision)==' requirements.txt > "$others"
  python3 -m pip install -q -r "$others" \
    || echo "warning: could not install all of requirements.txt (offline?); going on with what is installed" >&2
  rm -f "$others"
fi

# Fashion-MNIST: the Debian package (offline, 30 MB), else torchvision's downloader.
download=()
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ ! -d data/FashionMNIST/raw ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) \
      || download=(--download)
  else
    download=(--download)
  fi
fi

subset=${SUBSET:-512}
k=${K:-25}                 # kNN neighbours: with a 512-image memory bank, the default 200 would vote over 40% of it
export EPOCHS=${EPOCHS:-3} BATCH_SIZE=${BATCH_SIZE:-128} WANDB_MODE=${WANDB_MODE:-offline}
# --aug gpu: the views are made in batches on the training device (here the CPU), which
# leaves both cores to the model; on a GPU it is the default anyway.
bash scripts-pretrain-resnet18/fashionmnist.sh --subset "$subset" --knn_every 1 --k "$k" --aug gpu --workers 0 \
  "${download[@]}" "$@"
echo "Next: ${RESULTS_DIR:+PRETRAIN_DIR=$RESULTS_DIR }bash scripts-linear-resnet18/fashionmnist.sh" \
  "  (linear probe of this run's best checkpoint)"

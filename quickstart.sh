#!/usr/bin/env bash
# Quick start: install what is needed, then a short Mix-BT pretraining of a ResNet-18 on
# Fashion-MNIST (the embedded default data set) with the kNN monitor and checkpoints.
# About 2 minutes on 2 idle CPU cores (measured: 2:12 with everything installed); on a GPU raise the subset and epochs (SUBSET=0: all).
#   bash quickstart.sh                       # defaults below
#   EPOCHS=20 SUBSET=0 bash quickstart.sh    # the whole training set
#   bash quickstart.sh --test [PYTEST ARGS]  # the same installation, then the tests (python3 -m pytest -q)
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# The python is PYTHON (default python3). An importable torch + torchvision (say your CUDA build) stays in
# place and only the other requirements are installed, if any is missing; INSTALL=1 installs all of them.
# A python that refuses pip installs (Debian's and Ubuntu's, PEP 668) gets a virtual environment,
# VENV_DIR (default .venv), that sees its packages when it has torch; later runs find it there.
python="${PYTHON:-python3}"   # (quoted: not a training setting for the launch-script checks)
venv="${VENV_DIR:-.venv}"
case $venv in /*) ;; *) venv=$PWD/$venv ;; esac
venv_used=

has_torch() { "$1" -c 'import torch, torchvision' 2>/dev/null; }

# missing_requirements PY: the requirements.txt packages other than torch and torchvision that PY lacks.
missing_requirements() {
  "$1" -c 'import importlib.metadata as md, re
names = [re.split(r"[=<>~!; #]", line.strip())[0] for line in open("requirements.txt")]
def installed(name):
    try:
        return bool(md.version(name))
    except md.PackageNotFoundError:
        return False
print(" ".join(n for n in names if n and n not in ("torch", "torchvision") and not installed(n)))'
}

# pip_allowed PY: PY has pip and accepts installs (not an externally managed python outside a venv).
pip_allowed() {
  "$1" -c 'import importlib.util, os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
managed = sys.prefix == sys.base_prefix and os.path.isfile(marker)
override = os.environ.get("PIP_BREAK_SYSTEM_PACKAGES", "").lower() in ("1", "true", "yes", "on")
sys.exit(0 if importlib.util.find_spec("pip") and (override or not managed) else 1)'
}

# use_venv: switch to the virtual environment, made from $python first if there is none.
use_venv() {
  if ! "$venv/bin/python3" -c 'import pip' 2>/dev/null; then
    if [ -e "$venv" ]; then
      echo "error: $venv is not a working virtual environment: remove it (rm -rf $venv) and run this again" >&2
      exit 1
    fi
    local site=
    if has_torch "$python"; then site=--system-site-packages; fi
    echo "$python refuses pip installs (an externally managed python, PEP 668): installing into a virtual" \
      "environment, $venv${site:+, that sees its torch}" >&2
    if ! "$python" -m venv $site "$venv"; then
      rm -rf "$venv"
      if ! { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get install -y -qq python3-venv \
             && "$python" -m venv $site "$venv"; }; then
        rm -rf "$venv"
        echo "error: $python cannot make a virtual environment: install python3-venv (Debian/Ubuntu:" \
          "sudo apt-get install python3-venv), then run this again" >&2
        exit 1
      fi
    fi
  fi
  python=$venv/bin/python3 venv_used=1
}

install_requirements() {
  if [ "${INSTALL:-0}" != 1 ] && has_torch "$python" && [ -z "$(missing_requirements "$python")" ]; then
    return 0
  fi
  pip_allowed "$python" || use_venv
  if [ "${INSTALL:-0}" = 1 ] || ! has_torch "$python"; then
    echo "installing requirements.txt with $python: torch's CUDA build is about 3 GB to download and" \
      "6 GB installed (keep an importable torch to skip it)" >&2
    "$python" -m pip install -r requirements.txt
    return 0
  fi
  local missing; missing=$(missing_requirements "$python")
  [ -n "$missing" ] || return 0
  local others; others=$(mktemp)
  grep -v -E '^(torch|torchvision)==' requirements.txt > "$others"
  echo "installing what $python lacks of requirements.txt ($missing); its torch stays" >&2
  "$python" -m pip install -q -r "$others" \
    || echo "warning: could not install all of requirements.txt (offline?); going on with what is installed" >&2
  rm -f "$others"
}

if ! command -v "$python" >/dev/null; then
  echo "error: $python not found: install Python 3.10 or later (Debian/Ubuntu: sudo apt-get install python3" \
    "python3-venv), or give its path in PYTHON" >&2
  exit 1
fi
install_requirements
export PYTHON=$python
if [ "${1:-}" = --test ]; then
  shift
  # the tests start python3 themselves: the same python
  case $python in */*) PATH="$(dirname "$python"):$PATH" ;; esac
  exec "$python" -m pytest -q "$@"
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
if [ -n "$venv_used" ]; then
  echo "The packages are in $venv: in each new shell, first: source $venv/bin/activate"
fi
# The next step, sized for this machine: the paper's 200-epoch probe on a GPU, a few minutes' worth on a CPU.
if "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "Next: ${RESULTS_DIR:+PRETRAIN_DIR=$RESULTS_DIR }bash scripts-linear-resnet18/fashionmnist.sh" \
    "  (linear probe of this run's best checkpoint; it prints an ETA every epoch)"
else
  echo "Next: ${RESULTS_DIR:+PRETRAIN_DIR=$RESULTS_DIR }EPOCHS=10 bash scripts-linear-resnet18/fashionmnist.sh" \
    "--subset $subset --no_aug --probe_bn eval  (a short linear probe on this CPU, a few minutes; it prints an ETA" \
    "every epoch. The paper's: 200 epochs on the whole set, hours on a CPU)"
fi

# Sourced by the launch scripts: the repository root, the launcher, and the checkpoint check.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-python3}

# launch NPROC SCRIPT ARGS...: python for one process, torchrun for several (one per GPU).
launch() {
  local nproc=$1; shift
  if [ "$nproc" -gt 1 ]; then
    "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$nproc" "$@"
  else
    "$PYTHON" "$@"
  fi
}

# require_checkpoint PATH: fail with the download instructions when PATH is missing.
require_checkpoint() {
  if [ ! -f "$1" ]; then
    local name; name=$(basename "$1")
    local url; url=$(grep -o "https://[^ )]*${name}" "$ROOT/checkpoints/README.md" | head -n 1)
    echo "error: checkpoint $1 not found." >&2
    if [ -n "$url" ]; then
      echo "Download it into checkpoints/: bash scripts/download_checkpoints.sh $name   (or: wget -P checkpoints $url)" >&2
    fi
    echo "Or evaluate your own run: MODEL_PATH=results/<run>/<...>_model.pth bash $0" >&2
    exit 1
  fi
}

# latest_run_model DATASET: the best-kNN model of the newest pretraining run on DATASET.
latest_run_model() {
  ls -t "${RESULTS_DIR:-$ROOT/results}"/*/*_"$1"_model.pth 2>/dev/null | head -n 1
}

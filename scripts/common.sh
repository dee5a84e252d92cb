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

# require_checkpoint PATH [HINT]: fail with HINT (default: the download instructions) when PATH is missing.
require_checkpoint() {
  if [ ! -f "$1" ]; then
    echo "error: checkpoint $1 not found." >&2
    if [ -n "${2:-}" ]; then
      echo "$2" >&2
    else
      local name; name=$(basename "$1")
      local url; url=$(grep -o "https://[^ )]*${name}" "$ROOT/checkpoints/README.md" | head -n 1 || true)
      if [ -n "$url" ]; then
        echo "Download it into checkpoints/: bash scripts/download_checkpoints.sh $name   (or: wget -P checkpoints $url)" >&2
      fi
      echo "Or evaluate your own run: MODEL_PATH=results/<run>/<...>_model.pth bash $0" >&2
    fi
    exit 1
  fi
}

# latest_run_model DIR DATASET: the best-kNN model (<run>_..._DATASET_model.pth) of the newest pretraining
# run on DATASET in DIR, or nothing. Only main.py run folders count (they hold last.pth), so a linear or
# transfer run folder (checkpoint.pth, results.json) can never be picked.
latest_run_model() {
  local model newest=
  for model in "$1"/*/*_"$2"_model.pth; do
    [ -f "$model" ] && [ -f "$(dirname "$model")/last.pth" ] || continue
    if [ -z "$newest" ] || [ "$model" -nt "$newest" ]; then newest=$model; fi
  done
  echo "$newest"
}

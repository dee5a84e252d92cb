#!/usr/bin/env bash
# One run on a single-GPU machine, within GPU_CHECK_BUDGET_S (default 540 s):
#   1. benchmarks/throughput.py: the reference's training loop vs ours, img/s, median ratio of
#      interleaved rounds, MFU from the counted FLOPs, the 50k-image (CIFAR-10) epoch time; CIFAR-10
#      from data/ when present, else random CIFAR-shaped images;
#   2. the Fashion-MNIST Mix-BT learning check (scripts-pretrain-resnet18/fashionmnist.sh, ResNet-18,
#      --knn_init), as many epochs as the time left allows at the measured img/s (at most 100);
#   3. summary.json and a one-line summary (also after each stage, so a killed run leaves one).
# Writes under $OUT (default ./gpu_check_out): env.log, throughput.json, throughput.log,
# fashionmnist.log, fashionmnist_statistics.csv, fashionmnist_curves.png, summary.json.
# Fashion-MNIST: data/FashionMNIST/raw/*-idx?-ubyte.gz, or /usr/share/datasets/fashion-mnist.
# A stage that fails or runs out of time does not stop the others; the exit status is 1 then.
#
#   bash benchmarks/gpu_check.sh
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_BUDGET_S=400 GPU_CHECK_SUBSET=64 GPU_CHECK_BATCH=32 GPU_CHECK_MAX_EPOCHS=1 \
#     GPU_CHECK_BENCH_ARGS='--batch_size 4 --steps 1 --warmup 1 --feature_dim 32' bash benchmarks/gpu_check.sh
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-python3}
budget=${GPU_CHECK_BUDGET_S:-540}          # the whole script, seconds (the device tool allows 600)
device=${GPU_CHECK_DEVICE:-auto}           # auto: cuda when torch sees a GPU, else cpu
bench_limit=${GPU_CHECK_BENCH_S:-200}      # the throughput stage's time limit, seconds
bench_args=${GPU_CHECK_BENCH_ARGS:-}       # more throughput.py flags (after the defaults: they win)
subset=${GPU_CHECK_SUBSET:-0}              # main.py --subset for the run (0: all of Fashion-MNIST)
batch=${GPU_CHECK_BATCH:-256}
feature_dim=${GPU_CHECK_FEATURE_DIM:-1024}
epochs=${GPU_CHECK_EPOCHS:-}               # fixed epochs (default: sized from the measured img/s)
max_epochs=${GPU_CHECK_MAX_EPOCHS:-100}
margin=${GPU_CHECK_MARGIN_S:-45}           # kept free at the end, seconds
run_args=${GPU_CHECK_RUN_ARGS:-}           # more main.py flags for the run
data_root=${GPU_CHECK_DATA_ROOT:-$ROOT/data}
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT"
export PYTHONUNBUFFERED=1 WANDB_MODE=${WANDB_MODE:-disabled}

if [ -n "${GPU_CHECK_RESULTS_DIR:-}" ]; then
  results=$GPU_CHECK_RESULTS_DIR; mkdir -p "$results"
else  # the run folder (last.pth, models) is scratch: only its CSV and PNG are kept
  results=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
  trap 'rm -rf "$results"' EXIT
fi

stages=()
plan=()
left() { echo $((budget - SECONDS)); }

summarize() {
  local args=(--out "$OUT")
  local s
  for s in "${stages[@]}"; do args+=(--stage "$s"); done
  [ ${#plan[@]} -eq 3 ] && args+=(--plan "${plan[@]}")
  "$PYTHON" -m benchmarks.gpu_check summarize "${args[@]}" 2>>"$OUT/env.log" || echo "gpu_check: summary failed"
}

# run_stage NAME LIMIT_S LOG CMD...: CMD under `timeout`, its output in LOG; records NAME=status:rc:seconds.
run_stage() {
  local name=$1 limit=$2 log=$3 rc=0 status start=$SECONDS
  shift 3
  if [ "$limit" -lt 10 ]; then
    echo "== $name: skipped, ${limit}s left"
    stages+=("$name=skipped::0")
    return 0
  fi
  echo "== $name (at most ${limit}s): $*"
  timeout -k 15 "$limit" "$@" >"$log" 2>&1 || rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
  esac
  stages+=("$name=$status:$rc:$((SECONDS - start))")
  echo "== $name: $status (exit $rc) after $((SECONDS - start))s"
  if [ "$status" != ok ]; then tail -n 15 "$log" | tr '\r' '\n' | tail -n 15 || true; fi
}

# ---- 0. the machine
{
  echo "date: $(date -u +%FT%TZ)  budget: ${budget}s"
  if command -v nvidia-smi >/dev/null; then nvidia-smi -L 2>&1 || true; else echo 'nvidia-smi: none'; fi
  "$PYTHON" -c 'import sys, torch, torchvision; print("python", sys.version.split()[0], "torch", torch.__version__,
"torchvision", torchvision.__version__, "cuda", torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>&1 || true
  shm=$(df -h /dev/shm 2>/dev/null | awk 'NR == 2 {print $2}' || true)
  echo "cpus: $(nproc 2>/dev/null || echo ?)  /dev/shm (DataLoader workers): ${shm:-?}"
} >"$OUT/env.log"
cat "$OUT/env.log"
if [ "$device" = auto ]; then
  device=$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")' 2>/dev/null || echo cpu)
fi
if [ "$device" = cpu ]; then
  gpu=-1 bench_defaults=(--device cpu --small) fallback_rate=2
else
  # Enough steps that the reference's 32 prefetched batches (16 workers x 2) do not flatter it.
  gpu=0 bench_defaults=(--device cuda --warmup 20 --steps 100) fallback_rate=5000
fi

# ---- 1. throughput, reference-style vs ours
limit=$(( $(left) - margin < bench_limit ? $(left) - margin : bench_limit ))
read -r -a extra <<<"$bench_args"
run_stage throughput "$limit" "$OUT/throughput.log" \
  "$PYTHON" -m benchmarks.throughput "${bench_defaults[@]}" --rounds 3 --data_root "$data_root" \
  --out "$OUT/throughput.json" "${extra[@]}"
tr '\r' '\n' <"$OUT/throughput.log" | grep -E '^ *(round [0-9]+/|median of)' | sed 's/^ *//' || true
summarize >/dev/null

# ---- 2. Fashion-MNIST Mix-BT, sized to the time left (data.py looks in these folders, in this order)
found=none
for dir in "$data_root/FashionMNIST/raw" "$data_root/fashion-mnist" /usr/share/datasets/fashion-mnist; do
  if ls "$dir"/train-images-idx3-ubyte* >/dev/null 2>&1; then found=$dir; break; fi
done
echo "Fashion-MNIST: $found" | tee -a "$OUT/env.log"
limit=$(( $(left) - margin ))
if [ -n "$epochs" ]; then
  plan=("$epochs" "$(( (epochs + 9) / 10 ))" 0)
else
  read -r -a plan <<<"$("$PYTHON" -m benchmarks.gpu_check plan --throughput "$OUT/throughput.json" \
    --fallback_rate "$fallback_rate" --seconds "$limit" --subset "$subset" --batch "$batch" \
    --max_epochs "$max_epochs" 2>>"$OUT/env.log" || echo 1 1 0)"
  tail -n 1 "$OUT/env.log"
fi
subset_args=()
[ "$subset" -gt 0 ] && subset_args=(--subset "$subset")
read -r -a extra <<<"$run_args"
run_stage fashionmnist "$limit" "$OUT/fashionmnist.log" \
  env EPOCHS="${plan[0]}" BATCH_SIZE="$batch" FEATURE_DIM="$feature_dim" GPU="$gpu" NPROC=1 \
  DATA_ROOT="$data_root" RESULTS_DIR="$results" PYTHON="$PYTHON" \
  bash scripts-pretrain-resnet18/fashionmnist.sh --knn_init --knn_every "${plan[1]}" --save_every 0 \
  --run_name gpu_check "${subset_args[@]}" "${extra[@]}"
tr '\r' '\n' <"$OUT/fashionmnist.log" | grep -E '^(Epoch [0-9]|Best kNN|error)' | tail -n 12 || true
for pair in statistics.csv:fashionmnist_statistics.csv curves.png:fashionmnist_curves.png; do
  found=$(ls "$results"/gpu_check/*_"${pair%%:*}" 2>/dev/null | head -n 1 || true)
  if [ -n "$found" ]; then cp "$found" "$OUT/${pair##*:}"; else echo "gpu_check: no *_${pair%%:*} in the run folder"; fi
done

# ---- 3. summary
line=$(summarize)
echo "$line"
for s in "${stages[@]}"; do
  [[ $s == *=ok:* ]] || exit 1
done

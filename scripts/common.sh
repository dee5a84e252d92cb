# Sourced by the launch scripts: the repository root, the settings check, the launcher, and the checkpoint check.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-python3}

# What a numeric setting may hold, by variable name (the same name is the same flag in every script).
# A launch-script variable with a numeric default must be listed here (tests/test_scripts.py checks it).
SETTINGS_COUNT="nproc epochs batch_size feature_dim emb head_size views w_size w_iter group iters ref_world_size
  image_size"                                                                        # whole, >= 1
SETTINGS_INTEGER="gpu warmup_steps"                                                 # whole numbers (gpu -1: CPU)
SETTINGS_NUMBER="lr lmbda lambd mixup_loss_scale lambda_mixup mixup_warmup_epochs warmup_epochs weight_decay
  w_eps tau byol_tau lr_w lr_b lr_backbone lr_classifier max_memory_gb"             # numbers: 0.01, 1e-3, 2
SETTINGS_SIZES="projector"                                                          # layer sizes: 8192-8192-8192
# Environment variables never taken for a misspelt setting.
SETTINGS_COMMON_ENV="PATH HOME USER LOGNAME SHELL TERM LANG PWD OLDPWD SHLVL HOSTNAME MAIL TZ DISPLAY EDITOR
  PAGER TMPDIR PYTHON"

# check_settings: called by a launch script after its variables, before it runs anything. It reads the
# script's top-level `name=...` lines (`name=${NAME:-default}`: overridable from the environment), prints
# every setting as name=value, warns (stderr) about environment variables that look like a misspelt NAME
# (EPOCH or epochs for EPOCHS, LR_SCHED for LR_SHED) or that name a setting the script fixes (DATASET), and
# exits 1 with an `error:` line for each numeric setting that is not a number of its kind (NPROC=two).
check_settings() {
  local script=${BASH_SOURCE[1]} line name env value i errors=0 names=() envs=() overridable=() fixed=()
  while IFS= read -r line || [ -n "$line" ]; do
    [[ $line =~ ^([a-z_][a-z0-9_]*)=(\$\{([A-Z][A-Z0-9_]*):-)? ]] || continue
    names+=("${BASH_REMATCH[1]}")
    env=${BASH_REMATCH[3]}
    if [ -n "$env" ]; then overridable+=("$env"); else fixed+=("${BASH_REMATCH[1]}"); fi
    [ -n "$env" ] && [ -n "${!env:-}" ] || env=  # from now on: the environment variable it came from, if any
    envs+=("$env")
  done < "$script"
  script=${script#"$ROOT"/}

  echo "# $script settings (override the upper-case names from the environment):"
  for i in "${!names[@]}"; do
    value=${!names[i]}
    [[ $value =~ ^[^[:space:]\']+$ ]] || value="'$value'"
    echo "${names[i]}=$value${envs[i]:+   # from ${envs[i]}}"
  done

  # Misspellings: the same name in another case, a word prefix (LR for LR_W, BATCH for BATCH_SIZE), or an
  # edit distance (insertions, deletions, substitutions, swaps of neighbours) of 1, or 2 for names of 6+ letters.
  compgen -e | awk -v known="${overridable[*]}" -v fixed="${fixed[*]}" -v common="$SETTINGS_COMMON_ENV" \
    -v script="$script" '
    function distance(a, b,   i, j, la, lb, d, D) {
      la = length(a); lb = length(b)
      for (i = 0; i <= la; i++) D[i, 0] = i
      for (j = 0; j <= lb; j++) D[0, j] = j
      for (i = 1; i <= la; i++) for (j = 1; j <= lb; j++) {
        d = D[i-1, j-1] + (substr(a, i, 1) != substr(b, j, 1))
        if (D[i-1, j] + 1 < d) d = D[i-1, j] + 1
        if (D[i, j-1] + 1 < d) d = D[i, j-1] + 1
        if (i > 1 && j > 1 && substr(a, i, 1) == substr(b, j-1, 1) && substr(a, i-1, 1) == substr(b, j, 1) \
            && D[i-2, j-2] + 1 < d) d = D[i-2, j-2] + 1
        D[i, j] = d
      }
      return D[la, lb]
    }
    BEGIN {
      nk = split(known, K, " "); nf = split(fixed, F, " "); split(common, C, /[ \n]+/)
      for (i = 1; i <= nk; i++) skip[K[i]] = 1
      for (i in C) skip[C[i]] = 1
    }
    length($0) < 2 || ($0 in skip) || $0 !~ /^[A-Za-z_][A-Za-z0-9_]*$/ { next }
    {
      e = toupper($0); hits = ""
      for (i = 1; i <= nk; i++) {
        v = K[i]; dl = length(e) - length(v)
        if (e == v || index(v, e "_") == 1 ||
            (dl <= 2 && dl >= -2 && distance(e, v) <= (length(v) >= 6 ? 2 : 1)))
          hits = hits (hits == "" ? "" : " or ") v
      }
      if (hits != "")
        printf "warning: %s is set in the environment but %s does not read it: did you mean %s?\n", $0, script, hits
      for (i = 1; i <= nf; i++)
        if (e == toupper(F[i]))
          printf "warning: %s is set in the environment but %s fixes %s (edit the script to change it)\n",
                 $0, script, F[i]
    }' >&2

  for i in "${!names[@]}"; do
    name=${names[i]}; value=${!name}
    local where="set in $script"
    [ -z "${envs[i]}" ] || where="from ${envs[i]} in the environment"
    if _settings_has "$name" $SETTINGS_COUNT && ! [[ $value =~ ^[0-9]+$ && $value =~ [1-9] ]]; then
      echo "error: $name must be a whole number >= 1, got '$value' ($where)" >&2; errors=1
    elif _settings_has "$name" $SETTINGS_INTEGER && ! [[ $value =~ ^-?[0-9]+$ ]]; then
      echo "error: $name must be a whole number, got '$value' ($where)" >&2; errors=1
    elif _settings_has "$name" $SETTINGS_NUMBER && ! [[ $value =~ ^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$ ]]; then
      echo "error: $name must be a number (such as 0.01 or 1e-3), got '$value' ($where)" >&2; errors=1
    elif _settings_has "$name" $SETTINGS_SIZES && ! [[ $value =~ ^[0-9]+(-[0-9]+)*$ ]]; then
      echo "error: $name must be layer sizes such as 8192-8192-8192, got '$value' ($where)" >&2; errors=1
    fi
  done
  if [ "$errors" != 0 ]; then exit 1; fi
}

# _settings_has NAME WORD...: whether NAME is one of the words.
_settings_has() {
  local name=$1 word; shift
  for word in "$@"; do [ "$word" != "$name" ] || return 0; done
  return 1
}

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

# Sourced by the launch scripts: the repository root, the settings check, the launcher, and the checkpoint check.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-python3}

# A setting's kind is the form of its default in the launch script (`name=${NAME:-default}` or `name=default`): whole
# numbers (1000, -1), any number (0.01, 1e-3: the default's form is the kind, so write a number flag's whole default
# as 4.0), layer sizes (8192-8192-8192) or true/false (also 1/0, yes/no); any other setting is not checked here.

# Settings that launch scripts take as main.py/linear.py flags where the script leaves them at the program's
# default (NAME:--flag): set in the environment of a script that does not read it, it gets a warning saying
# which flag to pass, never silence.
SETTINGS_AS_FLAGS="LR:--lr LR_W:--learning-rate-weights LR_B:--learning-rate-biases LR_SHED:--lr_shed
  OPTIMIZER:--optimizer WEIGHT_DECAY:--weight_decay WARMUP_STEPS:--warmup_steps WARMUP_EPOCHS:--warmup_epochs
  PROJECTOR:--projector EMB:--emb HEAD_SIZE:--head_size VIEWS:--num_views W_SIZE:--w_size GROUP:--group
  W_ITER:--w_iter W_EPS:--w_eps TAU:--tau BYOL_TAU:--byol_tau ITERS:--iters BT_LOSS:--bt_loss
  REF_WORLD_SIZE:--ref_world_size IS_MIXUP:--is_mixup PIPELINE:--pipeline FOLDER_LABELS:--folder_labels
  MAX_MEMORY_GB:--max_memory_gb LR_CLASSIFIER:--lr-classifier LR_BACKBONE:--lr-backbone FEATURE_DIM:--feature_dim
  LMBDA:--lmbda MIXUP_LOSS_SCALE:--mixup_loss_scale"
# Environment variables never taken for a misspelt setting.
SETTINGS_COMMON_ENV="PATH HOME USER LOGNAME SHELL TERM LANG PWD OLDPWD SHLVL HOSTNAME MAIL TZ DISPLAY EDITOR
  PAGER TMPDIR PYTHON"

# check_settings: called by a launch script after its variables, before it runs anything. It reads the
# script's top-level `name=...` lines (`name=${NAME:-default}`: overridable from the environment), prints
# every setting as name=value, warns (stderr) about environment variables that look like a misspelt NAME
# (EPOCH or epochs for EPOCHS, LR_SCHED for LR_SHED) or that name a setting the script fixes (DATASET), and
# exits 1 with an `error:` line for each setting that is not of its default's kind (NPROC=two, LR=fast), and for
# an nproc below 1 (launch starts that many processes).
check_settings() {
  # Its own variables start with _, so that none hides a launch-script variable of the same name.
  local _script=${BASH_SOURCE[1]} _line _name _env _value _where _i _kind _errors=0 _names=() _envs=() _kinds=() \
    _overridable=() _fixed=()
  while IFS= read -r _line || [ -n "$_line" ]; do
    [[ $_line =~ ^([a-z_][a-z0-9_]*)=(\$\{([A-Z][A-Z0-9_]*):-)? ]] || continue
    _names+=("${BASH_REMATCH[1]}")
    _env=${BASH_REMATCH[3]}
    if [ -n "$_env" ]; then _overridable+=("$_env"); else _fixed+=("${BASH_REMATCH[1]}"); fi
    _settings_kind "$_line"; _kinds+=("$_kind")
    [ -n "$_env" ] && [ -n "${!_env:-}" ] || _env=  # from now on: the environment variable it came from, if any
    _envs+=("$_env")
  done < "$_script"
  _script=${_script#"$ROOT"/}

  echo "# $_script settings (override the upper-case names from the environment):"
  for _i in "${!_names[@]}"; do
    _value=${!_names[_i]}
    [[ $_value =~ ^[^[:space:]\']+$ ]] || _value="'$_value'"
    echo "${_names[_i]}=$_value${_envs[_i]:+   # from ${_envs[_i]}}"
  done

  # Misspellings: the same name in another case, a word prefix (LR for LR_W, BATCH for BATCH_SIZE), or an
  # edit distance (insertions, deletions, substitutions, swaps of neighbours) of 1, or 2 for names of 6+ letters.
  compgen -e | awk -v known="${_overridable[*]}" -v fixed="${_fixed[*]}" -v common="$SETTINGS_COMMON_ENV" \
    -v asflags="$SETTINGS_AS_FLAGS" -v script="$_script" '
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
      na = split(asflags, A, /[ \n]+/)
      for (i = 1; i <= na; i++) if (split(A[i], pair, ":") == 2) flag[pair[1]] = pair[2]
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
      else if ($0 in flag)
        printf "warning: %s is set in the environment but %s does not read it: pass %s VALUE to change it\n",
               $0, script, flag[$0]
      for (i = 1; i <= nf; i++)
        if (e == toupper(F[i]))
          printf "warning: %s is set in the environment but %s fixes %s (edit the script to change it)\n",
                 $0, script, F[i]
    }' >&2

  for _i in "${!_names[@]}"; do
    _name=${_names[_i]}; _value=${!_name}
    _where="set in $_script"
    [ -z "${_envs[_i]}" ] || _where="from ${_envs[_i]} in the environment"
    if [ "$_name" = nproc ]; then  # the one setting the shell itself uses: launch starts that many processes
      if ! [[ $_value =~ ^[0-9]+$ && $_value =~ [1-9] ]]; then
        echo "error: $_name must be a whole number >= 1, got '$_value' ($_where)" >&2; _errors=1
      fi
      continue
    fi
    case ${_kinds[_i]} in
      whole)
        if ! [[ $_value =~ ^[+-]?[0-9]+$ ]]; then
          echo "error: $_name must be a whole number, got '$_value' ($_where)" >&2; _errors=1
        fi ;;
      number)
        if ! [[ $_value =~ ^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$ ]]; then
          echo "error: $_name must be a number (such as 0.01 or 1e-3), got '$_value' ($_where)" >&2; _errors=1
        fi ;;
      sizes)
        if ! [[ $_value =~ ^[0-9]+(-[0-9]+)*$ ]]; then
          echo "error: $_name must be layer sizes such as 8192-8192-8192, got '$_value' ($_where)" >&2; _errors=1
        fi ;;
      bool)
        case ${_value,,} in
          true | false | 1 | 0 | yes | no) ;;
          *) echo "error: $_name must be true or false (also 1/0, yes/no), got '$_value' ($_where)" >&2; _errors=1 ;;
        esac ;;
    esac
  done
  if [ "$_errors" != 0 ]; then exit 1; fi
}

# _settings_kind LINE: sets _kind to the kind of the default of a `name=${NAME:-default}` or `name=default` line:
# whole, number (a decimal point or an exponent), sizes (layer sizes), bool (true/false), or empty (not checked).
_settings_kind() {
  local default
  _kind=
  [[ $1 =~ ^[a-z_][a-z0-9_]*=(\$\{[A-Z][A-Z0-9_]*:-([^}]*)\}|([^[:space:]#\$\"\']*))([[:space:]]|$) ]] || return 0
  default=${BASH_REMATCH[2]}${BASH_REMATCH[3]}
  if [[ $default =~ ^[+-]?[0-9]+$ ]]; then
    _kind=whole
  elif [[ $default =~ ^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$ ]]; then  # with a point or an exponent
    _kind=number
  elif [[ $default =~ ^[0-9]+(-[0-9]+)+$ ]]; then
    _kind=sizes
  elif [[ ${default,,} == true || ${default,,} == false ]]; then
    _kind=bool
  fi
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

#!/usr/bin/env bash
# Download the released checkpoints (checkpoints/README.md) into checkpoints/, and check them.
#   bash scripts/download_checkpoints.sh                 # all of them
#   bash scripts/download_checkpoints.sh 4wdhbpcf_0.0078125_1024_256_cifar10_model.pth ...
# A file is accepted, downloaded or already there, only when it is a complete PyTorch zip checkpoint (central
# directory, CRCs, data.pkl) with the size and sha256 that checkpoints/manifest.txt records (where known).
# A download goes to NAME.part: an interrupted one is continued (here, or by the next run); a file that fails
# the check is continued if it is a partial copy, else fetched again from the start, and never accepted.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-python3}
dest=${CHECKPOINT_DIR:-$ROOT/checkpoints}
manifest=$ROOT/checkpoints/manifest.txt

# file name of each URL; the official Barlow Twins resnet50.pth is saved under a less generic name
local_name() {
  local name; name=$(basename "$1")
  if [ "$name" = resnet50.pth ]; then echo barlowtwins_official_resnet50.pth; else echo "$name"; fi
}
urls=$(grep -o 'https://[^ )]*\.pth' "$ROOT/checkpoints/README.md")
known=$(for url in $urls; do local_name "$url"; done)
for name in "$@"; do
  # a here-string, not a pipe: under pipefail, grep -q quitting early can fail the printf (SIGPIPE)
  if ! grep -qxF -- "$name" <<< "$known"; then
    echo "error: unknown checkpoint '$name'. The released checkpoints (checkpoints/README.md) are:" >&2
    printf '  %s\n' $known >&2
    exit 1
  fi
done

# check FILE NAME: prints "SIZE SHA256" of a good file; else the reason, and fails.
check() {
  local size=unknown sha=unknown
  read -r size sha < <(awk -v n="$2" '$1 == n { print $2, $3 }' "$manifest")
  "$PYTHON" - "$1" "${size:-unknown}" "${sha:-unknown}" <<'EOF'
import hashlib, os, sys, zipfile
path, size, sha = sys.argv[1:]
if size != 'unknown' and os.path.getsize(path) != int(size):
    sys.exit(f'{os.path.getsize(path)} bytes, the release file has {size}')
try:
    with zipfile.ZipFile(path) as z:
        bad, names = z.testzip(), z.namelist()
except Exception as e:  # no central directory (truncated), or a member that cannot be read
    sys.exit(f'not a complete PyTorch zip checkpoint: truncated, or not a checkpoint ({e})')
if bad is not None:
    sys.exit(f'CRC error in {bad}')
if not any(n == 'data.pkl' or n.endswith('/data.pkl') for n in names):
    sys.exit('a zip archive, but not a PyTorch checkpoint (no data.pkl)')
digest = hashlib.sha256()
with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
        digest.update(block)
if sha != 'unknown' and not digest.hexdigest().startswith(sha.lower()):
    sys.exit(f'sha256 {digest.hexdigest()}, the release file has {sha}')
print(os.path.getsize(path), digest.hexdigest() if sha == 'unknown' else 'known')
EOF
}

# accepted NAME SIZE SHA256 VERB: report a file that passed; an unknown size/sha256 is printed for the manifest.
accepted() {
  if [ "$3" = known ]; then
    echo "$4 $1 (size and sha256 as checkpoints/manifest.txt records)"
  else
    echo "$4 $1 (a complete PyTorch checkpoint; not in checkpoints/manifest.txt yet: $2 bytes, sha256 $3)"
  fi
}

# size FILE: bytes (0 when missing)
size() { if [ -f "$1" ]; then wc -c < "$1" | tr -d ' '; else echo 0; fi; }

# download URL PART: fetch URL into PART, continuing PART when it holds the start of the file. A progress
# bar only on a terminal. No --retry: curl calls a failed name lookup "timeout" and tries it again; this
# script continues what made progress itself, and stops at the first sign of no network.
if command -v curl >/dev/null; then
  downloader=curl
  download() {
    if [ -s "$2" ]; then set -- "$1" "$2" -C -; fi
    if [ -t 2 ]; then set -- "$@" --progress-bar; else set -- "$@" -sS; fi
    curl -fL --connect-timeout 20 "${@:3}" -o "$2" "$1"
  }
  refused() { [ "$1" = 22 ] || [ "$1" = 33 ] || [ "$1" = 36 ]; }  # HTTP error (416: range), no range, bad resume
else
  downloader=wget
  download() { if [ -s "$2" ]; then set -- "$1" "$2" -c; fi; wget -q -T 20 -t 1 "${@:3}" -O "$2" "$1"; }
  refused() { [ "$1" = 8 ]; }                                     # the server answered with an error
fi

# network_cause URL RC: why the host of URL never answered, when RC is the downloader's code for that.
network_cause() {
  local host=${1#*://}; host=${host%%/*}
  case $downloader:$2 in
    curl:6) echo "cannot resolve $host: no network?" ;;
    curl:5) echo "cannot resolve the proxy (https_proxy=${https_proxy:-}): no network?" ;;
    curl:7) echo "cannot connect to $host: no network, or a firewall (behind a proxy? set https_proxy)" ;;
    curl:28) echo "$host did not answer in 20 s: no network?" ;;
    wget:4)  # wget says only "network failure": ask the resolver
      if command -v getent >/dev/null && ! getent hosts "$host" >/dev/null; then
        echo "cannot resolve $host: no network?"
      else
        echo "cannot reach $host: no network, or a firewall?"
      fi ;;
    *) return 1 ;;
  esac
}

# fetch NAME URL: download NAME until it passes the check. Fails with $error set; with $offline set too
# when the network is not there (then nothing else is tried).
fetch() {
  local name=$1 url=$2 file=$dest/$1 part=$dest/$1.part tries=0 before after rc result= expected
  echo "fetching $name"
  while :; do
    tries=$((tries + 1)) before=$(size "$part")
    [ "$before" = 0 ] || echo "continuing $name.part from byte $before"
    download "$url" "$part"; rc=$?
    after=$(size "$part")
    if [ $rc = 0 ]; then
      if result=$(check "$part" "$name" 2>&1); then mv -f "$part" "$file"; accepted "$name" $result fetched; return 0; fi
      expected=$(awk -v n="$name" '$1 == n { print $2 }' "$manifest")
      if [[ $expected =~ ^[0-9]+$ ]] && [ "$after" -ge "$expected" ]; then  # all of it, and not the release file
        rm -f "$part"; error="$url does not give the release file ($result)"; return 1
      elif [ "$after" -le "$before" ]; then
        echo "warning: $name.part does not complete to the release file ($result): fetching it again from the start" >&2
        rm -f "$part"
      fi  # else: it ended early without an error: continue it
    elif [ "$after" -gt "$before" ]; then
      :  # interrupted after some progress: continue it
    elif offline=$(network_cause "$url" $rc); then
      error="could not download $name: $offline"; return 1
    elif [ "$before" != 0 ] && refused $rc; then
      echo "warning: the server would not continue $name.part: fetching it again from the start" >&2
      rm -f "$part"
    else
      error="could not download $url ($downloader exit code $rc)"; return 1
    fi
    if [ $tries -ge 4 ]; then
      error="could not get the release file from $url in $tries tries${result:+ (last check: $result)}"; return 1
    fi
  done
}

mkdir -p "$dest"
present= missing= offline=  # space-separated names
for url in $urls; do
  name=$(local_name "$url")
  if [ $# -gt 0 ] && ! grep -qxF -- "$name" <<< "$(printf '%s\n' "$@")"; then continue; fi
  file=$dest/$name part=$dest/$name.part
  if [ -f "$file" ]; then
    if result=$(check "$file" "$name" 2>&1); then accepted "$name" $result have; present+=" $name"; continue; fi
    echo "warning: $file is not the release file ($result): downloading it again (continued if it is the start of it)" >&2
    mv -f "$file" "$part"
  fi
  if [ -n "$offline" ]; then missing+=" $name"; continue; fi  # no network: not tried again
  error=
  if fetch "$name" "$url"; then present+=" $name"; continue; fi
  missing+=" $name"
  echo "error: $error" >&2
  if [ -s "$part" ]; then
    echo "The incomplete file is kept in $part: run this script again to continue it." >&2
  else
    rm -f "$part"
  fi
done

count() { echo $#; }
echo "$(count $present) of $(count $present $missing) checkpoints present in $dest"
if [ -n "$missing" ]; then
  {
    echo "missing:"
    printf '  %s\n' $missing
    [ -z "$offline" ] || [ "$(count $missing)" = 1 ] || echo "The others were not tried: $offline"
    echo "Fetched elsewhere (the URLs are in checkpoints/README.md; barlowtwins_official_resnet50.pth is the"
    echo "official resnet50.pth), they go in $dest/ under these names; then run this script again to check them."
  } >&2
  exit 1
fi

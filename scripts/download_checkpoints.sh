#!/usr/bin/env bash
# Download the released checkpoints (checkpoints/README.md) into checkpoints/.
#   bash scripts/download_checkpoints.sh                 # all of them
#   bash scripts/download_checkpoints.sh 4wdhbpcf_0.0078125_1024_256_cifar10_model.pth ...
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest=${CHECKPOINT_DIR:-$ROOT/checkpoints}

# file name of each URL; the official Barlow Twins resnet50.pth is saved under a less generic name
local_name() {
  local name; name=$(basename "$1")
  if [ "$name" = resnet50.pth ]; then echo barlowtwins_official_resnet50.pth; else echo "$name"; fi
}
urls=$(grep -o 'https://[^ )]*\.pth' "$ROOT/checkpoints/README.md")
known=$(for url in $urls; do local_name "$url"; done)
for name in "$@"; do
  if ! printf '%s\n' "$known" | grep -qxF -- "$name"; then
    echo "error: unknown checkpoint '$name'. The released checkpoints (checkpoints/README.md) are:" >&2
    printf '  %s\n' $known >&2
    exit 1
  fi
done

mkdir -p "$dest"
failed=0
for url in $urls; do
  name=$(local_name "$url")
  if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -qxF -- "$name"; then continue; fi
  if [ -f "$dest/$name" ]; then echo "have $name"; continue; fi
  echo "fetching $name"
  if command -v curl >/dev/null; then
    curl -fL --retry 2 --connect-timeout 20 -o "$dest/$name.part" "$url"
  else
    wget -q -T 20 -O "$dest/$name.part" "$url"
  fi
  if [ $? -eq 0 ] && [ -s "$dest/$name.part" ]; then
    mv "$dest/$name.part" "$dest/$name"
  else
    rm -f "$dest/$name.part"
    echo "error: could not download $url (no network access from this machine?). Download it elsewhere and copy it to $dest/$name" >&2
    failed=1
  fi
done
exit $failed

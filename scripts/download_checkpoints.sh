#!/usr/bin/env bash
# Download the released checkpoints (checkpoints/README.md) into checkpoints/.
#   bash scripts/download_checkpoints.sh                 # all of them
#   bash scripts/download_checkpoints.sh 4wdhbpcf_0.0078125_1024_256_cifar10_model.pth ...
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest=${CHECKPOINT_DIR:-$ROOT/checkpoints}
mkdir -p "$dest"
mapfile -t urls < <(grep -o 'https://[^ )]*\.pth' "$ROOT/checkpoints/README.md")
wanted=("$@")
failed=0
for url in "${urls[@]}"; do
  name=$(basename "$url")
  [ "$name" = resnet50.pth ] && name=barlowtwins_official_resnet50.pth
  if [ ${#wanted[@]} -gt 0 ] && ! printf '%s\n' "${wanted[@]}" | grep -qxF "$name"; then continue; fi
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

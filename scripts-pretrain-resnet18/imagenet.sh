#!/usr/bin/env bash
# Mix-BT pretraining on ImageNet: runs scripts-pretrain-resnet50/imagenet.sh (a ResNet-50) with the same
# environment variables and flags. It exists because the original repository's README starts ImageNet
# pretraining with `sh scripts-pretrain-resnet18/imagenet.sh` (that file trained a ResNet-50 too).
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"   # started with sh (dash): re-run with bash
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../scripts-pretrain-resnet50/imagenet.sh" "$@"

#!/usr/bin/env bash
# Runs tests/reference/mergekit_methods_check.py: every deterministic merge method through
# soup-merge and mergekit on the same small float32 model directories, with the number of
# bit-identical tensors and the largest difference in ulps per method. Not part of .ci/run:
# mergekit needs torch. Run it by hand after changing a method:
#
#   MERGEKIT_VENV=/work/bench-venv tests/reference/mergekit_methods_check.sh [float32|bfloat16]
#
# MERGEKIT_VENV: a venv with mergekit (it brings torch, numpy and safetensors).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${MERGEKIT_VENV:?set MERGEKIT_VENV to a venv with mergekit installed}
cargo build --release --bin soup-merge
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$venv/bin/python" tests/reference/mergekit_methods_check.py \
    "${CARGO_TARGET_DIR:-target}/release/soup-merge" "$venv/bin/mergekit-yaml" "$work" --dtype "${1:-float32}"

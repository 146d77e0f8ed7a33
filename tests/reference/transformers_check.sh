#!/usr/bin/env bash
# Runs tests/reference/transformers_check.py: transformers' from_pretrained loads a sharded model
# directory written by soup-merge and runs a forward pass; with MERGEKIT_YAML set, mergekit runs
# the same linear recipe and the outputs are compared. Not part of .ci/run: torch from PyPI is
# several GB. Run it by hand after changing model-directory output:
#
#   tests/reference/transformers_check.sh                 # makes the venv on first use
#   HF_VENV=/work/venv-hf MERGEKIT_YAML=/path/to/mergekit-yaml tests/reference/transformers_check.sh
#
# HF_VENV: a venv with torch, transformers and safetensors (default ~/.cache/model-soup/venv-hf,
# created with pip if missing). MERGEKIT_YAML: mergekit's mergekit-yaml, from its own venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${HF_VENV:-$HOME/.cache/model-soup/venv-hf}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch transformers safetensors
fi
cargo build --release --bin soup-merge
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export HF_HUB_OFFLINE=1
"$venv/bin/python" tests/reference/transformers_check.py \
    "${CARGO_TARGET_DIR:-target}/release/soup-merge" "$work" \
    ${MERGEKIT_YAML:+--mergekit-yaml "$MERGEKIT_YAML"}

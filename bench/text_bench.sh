#!/usr/bin/env bash
# The language-model evaluator's benchmark (BENCHMARKS.md, "Language models"): candle against
# transformers on PyTorch, same machine, same run, same threads.
#
#   TORCH_PYTHON=/work/torch-venv/bin/python THREADS=2 bench/text_bench.sh [WORK_DIR]
#
# PARTS (default "forward greedy") picks the parts; files made in WORK_DIR by an earlier run are
# reused.
#
# 1. Forward throughput, tokens/s: a random 99.5M-parameter Llama (hidden 768, 8 layers, GQA,
#    vocab 32000), batch BATCH (default 1) x 512 tokens, logits at every position, f32; candle
#    through soup-eval's registry (examples/bench-text.rs) and transformers, alternating,
#    REPEAT (default 3) times each.
# 2. Greedy peak RSS: soup-eval greedy by validation loss over K = 2 and 4 perturbed copies of a
#    random 246M-parameter Llama (S = 0.98 GB each in f32) on pre-tokenised data (4 x 128
#    tokens), max RSS from /usr/bin/time.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${TORCH_PYTHON:?set TORCH_PYTHON to a python with torch, transformers and safetensors}
threads=${THREADS:-2}
batch=${BATCH:-1}
repeat=${REPEAT:-3}
work=${1:-$(mktemp -d "${TMPDIR:-/tmp}/soup-text-bench.XXXXXX")}
mkdir -p "$work"
target=${CARGO_TARGET_DIR:-$repo/target}
(cd "$repo" && cargo build --release -p soup-eval --bin soup-eval --example bench-text >&2)
probe="$target/release/examples/bench-text"
soup_eval="$target/release/soup-eval"
export RAYON_NUM_THREADS=$threads

parts=${PARTS:-forward greedy}
echo "# machine: $(nproc) cores, $(uname -m), threads $threads, $(date -u '+%F %H:%M') UTC, load $(cut -d' ' -f1-3 /proc/loadavg)"
[[ -f $work/base/model.safetensors ]] || "$py" "$repo/bench/text_models.py" save "$work/base"
if [[ $parts == *forward* ]]; then
    for ((r = 0; r < repeat; r++)); do
        "$py" "$repo/bench/text_models.py" torch "$work/base" "$threads" "$batch" 512 2 2>/dev/null
        "$probe" "$work/base" "$batch" 512 2
    done
fi

[[ $parts == *greedy* ]] || exit 0
[[ -f $work/base-1g/model.safetensors ]] || "$py" "$repo/bench/text_models.py" save "$work/base-1g" 1g
[[ -f $work/ingredients/ft-3/model.safetensors ]] || "$py" "$repo/bench/text_models.py" ingredients "$work/base-1g" "$work/ingredients" 4
[[ -f $work/val.safetensors ]] || "$py" "$repo/bench/text_models.py" data "$work/val.safetensors" 4 128
for k in 2 4; do
    dirs=()
    for ((i = 0; i < k; i++)); do dirs+=("$work/ingredients/ft-$i"); done
    /usr/bin/time -f "%M %e" -o "$work/time-$k" "$soup_eval" greedy --val "$work/val.safetensors" \
        --seq-len 128 --batch-size 4 -q --json -o "$work/greedy-$k" "${dirs[@]}" > "$work/greedy-$k.json" 2> "$work/greedy-$k.err"
    read -r rss seconds < "$work/time-$k"
    echo "{\"tool\": \"soup-eval greedy\", \"k\": $k, \"peak_rss_mib\": $((rss / 1024)), \"seconds\": $seconds, \"kept\": $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["greedy"]["search"]["chosen"]))' "$work/greedy-$k.json" 2>/dev/null || echo null)}"
    rm -rf "$work/greedy-$k"
done

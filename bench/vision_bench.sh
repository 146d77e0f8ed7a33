#!/usr/bin/env bash
# The vision evaluator's benchmark (BENCHMARKS.md, "Vision evaluator"): candle against PyTorch,
# same machine, same run, same threads.
#
#   TORCH_PYTHON=/work/torch-venv/bin/python THREADS=2 bench/vision_bench.sh [WORK_DIR]
#
# PARTS (default "forward preprocess greedy") picks which of the three parts below run; files
# made in WORK_DIR by an earlier run are reused. BEFORE_PROBE=path/to/an/older/bench-vision
# also runs that build's forward probe, interleaved, for a before/after ratio in the same run
# (build it from the older commit, e.g. `git archive OLD | tar -x -C /tmp/old` then `cargo
# build --release -p soup-eval --example bench-vision` there, and copy the binary out).
#
# 1. Forward throughput, images/s: ResNet-50 and ViT-B/16 (torchvision constructors, random
#    weights), batch 32 at 224x224, eval mode; candle through soup-eval's evaluator
#    (examples/bench-vision.rs), PyTorch with torch.set_num_threads(THREADS).
# 2. Preprocessing throughput: decode + torchvision's eval transform of 128 JPEGs (500x375),
#    soup-eval's loader against ImageFolder + the ImageNet preset.
# 3. Greedy peak RSS: soup-eval greedy over K = 2, 4, 8 perturbed 2-class ResNet-50s (S = 94 MB
#    each in f32) on a 32-image folder, max RSS from /usr/bin/time.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${TORCH_PYTHON:?set TORCH_PYTHON to a python with torch, torchvision, Pillow and safetensors}
threads=${THREADS:-2}
work=${1:-$(mktemp -d "${TMPDIR:-/tmp}/soup-vision-bench.XXXXXX")}
mkdir -p "$work"
target=${CARGO_TARGET_DIR:-$repo/target}
(cd "$repo" && cargo build --release -p soup-eval --bin soup-eval --example bench-vision >&2)
probe="$target/release/examples/bench-vision"
soup_eval="$target/release/soup-eval"
export RAYON_NUM_THREADS=$threads

parts=${PARTS:-forward preprocess greedy}
echo "# machine: $(nproc) cores, $(uname -m), threads $threads, $(date -u '+%F %H:%M') UTC, load $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ $parts == *forward* ]]; then
    [[ -f $work/resnet50.safetensors ]] || "$py" "$repo/bench/vision_models.py" save "$work"
    for model in resnet50 vit_b_16; do
        "$py" "$repo/bench/vision_models.py" torch "$work/$model.safetensors" "$threads" 32 3
        if [[ -n ${BEFORE_PROBE:-} ]]; then
            echo -n "before: "
            "$BEFORE_PROBE" forward "$work/$model.safetensors" 32 3
        fi
        "$probe" forward "$work/$model.safetensors" 32 3
    done
fi

if [[ $parts == *preprocess* ]]; then
    [[ -d $work/jpegs ]] || "$py" "$repo/bench/vision_models.py" jpegs "$repo/fixtures/vision/photos" "$work/jpegs" 128
    "$py" "$repo/bench/vision_models.py" preprocess "$work/jpegs" "$threads"
    "$probe" preprocess "$work/jpegs"
fi

[[ $parts == *greedy* ]] || exit 0
[[ -d $work/val ]] || "$py" "$repo/bench/vision_models.py" jpegs "$repo/fixtures/vision/photos" "$work/val" 32
mkdir -p "$work/ingredients"
[[ -f $work/ingredients/ft-7.safetensors ]] || "$py" "$repo/bench/vision_models.py" ingredients "$work/ingredients" 8
for k in 2 4 8; do
    files=()
    for ((i = 0; i < k; i++)); do files+=("$work/ingredients/ft-$i.safetensors"); done
    /usr/bin/time -f "%M %e" -o "$work/time-$k" "$soup_eval" greedy --arch resnet50 --val "$work/val" --test "$work/val" \
        --batch-size 32 -q --json "${files[@]}" > "$work/greedy-$k.json" 2> "$work/greedy-$k.err"
    read -r rss seconds < "$work/time-$k"
    echo "{\"tool\": \"soup-eval greedy\", \"k\": $k, \"peak_rss_mib\": $((rss / 1024)), \"seconds\": $seconds}"
done

#!/usr/bin/env bash
# CI smoke test of the benchmark harness (not a benchmark: no timing is judged).
#
#   SOUP_PYTHON=/path/to/venv/bin/python bench/smoke.sh
#
# Makes three ~4 MB checkpoints per dtype (bf16, f16), then runs bench/bench.py once over them: the floor
# scripts, soup-merge and the numpy baseline, compare.py against a float64 reference, and soup-merge
# at 1 and 2 threads with `cmp`. SOUP_PYTHON needs numpy and safetensors only (no torch, no mergekit).
# soup-merge is $SOUP_MERGE, else target/release/soup-merge, else target/debug/soup-merge.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fail() { echo "bench smoke: FAILED: $*"; exit 1; }

py=${SOUP_PYTHON:-}
[[ -n $py ]] || fail "set SOUP_PYTHON to a python that has numpy and safetensors"
"$py" -c 'import numpy, safetensors' 2>/dev/null || fail "$py cannot import numpy and safetensors"

bin=${SOUP_MERGE:-}
if [[ -z $bin ]]; then
    for candidate in "$repo/target/release/soup-merge" "$repo/target/debug/soup-merge"; do
        [[ -x $candidate ]] && { bin=$candidate; break; }
    done
fi
[[ -n $bin && -x $bin ]] || fail "no soup-merge binary; run cargo build --bin soup-merge or set SOUP_MERGE"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/soup-bench-smoke.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

for dtype in bf16 f16; do
    if ! "$py" "$repo/bench/bench.py" --data "$scratch/$dtype" --sizes 0.004 --hidden 64 --vocab 256 \
        --dtype "$dtype" --phases tools,threads --tools soup,numpy --reps 1 --settle 0 \
        --python "$py" --soup-merge "$bin" >"$scratch/$dtype.md" 2>"$scratch/$dtype.log"; then
        cat "$scratch/$dtype.log" "$scratch/$dtype.md"
        fail "bench.py exited non-zero for $dtype (log above)"
    fi
    grep -q '^ok   soup:' "$scratch/$dtype.md" || { cat "$scratch/$dtype.md"; fail "$dtype: soup-merge output not confirmed by compare.py"; }
    grep -q 'byte-identical (`cmp`): \*\*yes\*\*' "$scratch/$dtype.md" || { cat "$scratch/$dtype.md"; fail "$dtype: outputs at 1 and 2 threads differ"; }
    grep -q '^| soup-merge | [0-9]' "$scratch/$dtype.md" || { cat "$scratch/$dtype.md"; fail "$dtype: no soup-merge timing row"; }
done
echo "bench smoke: ok (bf16, f16: soup-merge timed, agrees with the float64 reference and the numpy baseline, identical at 1 and 2 threads)"

#!/usr/bin/env bash
# CI smoke test of the benchmark harness (not a benchmark: no timing is judged).
#
#   SOUP_PYTHON=/path/to/venv/bin/python bench/smoke.sh
#
# Makes three ~4 MB checkpoints per dtype (bf16, f16) with bench/make_checkpoint.py, then runs
# bench/bench.py once over them: the three floors (cat, dd, cp), soup-merge and the numpy baseline,
# compare.py against a float64 reference, and soup-merge at 1 and 2 threads with `cmp`. Also checks
# that the generator is deterministic and its files open with the safetensors package, and that the
# mergekit recipe writer gives one weight line per model. Uses nothing outside the repository.
# SOUP_PYTHON needs numpy and safetensors only (no torch, no mergekit).
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

# The generator: same seed, same bytes; another seed, other bytes; the official parser accepts it.
n=0
for seed in 0 0 1; do
    n=$((n + 1))
    "$py" "$repo/bench/make_checkpoint.py" "$scratch/gen-$n-seed$seed" --gib 0.001 --hidden 32 --vocab 64 \
        --seed "$seed" >/dev/null || fail "make_checkpoint.py exited non-zero"
done
gen=("$scratch"/gen-*)
[[ ${#gen[@]} == 3 ]] || fail "expected 3 generated checkpoints, found ${#gen[@]}"
same=0
for a in "${gen[@]}"; do for b in "${gen[@]}"; do
    [[ $a < $b ]] && cmp -s "$a/model.safetensors" "$b/model.safetensors" && same=$((same + 1))
done; done
[[ $same == 1 ]] || fail "make_checkpoint.py: expected exactly one identical pair (seeds 0, 0, 1), found $same"
for g in "${gen[@]}"; do
    "$py" -c 'import json, sys; from safetensors import safe_open
with safe_open(sys.argv[1] + "/model.safetensors", framework="numpy") as f:
    assert any(k.endswith("mlp.down_proj.weight") for k in f.keys())
assert json.load(open(sys.argv[1] + "/config.json"))["model_type"] == "llama"' "$g" \
        || fail "$g: not a safetensors model directory with a llama config.json"
done
recipe=$("$py" "$repo/bench/mergekit_config.py" --dtype f16 "${gen[@]}") || fail "mergekit_config.py exited non-zero"
[[ $(grep -c '^    parameters: {weight: 0.3333333333333333}$' <<<"$recipe") == 3 ]] \
    || { echo "$recipe"; fail "mergekit_config.py: expected three weights of 1/3"; }
grep -q '^out_dtype: float16$' <<<"$recipe" || { echo "$recipe"; fail "mergekit_config.py: out_dtype"; }

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
    for floor in 'read: `cat`' 'write: `dd`' 'copy: `cp`'; do
        grep -qF "| floor, $floor" "$scratch/$dtype.md" || { cat "$scratch/$dtype.md"; fail "$dtype: no floor row for $floor"; }
    done
    grep -q '^soup-merge / tight floor max(read, write), per repetition: median [0-9.]*×' "$scratch/$dtype.md" \
        || { cat "$scratch/$dtype.md"; fail "$dtype: no ratio to the tight floor"; }
done
echo "bench smoke: ok (generator deterministic; bf16, f16: floors and soup-merge timed, soup-merge agrees with the float64 reference and the numpy baseline, identical at 1 and 2 threads)"

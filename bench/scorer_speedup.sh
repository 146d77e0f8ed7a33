#!/usr/bin/env bash
# The speed-up of soup-eval --jobs and --speculate with a scorer that sleeps (README, "Any
# scorer"): the five designed ingredients of eval/tests/scorer_known.rs, scored by the
# known-answer scorer after SCORER_SLEEP seconds, then by a sleeping sh scorer that rejects
# every soup. Needs SOUP_PYTHON (numpy, safetensors) and a release build of soup-eval.
#   SOUP_PYTHON=venv/bin/python bench/scorer_speedup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python="${SOUP_PYTHON:?set SOUP_PYTHON to a Python with numpy and safetensors}"
eval_bin="${SOUP_EVAL:-${CARGO_TARGET_DIR:-$PWD/target}/release/soup-eval}"
sleep_s="${SCORER_SLEEP:-2}"
scorer_py="$PWD/eval/tests/scorers/distance.py"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
"$python" - <<'PY'
import numpy as np
from safetensors.numpy import save_file
target = np.array([0.5, -0.25, 1.0])
offsets = {"a": [1.75, -1.25, -0.5], "b": [1.5, 0.25, -2.0], "c": [1.5, -1.5, -1.75],
           "d": [0.25, 2.0, 2.0], "e": [2.0, 2.0, -2.0]}
for k, v in offsets.items():
    x = (target + np.array(v)).astype(np.float32)
    save_file({"a.weight": x[:2], "b.bias": x[2:]}, f"ft-{k}.safetensors")
t = target.astype(np.float32)
save_file({"a.weight": t[:2], "b.bias": t[2:]}, "target.safetensors")
PY
summary() {
    "$python" -c "import json,sys; r=json.load(open('out.json')); s=r['scorer']; g=r['greedy']['search']
print('%-10s %-24s wall %5.1f s  scorer %5.1f s  one-at-a-time runs %5.1f s  speedup %.2fx  discarded %d  chosen %s' % (sys.argv[1], sys.argv[2] or '(none)', s['wall_seconds'], s['scorer_seconds'], s['sequential_seconds'], s['speedup'], g['discarded'], g['chosen']))" "$1" "$2"
}
for opts in "" "--jobs 2" "--jobs 2 --speculate 2" "--jobs 4 --speculate 4"; do
    # shellcheck disable=SC2086
    SCORER_SLEEP="$sleep_s" "$eval_bin" greedy -q --json ft-*.safetensors $opts \
        --scorer "$python $scorer_py {checkpoint} target.safetensors" >out.json
    summary designed "$opts"
done
for opts in "" "--jobs 2" "--jobs 2 --speculate 2" "--jobs 4 --speculate 4"; do
    # shellcheck disable=SC2086
    "$eval_bin" greedy -q --json ft-*.safetensors $opts \
        --scorer "sh -c 'sleep $sleep_s; test -e \"\$1\" && echo \${{#2}}' scorer {checkpoint} {name}" >out.json
    summary rejecting "$opts"
done

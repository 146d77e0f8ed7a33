#!/usr/bin/env bash
# Times two or more soup-merge binaries on the same merge, alternated, for an A/B of one change:
# on this shared machine, runs of one binary after the other drift by more than most changes
# are worth, and alternating spreads that drift over every binary alike.
#
#   bench/ab.sh ROUNDS BINARY... -- SOUP_MERGE_ARGS...
#   e.g. bench/ab.sh 6 /tmp/before target/release/soup-merge -- --method ties --base base ft1 ft2 -w 0.5,0.5 --density 0.5
#
# Runs in DATA_DIR/in-GIBg (the inputs of bench/methods.sh; GIB default 1, DATA_DIR default
# ${TMPDIR:-/tmp}/soup-methods), so model names such as base, ft1 and ft2 are relative to it.
# Each run starts as bench/methods.sh's do: the previous output removed and the dirty pages
# written. Prints each binary's mean wall, user and system seconds over ROUNDS runs.
set -euo pipefail

rounds=${1:?usage: bench/ab.sh ROUNDS BINARY... -- SOUP_MERGE_ARGS...}
shift
bins=()
while (( $# )) && [[ $1 != -- ]]; do bins+=("$1"); shift; done
[[ ${1:-} == -- && ${#bins[@]} -ge 2 ]] || { echo "error: give two or more binaries, then --, then the merge's arguments" >&2; exit 2; }
shift
data=${DATA_DIR:-${TMPDIR:-/tmp}/soup-methods}
in=$data/in-${GIB:-1}g
[[ -e $in/.done ]] || { echo "error: $in has no inputs; run bench/methods.sh ${GIB:-1} $data first" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "error: /usr/bin/time is missing (apt-get install time)" >&2; exit 1; }
for b in "${bins[@]}"; do [[ -x $b ]] || { echo "error: $b is not an executable" >&2; exit 1; }; done
out=$data/out/ab.safetensors
mkdir -p "$data/out"
cd "$in"
for _ in $(seq "$rounds"); do
    for i in "${!bins[@]}"; do
        rm -rf "$out"
        sync
        /usr/bin/time -f "$i %e %U %S" "${bins[$i]}" "$@" -o "$out" -q 2>&1 >/dev/null | tail -1
    done
done | awk '{w[$1] += $2; u[$1] += $3; s[$1] += $4; n[$1]++}
           END {for (i in n) printf "%d %.2f %.2f %.2f %d\n", i, w[i] / n[i], u[i] / n[i], s[i] / n[i], n[i]}' |
    sort -n | while read -r i wall user sys n; do
        echo "${bins[$i]}: wall $wall s, user $user s, sys $sys s (mean of $n)"
    done
rm -rf "$out"

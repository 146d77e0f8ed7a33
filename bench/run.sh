#!/usr/bin/env bash
# Benchmark entry point: prepares the tools, then runs bench/bench.py with the given arguments.
#
#   bench/run.sh --sizes 1,4 --phases tools,threads,cold --reps 5 --check-every 1
#   bench/run.sh --sizes 1,2,4,8 --phases scaling --reps 3 --big-gib 8 --big-reps 1
#
# Environment: BENCH_VENV (default /work/bench-venv) gets mergekit, CPU-only use of PyPI torch, numpy
# and safetensors on first use (about 6 GB, torch brings its CUDA libraries); BENCH_DATA (default
# /work/bench-data) holds checkpoints, outputs, logs and results/; SOUP_MERGE skips the cargo build
# and uses that binary. Both directories must be outside the repository. See BENCHMARKS.md.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${BENCH_VENV:-/work/bench-venv}
data=${BENCH_DATA:-/work/bench-data}

die() { echo "error: $*" >&2; exit 1; }

case $(realpath -m "$venv")/ in "$repo"/*) die "BENCH_VENV=$venv is inside the repository; pick a directory outside it" ;; esac
case $(realpath -m "$data")/ in "$repo"/*) die "BENCH_DATA=$data is inside the repository; pick a directory outside it" ;; esac

if ! "$venv/bin/python" -c 'import mergekit, torch, numpy, safetensors' 2>/dev/null; then
    mkdir -p "$(dirname "$venv")"
    avail=$(df --output=avail -B1G "$(dirname "$venv")" | tail -1 | tr -d ' ')
    (( avail >= 10 )) || die "installing mergekit needs about 7 GB; only ${avail} GiB free under $(dirname "$venv")"
    echo "bench: installing mergekit, torch, numpy, safetensors into $venv (several minutes, ~6 GB)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet mergekit numpy safetensors
fi

if [[ ! -x /usr/bin/time ]]; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq time >/dev/null
    else
        echo "bench: /usr/bin/time missing; peak RSS will come from os.wait4 instead" >&2
    fi
fi

if [[ -n ${SOUP_MERGE:-} ]]; then
    bin=$SOUP_MERGE
else
    (cd "$repo" && cargo build --release --bin soup-merge)
    bin=$repo/target/release/soup-merge
fi

mkdir -p "$data"
echo "bench: free space under $data:" >&2
df -h "$data" >&2
exec "$venv/bin/python" "$repo/bench/bench.py" --data "$data" --soup-merge "$bin" \
    --command "bench/run.sh $*" "$@"

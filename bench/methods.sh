#!/usr/bin/env bash
# Times every merge method against linear in one run, with peak RSS, and mergekit on the same
# inputs when a venv with it exists.
#
#   bench/methods.sh GIB [DATA_DIR]        e.g. bench/methods.sh 1 /tmp/soup-methods
#
# Inputs: DATA_DIR/in-GIBg/{base,ft1,ft2}, three bf16 model directories of GIB GiB each made by
# bench/make_family.py (kept for reuse). Every tool reads the same three files (slerp reads two:
# the base and ft1; passthrough one), warm in the page cache after a first linear run that is
# not counted. Each method runs REPEAT times (default 3); the table gives the median wall time,
# its ratio to linear's median, and the largest peak RSS (/usr/bin/time -v).
#
# Environment: SOUP_MERGE (default target/release/soup-merge), PYTHON (numpy; default python3),
# MERGEKIT_VENV (default /work/bench-venv; skipped when it has no mergekit-yaml), MERGEKIT=0 to
# skip mergekit, SOUP=0 to time mergekit only, REPEAT, METHODS (a space-separated subset), COLD=1
# to start every run of either tool with the inputs out of the page cache (drop_caches: needs
# root), as when a model is larger than the machine's memory.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
gib=${1:?usage: bench/methods.sh GIB [DATA_DIR]}
data=${2:-${TMPDIR:-/tmp}/soup-methods}
bin=${SOUP_MERGE:-$repo/target/release/soup-merge}
py=${PYTHON:-python3}
repeat=${REPEAT:-3}
mkvenv=${MERGEKIT_VENV:-/work/bench-venv}
methods=${METHODS:-linear task_arithmetic ties dare_linear dare_linear_norescale dare_ties della della_linear breadcrumbs breadcrumbs_ties slerp nuslerp model_stock passthrough}
[[ -x $bin ]] || { echo "error: $bin not found; cargo build --release or set SOUP_MERGE" >&2; exit 1; }
[[ ${COLD:-0} != 1 || -w /proc/sys/vm/drop_caches ]] || { echo "error: COLD=1 needs root (it writes /proc/sys/vm/drop_caches); run as root or without COLD" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "error: /usr/bin/time is missing (apt-get install time)" >&2; exit 1; }

in=$data/in-${gib}g
out=$data/out
mkdir -p "$out"
if [[ ! -e $in/.done ]]; then
    "$py" "$repo/bench/make_family.py" "$in" --gib "$gib"
    touch "$in/.done"
fi
base=$in/base ft1=$in/ft1 ft2=$in/ft2

# The soup-merge arguments of each method: parameters as in mergekit's examples.
args() {
    case $1 in
        linear) echo "$base $ft1 $ft2" ;;
        task_arithmetic) echo "--base $base $ft1 $ft2 -w 0.5,0.5" ;;
        ties|dare_ties|dare_linear|della_linear|breadcrumbs|breadcrumbs_ties) echo "--base $base $ft1 $ft2 -w 0.5,0.5 --density 0.5" ;;
        dare_linear_norescale) echo "--base $base $ft1 $ft2 -w 0.5,0.5 --density 0.5 --param rescale=false" ;;
        della) echo "--base $base $ft1 $ft2 -w 0.5,0.5 --density 0.5 --epsilon 0.1" ;;
        slerp) echo "--base $base $ft1 --t 0.5" ;;
        nuslerp) echo "--base $base $ft1 $ft2 -w 0.5,0.5" ;;
        model_stock) echo "--base $base $ft1 $ft2" ;;
        passthrough) echo "$ft1 --param scale=1" ;;
    esac
}

# The same merge as a mergekit recipe.
recipe() {
    local m=$1
    if [[ $m == dare_linear_norescale ]]; then
        echo "merge_method: dare_linear"
        echo "parameters: {rescale: false}"
        m=dare_linear
    else
        echo "merge_method: $m"
    fi
    echo "dtype: bfloat16"
    case $m in
        linear) echo "models:"; for d in $base $ft1 $ft2; do echo "  - {model: $d, parameters: {weight: 1}}"; done ;;
        passthrough) echo "models:"; echo "  - {model: $ft1}" ;;
        slerp) echo "base_model: $base"; echo "parameters: {t: 0.5}"; echo "models:"; echo "  - {model: $base}"; echo "  - {model: $ft1}" ;;
        model_stock) echo "base_model: $base"; echo "models:"; for d in $ft1 $ft2; do echo "  - {model: $d}"; done ;;
        nuslerp) echo "base_model: $base"; echo "models:"; for d in $ft1 $ft2; do echo "  - {model: $d, parameters: {weight: 0.5}}"; done ;;
        della) echo "base_model: $base"; echo "models:"; for d in $ft1 $ft2; do echo "  - {model: $d, parameters: {weight: 0.5, density: 0.5, epsilon: 0.1}}"; done ;;
        task_arithmetic) echo "base_model: $base"; echo "models:"; for d in $ft1 $ft2; do echo "  - {model: $d, parameters: {weight: 0.5}}"; done ;;
        *) echo "base_model: $base"; echo "models:"; for d in $ft1 $ft2; do echo "  - {model: $d, parameters: {weight: 0.5, density: 0.5}}"; done ;;
    esac
}

# Runs a command under /usr/bin/time; prints "SECONDS RSS_MIB". Every run starts from the same
# state: the previous outputs removed and their dirty pages written (otherwise a run pays for
# its predecessor's writeback, or for reclaiming its page cache when memory is short).
timed() {
    local log=$out/time.log
    rm -rf "$out/soup.safetensors" "$out/mergekit"
    sync
    if [[ ${COLD:-0} == 1 ]]; then
        echo 1 > /proc/sys/vm/drop_caches
    fi
    /usr/bin/time -v -o "$log" "$@" >/dev/null 2>"$out/stderr.log" || { cat "$out/stderr.log" >&2; echo "FAILED"; return; }
    awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; wall = s}
                /Maximum resident set size/ {rss = $2 / 1024}
                END {printf "%.2f %.0f\n", wall, rss}' "$log"
}

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

mergekit=0
if [[ ${MERGEKIT:-1} != 0 && -x $mkvenv/bin/mergekit-yaml ]]; then mergekit=1; fi

echo "run of $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores, REPEAT=$repeat, COLD=${COLD:-0}" >&2
echo "warming the page cache with one uncounted linear run" >&2
# shellcheck disable=SC2046
"$bin" $(args linear) -o "$out/soup.safetensors" -f -q

echo "| method | soup-merge s | × linear | peak RSS MiB | mergekit s | mergekit peak RSS MiB | mergekit ÷ soup-merge |"
echo "|---|---|---|---|---|---|---|"
linear_s=
for m in $methods; do
    times=() rss=0
    (( ${SOUP:-1} )) || times=(0)
    for _ in $( (( ${SOUP:-1} )) && seq "$repeat"); do
        # shellcheck disable=SC2046
        read -r s r < <(timed "$bin" --method "${m%_norescale}" $(args "$m") -o "$out/soup.safetensors" -f -q)
        times+=("$s")
        (( r > rss )) && rss=$r
    done
    rm -f "$out/soup.safetensors"
    s=$(printf '%s\n' "${times[@]}" | median)
    [[ $m == linear ]] && linear_s=$s
    ratio=$(awk -v a="$s" -v b="${linear_s:-0}" 'BEGIN {if (b > 0) printf "%.2f", a / b; else printf "-"}')
    mk_s=- mk_rss=- speedup=-
    if (( mergekit )); then
        recipe "$m" > "$out/recipe.yml"
        read -r mk_s mk_rss < <(HF_HUB_OFFLINE=1 timed "$mkvenv/bin/mergekit-yaml" "$out/recipe.yml" "$out/mergekit" --no-copy-tokenizer --quiet --allow-crimes)
        rm -rf "$out/mergekit"
        speedup=$(awk -v a="$mk_s" -v b="$s" 'BEGIN {if (b > 0) printf "%.1f", a / b; else printf "-"}')
    fi
    echo "| $m | $s | $ratio | $rss | $mk_s | $mk_rss | $speedup |"
done
echo "finished $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2

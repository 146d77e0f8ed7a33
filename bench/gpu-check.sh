#!/usr/bin/env bash
# The GPU check: soup-eval's CUDA build on a real GPU against its CPU path, in one go.
#
#   bench/gpu-check.sh [OUT_DIR]        on the GPU machine, from the repository root
#   bench/gpu-check.sh --bundle         on a machine with network, to prepare .gpu-bundle/
#
# It checks, on the fixtures (digits-cnn), with eval/examples/gpu-check.rs:
# - logits on the GPU against float64 numpy (tests/reference/forward_ref.py) and against the
#   CPU, in f32, f16 and bf16, each within a stated bound (the table in the report);
# - the greedy search's candidate weights built on the GPU are the CPU's, bit for bit;
# - `soup-eval report` on the GPU gives every count the CPU run gives, and the same soup;
# - forward throughput (images/s) and greedy-step times, GPU against CPU;
# and, with the soup-eval binary itself, that `--device auto` picks the GPU, and that every
# language-model family and the text e2e report (f32 and bf16) agree with the CPU. It writes
# OUT_DIR/gpu-check.md (default: $OUT, else bench/gpu-check-out), the report BENCHMARKS.md
# quotes, with the machine's GPU, driver and the logs beside it. Exit status 0 when every check
# passes.
#
# Binaries: the GPU machine needs soup-eval and gpu-check built with `--features cuda`.
# - If .gpu-bundle/ (or SOUP_GPU_BUNDLE) holds them (gzipped), they are used. `--bundle` makes it on a
#   machine that has network but no GPU: .ci/cuda-build.sh compiles against NVIDIA's CUDA
#   13.0.2 wheels and link stubs, and the stripped binaries are copied. They load the real
#   libraries on the GPU machine by soname (the driver's libcuda.so.1, and libcublas.so.13,
#   libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13, libcudart.so.13, found below).
#   This is the way for the workplace's lent H200: it has nvcc and the CUDA 13 libraries (in
#   PyTorch's packages) but no Rust and no network. Carry the bundle (run's `carry`).
# - Else, if cargo is there and can reach its crates, it builds there against the machine's
#   own CUDA (nvcc, real libraries, no stubs), into target-gpu/: about 15 minutes on 16 cores
#   (most of it candle's kernels).
# - Else it stops and says which of the two to do.
# The driver must support CUDA 13.0 or newer (nvidia-smi's "CUDA Version").
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
bundle="${SOUP_GPU_BUNDLE:-$repo/.gpu-bundle}"
started=$SECONDS
say() { printf 'gpu-check [%4ds]: %s\n' "$((SECONDS - started))" "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

if [ "${1:-}" = --bundle ]; then
    target="${SOUP_CUDA_TARGET_DIR:-$repo/target-cuda}"
    SOUP_CUDA_TARGET_DIR="$target" .ci/cuda-build.sh
    rm -rf "$bundle"
    mkdir -p "$bundle"
    # Stripped and compressed (120 MB -> 12 MB each, most of it candle's PTX), so that the
    # bundle and the checkout travel together within the device tool's 64 MiB.
    for bin in soup-eval examples/gpu-check; do
        objcopy --strip-debug "$target/release/$bin" "$bundle/$(basename "$bin")"
        gzip -6 "$bundle/$(basename "$bin")"
    done
    git rev-parse HEAD >"$bundle/COMMIT" 2>/dev/null || true
    say "bundle in $bundle: $(du -sh "$bundle" | cut -f1); carry it to the GPU machine"
    exit 0
fi

out="${1:-${OUT:-$repo/bench/gpu-check-out}}"
mkdir -p "$out"
command -v nvidia-smi >/dev/null || die "no nvidia-smi: this machine has no NVIDIA driver"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader \
    >"$out/gpu.txt" 2>&1 || die "nvidia-smi sees no GPU: $(cat "$out/gpu.txt")"
cuda_version="$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -1)"
say "GPU: $(head -1 "$out/gpu.txt"); driver's CUDA: ${cuda_version:-unknown}"
case "$cuda_version" in
1[3-9].* | [2-9][0-9].*) ;;
*) die "the driver supports CUDA ${cuda_version:-unknown}; this build needs 13.0 or newer" ;;
esac

# The CUDA 13 libraries: LD_LIBRARY_PATH, PyTorch's nvidia packages, a toolkit, or the
# loader's cache.
lib_dirs=()
IFS=: read -r -a given <<<"${LD_LIBRARY_PATH:-}"
for d in "${given[@]}"; do
    [ -n "$d" ] && [ -d "$d" ] && lib_dirs+=("$d")
done
for sp in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
    for d in "$sp"/nvidia/cu13/lib "$sp"/nvidia/*/lib; do
        [ -d "$d" ] && lib_dirs+=("$d")
    done
done
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64; do
    [ -d "$d" ] && lib_dirs+=("$d")
done
find_lib() {
    local d
    for d in "${lib_dirs[@]}"; do
        [ -e "$d/$1" ] && { echo "$d/$1"; return; }
    done
    ldconfig -p 2>/dev/null | awk -v n="$1" '$1 == n { print $NF; exit }'
}
libs=(libcuda.so.1 libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13)
runtime="$(mktemp -d)"
trap 'rm -rf "$runtime"' EXIT
missing=()
for l in "${libs[@]}"; do
    p="$(find_lib "$l")"
    if [ -n "$p" ]; then ln -sf "$p" "$runtime/$l"; else missing+=("$l"); fi
done
[ ${#missing[@]} -eq 0 ] || die "cannot find ${missing[*]} (searched ${lib_dirs[*]:-nothing} and ldconfig); install the CUDA 13 libraries (pip install nvidia-cublas nvidia-curand nvidia-cuda-nvrtc nvidia-cuda-runtime) or put them on LD_LIBRARY_PATH"
# cuBLAS finds cuBLASLt, and NVRTC its builtins, beside themselves or on the loader's path.
for l in "${libs[@]}"; do
    d="$(dirname "$(readlink -f "$runtime/$l")")"
    case ":${ld_path:-}:" in *":$d:"*) ;; *) ld_path="${ld_path:+$ld_path:}$d" ;; esac
done

if [ -f "$bundle/soup-eval.gz" ] && [ -f "$bundle/gpu-check.gz" ]; then
    mkdir -p "$runtime/bin"
    for bin in soup-eval gpu-check; do
        gzip -dc "$bundle/$bin.gz" >"$runtime/bin/$bin"
        chmod +x "$runtime/bin/$bin"
    done
    soup_eval="$runtime/bin/soup-eval"
    gpu_check="$runtime/bin/gpu-check"
    say "using the prebuilt binaries in $bundle (commit $(cat "$bundle/COMMIT" 2>/dev/null || echo unknown))"
elif command -v cargo >/dev/null; then
    nvcc="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
    [ -x "$nvcc" ] || die "cargo is here but nvcc is not (set NVCC, or make the bundle elsewhere: bench/gpu-check.sh --bundle)"
    # Link against the real libraries: the linker wants their unversioned names.
    cuda_home="$(mktemp -d)"
    mkdir -p "$cuda_home/lib"
    for l in "${libs[@]}"; do ln -sf "$(readlink -f "$runtime/$l")" "$cuda_home/lib/${l%.so.*}.so"; done
    cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)"
    say "building with --features cuda (nvcc $nvcc, compute capability $cap) into target-gpu/"
    CUDA_HOME="$cuda_home" NVCC="$nvcc" PATH="$(dirname "$nvcc"):$PATH" CUDA_COMPUTE_CAP="$cap" \
        CUDAFORGE_THREADS="$(nproc)" CARGO_TARGET_DIR="$repo/target-gpu" \
        cargo build --release --locked -p soup-eval --features cuda --bin soup-eval --example gpu-check \
        >"$out/build.log" 2>&1 ||
        die "the CUDA build failed (last lines below; whole log in $out/build.log; with no network, make the bundle elsewhere: bench/gpu-check.sh --bundle)
$(tail -15 "$out/build.log")"
    soup_eval="$repo/target-gpu/release/soup-eval"
    gpu_check="$repo/target-gpu/release/examples/gpu-check"
else
    die "no prebuilt binaries in $bundle and no cargo here: run 'bench/gpu-check.sh --bundle' on a machine with network (no GPU needed) and bring .gpu-bundle/ along"
fi
export LD_LIBRARY_PATH="$ld_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ldd "$soup_eval" | grep -q 'not found'; then
    die "$soup_eval cannot load: $(ldd "$soup_eval" | grep 'not found' | tr -s ' \t' ' ')"
fi

# The binary itself: --device auto takes the GPU, and the report's table.
data=(--val fixtures/digits/val.safetensors --test fixtures/digits/test.safetensors)
auto="$("$soup_eval" score --arch digits-cnn "${data[@]}" --json -q fixtures/models/base.safetensors)"
grep -q '"device": "cuda:0"' <<<"$auto" || die "--device auto (the default) did not pick the GPU: $(grep device <<<"$auto")"
"$soup_eval" report --arch digits-cnn "${data[@]}" -q --device cuda fixtures/models/ft-*.safetensors \
    >"$out/report-cuda.txt"
"$soup_eval" report --arch digits-cnn "${data[@]}" -q --device cpu fixtures/models/ft-*.safetensors \
    >"$out/report-cpu.txt"
say "soup-eval report on the GPU and the CPU (tables in $out)"

# Language models: every fixture family scored on both devices, and the e2e report (greedy by
# val loss, uniform, ensemble), in f32 and bf16 on the GPU against f32 on the CPU.
text=fixtures/text
lm_failed=0
# CPU_JSON GPU_JSON TOLERANCE WHAT [FLIPS]: every loss-like metric of every row within TOLERANCE
# (relative), and each accuracy's count of correct items within FLIPS of the CPU's (default 0).
# Accuracy is a count of argmaxes, so a near-tie between two tokens' logits, 1e-7 apart in
# f32, may go either way on another device's summation order: a flip is not an error of the
# model, and is listed; losses show any real drift.
compare_json() {
    python3 - "$@" <<'PY' || lm_failed=1
import json, sys
cpu, gpu, tol, what = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), float(sys.argv[3]), sys.argv[4]
flips_allowed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
def rows(r):
    out = {}
    for i in r.get("ingredients", []):
        out[i["name"]] = i
    for k in ("uniform", "ensemble"):
        if r.get(k): out[k] = r[k]
    if r.get("greedy"): out["greedy"] = r["greedy"]["row"]
    return out
worst, bad, flips = 0.0, [], []
for name, a in rows(cpu).items():
    b = rows(gpu)[name]
    for split in ("val", "test"):
        if not a.get(split): continue
        if "correct" in a[split]:
            d = abs(a[split]["correct"] - b[split]["correct"])
            if d: flips.append(f"{name} {split}: {a[split]['correct']} vs {b[split]['correct']} of {a[split]['total']}")
            if d > flips_allowed: bad.append(f"{name} {split} correct: cpu {a[split]['correct']} gpu {b[split]['correct']}")
        for key, x in a[split].items():
            if key == "accuracy" and "correct" in a[split]: continue
            if isinstance(x, float):
                y = b[split][key]
                e = abs(x - y) / max(abs(x), 1e-12)
                worst = max(worst, e)
                if e > tol: bad.append(f"{name} {split} {key}: cpu {x} gpu {y}")
if cpu.get("greedy") and cpu["greedy"]["search"]["chosen"] != gpu["greedy"]["search"]["chosen"]:
    bad.append("greedy soups differ")
print(f"{what}: worst relative difference {worst:.2e} (bound {tol:g})"
      + (f"; counts differ by at most {flips_allowed}: " + ", ".join(flips) if flips else "")
      + ("; " + "; ".join(bad) if bad else ""))
sys.exit(1 if bad else 0)
PY
}
# Every fixture model directory: decoders (config.json names a *ForCausalLM) on the two LM
# data sets, classifiers on the classification set.
decoders=() classifiers=()
for d in $text/models/*/; do
    m=$(basename "$d")
    if grep -q 'ForCausalLM' "$d/config.json"; then decoders+=("$m"); else classifiers+=("$m"); fi
done
for m in "${decoders[@]}"; do
    for data in lm.txt mc.jsonl; do
        for d in cpu cuda; do "$soup_eval" score --device $d -q --json --val $text/data/$data $text/models/$m >"$out/lm-$m-$data-$d.json" 2>&1 || true; done
        compare_json "$out/lm-$m-$data-cpu.json" "$out/lm-$m-$data-cuda.json" 1e-4 "$m on $data, f32" >>"$out/lm.txt"
    done
done
for m in "${classifiers[@]}"; do
    for d in cpu cuda; do "$soup_eval" score --device $d -q --json --val $text/data/cls.jsonl $text/models/$m >"$out/cls-$m-$d.json" 2>&1 || true; done
    compare_json "$out/cls-$m-cpu.json" "$out/cls-$m-cuda.json" 1e-4 "$m f32" >>"$out/lm.txt"
done
e2e=(--val $text/e2e/val.txt --test $text/e2e/test.txt --seq-len 64 --stride 32 -q --json $text/e2e/ft-*)
"$soup_eval" report --device cpu "${e2e[@]}" >"$out/e2e-cpu.json"
for dt in f32 bf16; do
    "$soup_eval" report --device cuda --eval-dtype $dt "${e2e[@]}" >"$out/e2e-cuda-$dt.json" || lm_failed=1
done
# Up to 0.2% of the 2657 test tokens may flip in f32 (one did on an H200), 1% in bf16 (at most
# 6 did there; its losses are within 5e-2).
compare_json "$out/e2e-cpu.json" "$out/e2e-cuda-f32.json" 1e-4 "e2e report, cuda f32" 5 >>"$out/lm.txt"
compare_json "$out/e2e-cpu.json" "$out/e2e-cuda-bf16.json" 5e-2 "e2e report, cuda bf16" 27 >>"$out/lm.txt"
say "language models on the GPU and the CPU ($out/lm.txt)"

# Against PyTorch on the same GPU, where the machine's Python has torch and transformers with
# CUDA: a random 246M-parameter Llama (bench/text_models.py, f32, 0.98 GB) scored on 64
# pre-tokenised sequences of 512 random tokens by soup-eval and by transformers, both end to end
# (process start to result, model read from disk) and best of 3. The losses must agree within
# 1e-4 relative, the correct-token counts within 0.2%. (TORCH_PYTHON, TORCH_VS_DEVICE=cpu and
# TORCH_VS_SIZE=100m try the function out on a machine without a GPU.)
torch_vs() {
    local py=${TORCH_PYTHON:-python3} dev=${TORCH_VS_DEVICE:-cuda} w="$out/torch-vs"
    "$py" -c "import torch, transformers; assert '$dev' == 'cpu' or torch.cuda.is_available()" 2>/dev/null || {
        echo "not run: $py has no torch and transformers with CUDA"
        return 0
    }
    mkdir -p "$w"
    [ -d "$w/model" ] || "$py" bench/text_models.py save "$w/model" "${TORCH_VS_SIZE:-1g}" 2>"$w/save.log"
    [ -f "$w/data.safetensors" ] || "$py" bench/text_models.py data "$w/data.safetensors" 64 512
    local best_soup=999 best_torch=999 t0 t1 e
    for _ in 1 2 3; do
        t0=$(date +%s.%N)
        "$soup_eval" score --device "$dev" -q --json --batch-size 8 --val "$w/data.safetensors" "$w/model" >"$w/soup.json"
        t1=$(date +%s.%N)
        best_soup=$(python3 -c "print(min($best_soup, $t1 - $t0))")
        t0=$(date +%s.%N)
        "$py" bench/text_models.py loss "$w/model" "$w/data.safetensors" "$dev" 8 2>"$w/torch.log" | tail -1 >"$w/torch.json"
        t1=$(date +%s.%N)
        best_torch=$(python3 -c "print(min($best_torch, $t1 - $t0))")
    done
    python3 - "$w/soup.json" "$w/torch.json" "$best_soup" "$best_torch" "${TORCH_VS_SIZE:-1g}" <<'PY'
import json, sys
soup = json.load(open(sys.argv[1]))["ingredients"][0]["val"]
torch = json.loads(open(sys.argv[2]).read())
s, t = float(sys.argv[3]), float(sys.argv[4])
rel = abs(soup["loss"] - torch["loss"]) / abs(torch["loss"])
flips = abs(soup["correct"] - torch["correct"])
print(f"random Llama (bench/text_models.py size {sys.argv[5]}), f32, {soup['total']} predicted tokens, batch 8 ({torch['tool']}, torch {torch['torch']}):")
print(f"- loss: soup-eval {soup['loss']:.9f}, transformers {torch['loss']:.9f} (relative difference {rel:.1e}, bound 1e-4)")
print(f"- correct tokens: soup-eval {soup['correct']}, transformers {torch['correct']} of {soup['total']} (bound: 0.2% may differ)")
inner = torch["load_seconds"] + torch["forward_seconds"]
print(f"- end to end, best of 3: soup-eval {s:.2f} s, transformers {t:.2f} s: transformers / soup-eval {t / s:.2f}x")
print(f"- transformers without Python's start and imports (the last run): model load {torch['load_seconds']:.2f} s + forward {torch['forward_seconds']:.2f} s = {inner:.2f} s, {inner / s:.2f}x soup-eval's whole run")
sys.exit(0 if rel <= 1e-4 and soup["total"] == torch["total"] and flips <= 0.002 * soup["total"] else 1)
PY
}
torch_failed=0
torch_vs >"$out/torch-vs.txt" 2>&1 || torch_failed=1
say "against PyTorch on the same GPU ($out/torch-vs.txt)"

# Everything else, and the report.
python="${SOUP_PYTHON:-python3}"
"$python" -c 'import numpy' 2>/dev/null || die "$python has no numpy, which the float64 reference needs (set SOUP_PYTHON)"
set +e
"$gpu_check" --device cuda:0 --python "$python" >"$out/gpu-check.md" 2>"$out/gpu-check.log"
status=$?
set -e
{
    echo
    echo "## Machine"
    echo
    echo "GPU (name, driver, memory, compute capability): $(head -1 "$out/gpu.txt"); the driver's CUDA: $cuda_version; $(nproc) CPU cores."
    echo
    echo "## soup-eval report, the same table on both devices"
    echo
    # The greedy lines end in each step's timings, which differ by device: compared without.
    untimed() { sed 's/ *(merge [0-9.]* ms, forward [0-9.]* ms)$//' "$1"; }
    if diff -q <(untimed "$out/report-cpu.txt") <(untimed "$out/report-cuda.txt") >/dev/null; then
        echo "The CPU's and the GPU's tables are identical (counts, accuracies and losses to 4 decimals; the greedy steps' timings aside):"
    else
        echo "The CPU's and the GPU's tables differ (below: the GPU's; $out/report-cpu.txt holds the CPU's):"
    fi
    echo
    echo '```'
    cat "$out/report-cuda.txt"
    echo '```'
    echo
    echo "## Language models, GPU against CPU"
    echo
    echo '```'
    cat "$out/lm.txt"
    echo '```'
    echo
    echo "## Against PyTorch on the same GPU"
    echo
    echo '```'
    cat "$out/torch-vs.txt"
    echo '```'
    echo
    echo "Checked at commit $(cat "$bundle/COMMIT" 2>/dev/null || git rev-parse HEAD 2>/dev/null || echo unknown), in $((SECONDS - started)) s."
} >>"$out/gpu-check.md"
cat "$out/gpu-check.md"
[ "$lm_failed" -eq 0 ] || die "a language-model check failed; see $out/lm.txt"
[ "$torch_failed" -eq 0 ] || die "the check against PyTorch failed; see $out/torch-vs.txt"
[ "$status" -eq 0 ] || die "gpu-check failed (status $status); see $out/gpu-check.md and $out/gpu-check.log"
say "all checks passed; report: $out/gpu-check.md"

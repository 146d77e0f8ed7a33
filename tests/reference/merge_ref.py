"""Independent reference for soup-merge: float64 numpy over a hand-written safetensors reader.

Usage: merge_ref.py OUTPUT --weights W,W,... INPUT...

Checks that the official `safetensors` package accepts OUTPUT, that every float tensor is within
one unit in the last place of the output dtype of sum_i w_i * x_i computed in float64 (plus the
rounding of the tool's own accumulator where terms cancel), and that every other tensor is the
first input's bytes. Prints a summary line and exits non-zero on any disagreement.
"""
import argparse
import json
import struct
import sys

import numpy as np
import safetensors

FLOATS = {"F16": np.float16, "F32": np.float32, "F64": np.float64}
ACC_EPS = {"F16": 2.0**-24, "BF16": 2.0**-24, "F32": 2.0**-53, "F64": 2.0**-53}


def read(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n :]
    tensors = {}
    for name, e in header.items():
        b, c = e["data_offsets"]
        tensors[name] = (e["dtype"], tuple(e["shape"]), data[b:c])
    return meta, tensors


def as_f64(dtype, shape, buf):
    if dtype == "BF16":
        bits = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float64).reshape(shape)
    return np.frombuffer(buf, dtype=np.dtype(FLOATS[dtype]).newbyteorder("<")).astype(np.float64).reshape(shape)


def spacing(dtype, x):
    """One unit in the last place of `dtype` at |x|."""
    ax = np.abs(x)
    if dtype == "BF16":
        # bf16 has 8 significant bits; its smallest normal matches f32's.
        e = np.floor(np.log2(np.maximum(ax, np.finfo(np.float32).tiny)))
        return np.exp2(e - 7)
    return np.spacing(ax.astype(FLOATS[dtype])).astype(np.float64)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("output")
    p.add_argument("--weights", required=True)
    p.add_argument("inputs", nargs="+")
    args = p.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    assert len(weights) == len(args.inputs)

    with open(args.output, "rb") as f:
        official = dict(safetensors.deserialize(f.read()))
    meta, out = read(args.output)
    ins = [read(path)[1] for path in args.inputs]
    assert set(official) == set(out), "official reader sees other tensors"
    assert meta.get("model_soup.method") == "linear", meta
    assert json.loads(meta["model_soup.weights"]) == weights, meta

    failures, checked, exact = [], 0, 0
    for name, (dtype, shape, buf) in sorted(out.items()):
        if official[name]["shape"] != list(shape):
            failures.append(f"{name}: official reader shape {official[name]['shape']}")
        in_dtypes = [t[name][0] for t in ins]
        if all(d in ACC_EPS for d in in_dtypes):
            xs = [as_f64(d, shape, t[name][2]) for d, t in zip(in_dtypes, ins)]
            terms = [w * x for w, x in zip(weights, xs)]
            ref = np.sum(terms, axis=0)
            mag = np.sum(np.abs(terms), axis=0)
            ours = as_f64(dtype, shape, buf)
            wide = dtype in ("F32", "F64") or "F64" in in_dtypes
            eps = 2.0**-53 if wide else 2.0**-24
            tol = spacing(dtype, ref) + 4 * len(xs) * eps * mag
            err = np.abs(ours - ref)
            bad = ~(err <= tol)
            checked += ours.size
            exact += int(np.sum(ours == ref.astype(np.float32 if dtype == "BF16" else FLOATS.get(dtype, np.float64))))
            if bad.any():
                i = np.argmax(bad)
                failures.append(f"{name} ({dtype}): {int(bad.sum())} elements off, first at flat {i}: ours {ours.flat[i]!r} ref {ref.flat[i]!r}")
        else:
            if buf != ins[0][name][2]:
                failures.append(f"{name} ({dtype}): not the first input's bytes")
    for f in failures:
        print("FAIL", f)
    print(f"reference: {len(out)} tensors, {checked} float elements checked against float64 (1 ulp of the output dtype), {len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

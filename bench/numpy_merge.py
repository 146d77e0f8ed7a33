#!/usr/bin/env python3
"""Baseline: a streaming merge in numpy. Each tensor of each input is memory-mapped, widened to
float32, weighted and summed, narrowed back to the input dtype and appended to the output.

    python3 numpy_merge.py -o OUT.safetensors A.safetensors B.safetensors C.safetensors [-w 0.5,0.3,0.2]

Only one tensor (times the number of inputs, in float32) is in memory at a time. Uniform weights by
default. Like most scripts of this kind, it does not fsync the output. Needs numpy only.
"""
import argparse
import json
import struct

import numpy as np

from stfile import Layout, narrow, widen


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("-w", "--weights", help="comma-separated, one per input (default 1/N each)")
    a = ap.parse_args()

    layouts = [Layout(p) for p in a.inputs]
    weights = [1.0 / len(layouts)] * len(layouts)
    if a.weights:
        weights = [float(w) for w in a.weights.split(",")]
        if len(weights) != len(layouts):
            ap.error(f"--weights has {len(weights)} values for {len(layouts)} inputs")

    first = layouts[0]
    names = first.names()
    for other in layouts[1:]:
        if other.names() != names:
            ap.error(f"{other.path}: tensor names differ from {first.path}")
        for n in names:
            if other.shape(n) != first.shape(n) or other.dtype(n) != first.dtype(n):
                ap.error(f"{other.path}: tensor {n} differs in shape or dtype")

    header, offset = {}, 0
    for n in names:
        size = first.tensors[n]["data_offsets"][1] - first.tensors[n]["data_offsets"][0]
        header[n] = {"dtype": first.dtype(n), "shape": list(first.shape(n)), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt", "merged_by": "bench/numpy_merge.py"}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)

    with open(a.output, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for n in names:
            code = first.dtype(n)
            total = np.zeros(first.shape(n), np.float32).reshape(-1)
            for layout, w in zip(layouts, weights):
                total += np.float32(w) * widen(layout.raw(n), code)
            out.write(narrow(total, code))


if __name__ == "__main__":
    main()

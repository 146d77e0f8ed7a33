#!/usr/bin/env python3
"""Baseline: the merge script a user writes first. Every checkpoint is loaded whole with torch, each
tensor is averaged in float32 and cast back to its dtype, and the result is saved in one call.

    python3 bench/naive_merge.py -o OUT.safetensors A.safetensors B.safetensors C.safetensors [-w 0.5,0.3,0.2]

Uniform weights by default. Memory is every input plus the output plus float32 temporaries: the
point of the baseline. Like most scripts of this kind it does not fsync. Needs torch and safetensors.
"""
import argparse

import torch
from safetensors.torch import load_file, save_file


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("-w", "--weights", help="comma-separated, one per input (default 1/N each)")
    a = ap.parse_args()
    weights = [1.0 / len(a.inputs)] * len(a.inputs)
    if a.weights:
        weights = [float(w) for w in a.weights.split(",")]
        if len(weights) != len(a.inputs):
            ap.error(f"--weights has {len(weights)} values for {len(a.inputs)} inputs")

    models = [load_file(path) for path in a.inputs]
    merged = {}
    for name, tensor in models[0].items():
        total = torch.zeros(tensor.shape, dtype=torch.float32)
        for model, w in zip(models, weights):
            total += w * model[name].to(torch.float32)
        merged[name] = total.to(tensor.dtype)
    save_file(merged, a.output, metadata={"format": "pt"})


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write the mergekit recipe for the benchmark's merge: a `linear` average of model directories,
weight 1/N each unless given, in the inputs' dtype.

    python3 bench/mergekit_config.py --dtype bf16 DIR_A DIR_B DIR_C > merge.yml
    mergekit-yaml merge.yml OUT_DIR --no-copy-tokenizer --quiet

The weights are written with every digit of their float64 value, in a form that YAML 1.1 (PyYAML,
which mergekit uses) reads as a float; paths are double-quoted. Each directory must hold a
config.json (bench/make_checkpoint.py writes one).
"""
import argparse
import json
import sys

TORCH_NAMES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}


def linear_recipe(dirs, dtype, weights=None):
    """The recipe as a dict: `merge_method: linear`, one model entry per directory."""
    if weights is None:
        weights = [1.0 / len(dirs)] * len(dirs)
    if len(weights) != len(dirs):
        raise ValueError(f"{len(weights)} weights for {len(dirs)} models")
    return {
        "merge_method": "linear",
        "models": [{"model": d, "parameters": {"weight": w}} for d, w in zip(dirs, weights)],
        "dtype": TORCH_NAMES[dtype],
        "out_dtype": TORCH_NAMES[dtype],
    }


def yaml_float(x):
    """`repr` of a float, with a decimal point before any exponent: YAML 1.1 reads `1e-05` as a string."""
    text = repr(float(x))
    if "e" in text and "." not in text:
        text = text.replace("e", ".0e")
    return text


def render(recipe):
    """YAML text for a recipe made by `linear_recipe`."""
    lines = [f"merge_method: {recipe['merge_method']}", "models:"]
    for m in recipe["models"]:
        # A JSON string is a valid YAML double-quoted scalar, escapes included.
        lines.append(f"  - model: {json.dumps(m['model'])}")
        lines.append(f"    parameters: {{weight: {yaml_float(m['parameters']['weight'])}}}")
    lines += [f"dtype: {recipe['dtype']}", f"out_dtype: {recipe['out_dtype']}"]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", help="model directories")
    ap.add_argument("--dtype", choices=sorted(TORCH_NAMES), default="bf16")
    ap.add_argument("-w", "--weights", help="comma-separated, one per directory (default 1/N each)")
    a = ap.parse_args()
    weights = [float(w) for w in a.weights.split(",")] if a.weights else None
    try:
        sys.stdout.write(render(linear_recipe(a.dirs, a.dtype, weights)))
    except ValueError as e:
        ap.error(str(e))


if __name__ == "__main__":
    main()

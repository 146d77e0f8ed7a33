"""Every deterministic merge method through soup-merge and mergekit on the same small model
directories; reports per method how many tensors are bit-identical and the largest difference in
units in the last place of the output dtype.

Two measures: ulps at each value (blown up where terms cancel near zero, since mergekit sums
in float32 and soup-merge in float64 for float32 outputs) and ulps at the tensor's largest value.

Usage: mergekit_methods_check.py SOUP_MERGE MERGEKIT_YAML WORKDIR [--dtype float32|bfloat16]

Needs numpy, safetensors and torch (mergekit's venv has all three). DARE and DELLA are left out: their drops
come from torch's generator in mergekit and from a seeded stream keyed by tensor name in
soup-merge, so their bytes differ by design.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
from safetensors.numpy import save_file

bf16 = False

METHODS = {
    "linear": ("", "  - {model: %(ft1)s, parameters: {weight: 0.6}}\n  - {model: %(ft2)s, parameters: {weight: 0.4}}\n", ["%(ft1)s", "%(ft2)s", "-w", "0.6,0.4", "--normalize"]),
    "task_arithmetic": ("base_model: %(base)s\nparameters: {lambda: 0.9}\n", "  - {model: %(ft1)s, parameters: {weight: 0.6}}\n  - {model: %(ft2)s, parameters: {weight: 0.4}}\n", None),
    "ties": ("base_model: %(base)s\n", "  - {model: %(ft1)s, parameters: {weight: 0.6, density: 0.5}}\n  - {model: %(ft2)s, parameters: {weight: 0.4, density: 0.5}}\n", None),
    "breadcrumbs": ("base_model: %(base)s\n", "  - {model: %(ft1)s, parameters: {weight: 0.6, density: 0.8, gamma: 0.05}}\n  - {model: %(ft2)s, parameters: {weight: 0.4, density: 0.8, gamma: 0.05}}\n", None),
    "breadcrumbs_ties": ("base_model: %(base)s\n", "  - {model: %(ft1)s, parameters: {weight: 0.6, density: 0.8, gamma: 0.05}}\n  - {model: %(ft2)s, parameters: {weight: 0.4, density: 0.8, gamma: 0.05}}\n", None),
    "slerp": ("base_model: %(base)s\nparameters: {t: [0.2, 0.8]}\n", "  - {model: %(base)s}\n  - {model: %(ft1)s}\n", None),
    "nuslerp": ("base_model: %(base)s\n", "  - {model: %(ft1)s, parameters: {weight: 0.6}}\n  - {model: %(ft2)s, parameters: {weight: 0.4}}\n", None),
    "model_stock": ("base_model: %(base)s\n", "  - {model: %(ft1)s}\n  - {model: %(ft2)s}\n  - {model: %(ft3)s}\n", None),
    "passthrough": ("", "  - {model: %(ft1)s, parameters: {scale: 0.5}}\n", None),
}

# Recipes written as published: LazyMergekit's SLERP template, with one slice whose sources take
# every layer (mergekit turns `models:` into exactly that), and filtered gradients.
SLICED = {
    "slerp (slices)": "slices:\n  - sources:\n      - model: %(base)s\n        layer_range: [0, 4]\n      - model: %(ft1)s\n        layer_range: [0, 4]\n"
                      "merge_method: slerp\nbase_model: %(base)s\nparameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 1]\n"
                      "    - filter: mlp\n      value: [1, 0.5, 0]\n    - value: 0.5\n",
    "ties (slices)": "merge_method: ties\nslices:\n  - base_model: %(base)s\n    parameters: {density: 0.5}\n    sources:\n"
                     "      - {model: %(base)s, layer_range: [0, 4]}\n      - {model: %(ft1)s, layer_range: [0, 4], parameters: {weight: [0.3, 0.7]}}\n"
                     "      - {model: %(ft2)s, layer_range: [0, 4], parameters: {weight: 0.4, density: 0.7}}\n",
}


def model(path, rng, base=None, hidden=64, layers=4, vocab=256):
    inter = 160
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{n}.weight"] = (hidden, hidden)
        shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
    tensors = {}
    for n, s in shapes.items():
        x = rng.standard_normal(s).astype(np.float32) * 0.02
        tensors[n] = x if base is None else base[n] + x * 0.1
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 4,
              "num_key_value_heads": 4, "vocab_size": vocab, "max_position_embeddings": 128,
              "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "float32"}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return tensors


def load_dir(d):
    """Every tensor of a model directory as float32 numpy (exact for bfloat16, which numpy
    can't hold), with the dtype it was stored in."""
    import torch
    from safetensors.torch import load_file as load_torch

    out, dtypes = {}, {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            for n, t in load_torch(os.path.join(d, f)).items():
                dtypes[n] = str(t.dtype).removeprefix("torch.")
                out[n] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    return out, dtypes


def ulps(a, b):
    """The largest difference in units in the last place of the output dtype at the larger of
    the two values (so a difference next to zero is not blown up by the tiny spacing there)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    mag = np.maximum(np.abs(a), np.abs(b)).astype(np.float32)
    step = np.spacing(mag).astype(np.float64) * (65536.0 if bf16 else 1.0)
    step = np.maximum(step, np.finfo(np.float32).tiny)
    return float(np.max(np.abs(a - b) / step)) if a.size else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("soup_merge")
    ap.add_argument("mergekit_yaml")
    ap.add_argument("work")
    ap.add_argument("--dtype", default="float32")
    a = ap.parse_args()
    global bf16
    bf16 = a.dtype == "bfloat16"
    rng = np.random.default_rng(0)
    paths = {k: os.path.join(a.work, k) for k in ("base", "ft1", "ft2", "ft3")}
    base = model(paths["base"], rng)
    for k in ("ft1", "ft2", "ft3"):
        model(paths[k], rng, base)
    rows = []
    recipes = [(m, f"merge_method: {m}\n{top % paths}dtype: {a.dtype}\nmodels:\n{models % paths}")
               for m, (top, models, _) in METHODS.items()]
    recipes += [(m, f"{text % paths}dtype: {a.dtype}\n") for m, text in SLICED.items()]
    for method, recipe in recipes:
        rpath = os.path.join(a.work, f"{method.replace(' ', '_')}.yml")
        with open(rpath, "w") as f:
            f.write(recipe)
        tag = method.replace(" ", "_").replace("(", "").replace(")", "")
        ours, theirs = os.path.join(a.work, f"soup-{tag}"), os.path.join(a.work, f"mk-{tag}")
        subprocess.run([a.soup_merge, "--config", rpath, "-o", ours, "-f", "-q"], check=True)
        subprocess.run([a.mergekit_yaml, rpath, theirs, "--no-copy-tokenizer", "--quiet", "--allow-crimes"], check=True,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"))
        (x, xd), (y, yd) = load_dir(ours), load_dir(theirs)
        dtypes_differ = sorted(n for n in x if n in y and xd[n] != yd[n])
        same = sum(1 for n in x if n in y and x[n].tobytes() == y[n].tobytes())
        worst = max((ulps(x[n], y[n]) for n in x if n in y), default=0)
        scale = max((float(np.max(np.abs(x[n].astype(np.float64) - y[n])) / (np.spacing(np.float32(np.max(np.abs(x[n])))) * (65536.0 if bf16 else 1.0)))
                     for n in x if n in y and x[n].size), default=0)
        missing = sorted(set(x) ^ set(y))
        rows.append((method, len(x), same, worst, scale, missing, dtypes_differ))
    print(f"| method | tensors | bit-identical | max ulp at the value ({a.dtype}) | max ulp at the tensor's largest value |")
    print("|---|---|---|---|---|")
    for method, n, same, worst, scale, missing, dtypes_differ in rows:
        print(f"| {method} | {n} | {same} | {worst:.0f} | {scale:.2f} |" + (f" names differ: {missing[:3]}" if missing else "")
              + (f" dtypes differ: {dtypes_differ[:3]}" if dtypes_differ else ""))


if __name__ == "__main__":
    sys.exit(main())

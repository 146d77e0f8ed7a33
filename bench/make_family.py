#!/usr/bin/env python3
"""Write a base model and fine-tunes of it, Llama-shaped, for the merge-method benchmark.

    python3 bench/make_family.py DIR --gib 1 [--fine-tunes 2] [--hidden 2048] [--vocab 32000]

DIR/base, DIR/ft1, DIR/ft2, ... are model directories (model.safetensors + config.json) that
soup-merge and mergekit both read. Base values are normal * 0.02; each fine-tune adds its own
normal * 0.002 and a shared normal * 0.001, so task vectors are small and correlated, as real
fine-tunes' are. bf16, rounded to nearest even. Needs numpy only.
"""
import argparse
import json
import os
import struct

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("--gib", type=float, default=1.0, help="approximate size of each file")
ap.add_argument("--fine-tunes", type=int, default=2)
ap.add_argument("--hidden", type=int, default=2048)
ap.add_argument("--vocab", type=int, default=32000)
a = ap.parse_args()

hidden, vocab = a.hidden, a.vocab
inter = hidden * 11 // 4
per_layer = 4 * hidden * hidden + 3 * inter * hidden + 2 * hidden
fixed = 2 * vocab * hidden + hidden
layers = max(1, round((a.gib * 2**30 / 2 - fixed) / per_layer))

shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
for layer in range(layers):
    p = f"model.layers.{layer}."
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        shapes[p + f"self_attn.{n}.weight"] = (hidden, hidden)
    shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
    shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
    shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
    shapes[p + "input_layernorm.weight"] = (hidden,)
    shapes[p + "post_attention_layernorm.weight"] = (hidden,)
names = sorted(shapes)


def bf16(x):
    u = np.ascontiguousarray(x, dtype=np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    return ((u + ((u >> 16) & 1) + 0x7FFF) >> 16).astype(np.uint16).tobytes()


def header():
    h, off = {}, 0
    for n in names:
        size = int(np.prod(shapes[n])) * 2
        h[n] = {"dtype": "BF16", "shape": list(shapes[n]), "data_offsets": [off, off + size]}
        off += size
    h["__metadata__"] = {"format": "pt"}
    text = json.dumps(h).encode()
    return text + b" " * ((8 - len(text) % 8) % 8)


models = ["base"] + [f"ft{i}" for i in range(1, a.fine_tunes + 1)]
files = {}
for m in models:
    d = os.path.join(a.dir, m)
    os.makedirs(d, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 16,
              "num_key_value_heads": 16, "vocab_size": vocab, "max_position_embeddings": 2048,
              "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    files[m] = open(os.path.join(d, "model.safetensors"), "wb")
    h = header()
    files[m].write(struct.pack("<Q", len(h)) + h)

rng = np.random.default_rng(0)
for n in names:
    base = rng.standard_normal(shapes[n], dtype=np.float32) * 0.02
    shared = rng.standard_normal(shapes[n], dtype=np.float32) * 0.001
    files["base"].write(bf16(base))
    for m in models[1:]:
        files[m].write(bf16(base + shared + rng.standard_normal(shapes[n], dtype=np.float32) * 0.002))
for f in files.values():
    f.close()
print(f"{a.dir}: {len(models)} models of {os.path.getsize(os.path.join(a.dir, 'base', 'model.safetensors')) / 2**30:.2f} GiB, {layers} layers")

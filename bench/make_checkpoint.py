#!/usr/bin/env python3
"""Write a synthetic Llama-shaped model directory for the benchmarks: model.safetensors and a
config.json that mergekit and transformers accept.

    python3 bench/make_checkpoint.py DIR --gib 1 [--dtype bf16] [--seed 0] [--hidden 2048 --vocab 32000]

The layer count is chosen so the weights file is close to --gib GiB. Values are normal with standard
deviation 0.02, drawn from numpy's PCG64 stream seeded with --seed, so the same arguments always give
the same bytes and different seeds give unrelated checkpoints (a merge of them has no zeros to hide
behind). Tensors are written one at a time: memory stays at one tensor whatever the size. Needs numpy.
"""
import argparse
import json
import os
import struct

import numpy as np

from stfile import STORAGE, narrow

TORCH_NAMES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}
CODES = {"bf16": "BF16", "f16": "F16", "f32": "F32"}


def llama_shapes(hidden, vocab, layers):
    """Tensor name -> shape for a Llama decoder with untied embeddings and full-width attention."""
    inter = hidden * 11 // 4  # Llama's MLP width, about 2.7 x hidden
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for i in range(layers):
        block = f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{block}.self_attn.{proj}.weight"] = (hidden, hidden)
        shapes[f"{block}.mlp.gate_proj.weight"] = (inter, hidden)
        shapes[f"{block}.mlp.up_proj.weight"] = (inter, hidden)
        shapes[f"{block}.mlp.down_proj.weight"] = (hidden, inter)
        shapes[f"{block}.input_layernorm.weight"] = (hidden,)
        shapes[f"{block}.post_attention_layernorm.weight"] = (hidden,)
    return shapes, inter


def layers_for(gib, hidden, vocab, itemsize):
    """The layer count whose weights come closest to `gib` GiB (at least one layer)."""
    _, inter = llama_shapes(hidden, vocab, 0)
    per_layer = (4 * hidden * hidden + 3 * inter * hidden + 2 * hidden) * itemsize
    outside = (2 * vocab * hidden + hidden) * itemsize
    return max(1, round((gib * (1 << 30) - outside) / per_layer))


def header_bytes(shapes, code, itemsize):
    """The safetensors header, tensors in name order, padded with spaces to 8 bytes."""
    entries, offset = {"__metadata__": {"format": "pt"}}, 0
    for name in sorted(shapes):
        size = int(np.prod(shapes[name])) * itemsize
        entries[name] = {"dtype": code, "shape": list(shapes[name]), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(entries, separators=(",", ":")).encode()
    return encoded + b" " * (-len(encoded) % 8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", help="model directory to create (or fill)")
    ap.add_argument("--gib", type=float, default=1.0, help="approximate size of model.safetensors in GiB")
    ap.add_argument("--dtype", choices=sorted(CODES), default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=2048, help="hidden size (small for tiny smoke checkpoints)")
    ap.add_argument("--vocab", type=int, default=32000)
    a = ap.parse_args()
    if a.gib <= 0 or a.hidden < 1 or a.vocab < 1:
        ap.error("--gib, --hidden and --vocab must be positive")

    code = CODES[a.dtype]
    itemsize = STORAGE[code][0].itemsize
    layers = layers_for(a.gib, a.hidden, a.vocab, itemsize)
    shapes, inter = llama_shapes(a.hidden, a.vocab, layers)
    header = header_bytes(shapes, code, itemsize)

    os.makedirs(a.dir, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": a.hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": a.vocab,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
        "torch_dtype": TORCH_NAMES[a.dtype],
    }
    with open(os.path.join(a.dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")

    rng = np.random.default_rng(a.seed)
    path = os.path.join(a.dir, "model.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for name in sorted(shapes):
            values = rng.standard_normal(int(np.prod(shapes[name])), dtype=np.float32)
            values *= np.float32(0.02)
            f.write(narrow(values, code).tobytes())
    print(f"{path}: {os.path.getsize(path) / (1 << 30):.2f} GiB, {layers} layers, {a.dtype}, seed {a.seed}")


if __name__ == "__main__":
    main()

"""An independent float64 forward pass of the digits-cnn architecture, in numpy alone.

Usage: forward_ref.py DATASET COUNT CHECKPOINT [CHECKPOINT ...]

Reads the safetensors files with its own parser (no safetensors package, no ML framework),
averages the checkpoints' float tensors uniformly in float64 (one checkpoint: itself), runs
the first COUNT inputs of DATASET through conv-bn-relu-pool x2 and the linear head, and prints
{"logits": [[...10 floats...], ...]} as JSON. tests/eval_reference.rs compares it with candle.
"""

import json
import struct
import sys

import numpy as np

BN_EPS = 1e-5


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[begin:end]
        dtype = info["dtype"]
        if dtype == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        else:
            np_dtype = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I64": "<i8"}[dtype]
            array = np.frombuffer(raw, dtype=np_dtype)
        tensors[name] = array.reshape(info["shape"])
    return tensors


def conv3x3(x, w):
    """Convolution with padding 1 and stride 1: x [N, C, H, W], w [O, C, 3, 3]."""
    n, c, h, width = x.shape
    padded = np.zeros((n, c, h + 2, width + 2))
    padded[:, :, 1:-1, 1:-1] = x
    out = np.zeros((n, w.shape[0], h, width))
    for dy in range(3):
        for dx in range(3):
            window = padded[:, :, dy : dy + h, dx : dx + width]
            out += np.einsum("nchw,oc->nohw", window, w[:, :, dy, dx])
    return out


def batch_norm(x, p, prefix):
    shape = (1, -1, 1, 1)
    mean = p[prefix + ".running_mean"].reshape(shape)
    var = p[prefix + ".running_var"].reshape(shape)
    gamma = p[prefix + ".weight"].reshape(shape)
    beta = p[prefix + ".bias"].reshape(shape)
    return (x - mean) / np.sqrt(var + BN_EPS) * gamma + beta


def max_pool2(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def forward(p, x):
    x = max_pool2(np.maximum(batch_norm(conv3x3(x, p["conv1.weight"]), p, "bn1"), 0.0))
    x = max_pool2(np.maximum(batch_norm(conv3x3(x, p["conv2.weight"]), p, "bn2"), 0.0))
    x = x.reshape(x.shape[0], -1)
    return x @ p["fc.weight"].T + p["fc.bias"]


def main():
    dataset, count, checkpoints = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    models = [read_safetensors(c) for c in checkpoints]
    params = {}
    for name, first in models[0].items():
        if first.dtype.kind == "f":
            params[name] = sum(m[name].astype(np.float64) for m in models) / len(models)
    x = read_safetensors(dataset)["inputs"][:count].astype(np.float64)
    print(json.dumps({"logits": forward(params, x).tolist()}))


if __name__ == "__main__":
    main()

"""Read safetensors files as numpy arrays without torch: header parsing, dtype codes, bf16 conversion.

Shared by numpy_merge.py and compare.py. bf16 has no numpy dtype, so it is carried as uint16 and
widened to float32 by a 16-bit shift; narrowing rounds to nearest, ties to even.
"""
import json
import os
import struct

import numpy as np

# safetensors dtype code -> (numpy storage dtype, mantissa bits of the value type)
STORAGE = {
    "BF16": (np.dtype("<u2"), 7),
    "F16": (np.dtype("<f2"), 10),
    "F32": (np.dtype("<f4"), 23),
    "F64": (np.dtype("<f8"), 52),
}

MAX_HEADER = 100 << 20


class Layout:
    """One safetensors file: its path, where the data starts, and every tensor's entry."""

    def __init__(self, path):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError(f"{path}: shorter than 8 bytes")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise ValueError(f"{path}: header length {n} does not fit the file")
            header = json.loads(f.read(n))
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        self.tensors = header
        end = max((t["data_offsets"][1] for t in header.values()), default=0)
        if self.data_start + end != size:
            raise ValueError(f"{path}: data ends at {self.data_start + end}, file has {size} bytes")

    def names(self):
        return sorted(self.tensors)

    def dtype(self, name):
        return self.tensors[name]["dtype"]

    def shape(self, name):
        return tuple(self.tensors[name]["shape"])

    def raw(self, name):
        """The tensor's stored values, flat, as a read-only memory map (bf16 as uint16)."""
        t = self.tensors[name]
        storage, _ = STORAGE[t["dtype"]]
        start, stop = t["data_offsets"]
        count = (stop - start) // storage.itemsize
        if count == 0:
            return np.zeros(0, storage)
        return np.memmap(self.path, dtype=storage, mode="r", offset=self.data_start + start, shape=(count,))


def widen(raw, code, to=np.float32):
    """Stored values -> float array of dtype `to`."""
    if code == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32).astype(to, copy=False)
    return raw.astype(to, copy=False)


def narrow(values, code):
    """float32/float64 values -> the storage array for dtype `code` (round to nearest even)."""
    if code == "BF16":
        u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
        return ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    return values.astype(STORAGE[code][0])


def ulp(reference, code):
    """The spacing of dtype `code` at each value of a float64 array (normal range)."""
    _, mantissa = STORAGE[code]
    _, exponent = np.frexp(reference)
    return np.ldexp(1.0, exponent - 1 - mantissa)


def collect(path):
    """Layouts for a file, or for every *.safetensors in a directory (sharded output), by tensor name."""
    files = [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise ValueError(f"{path}: no .safetensors files")
    owner = {}
    for f in files:
        layout = Layout(f)
        for name in layout.tensors:
            if name in owner:
                raise ValueError(f"{path}: tensor {name} appears twice")
            owner[name] = layout
    return owner

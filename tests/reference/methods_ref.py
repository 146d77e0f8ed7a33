"""Independent float64 reference for soup-merge's merge methods.

Usage: methods_ref.py OUTPUT --method M --params JSON [--base BASE] [--seed N] MODEL...

Written from the papers and mergekit's documented behaviour (merge_methods/, sparsify.py,
config.py's evaluate_setting), plus soup-merge's documented choices where mergekit leaves
something open: ties at a magnitude threshold rank by flat index, random drops come from the
counter-based stream documented in soup-merge's README, and layers are read from tensor names.

JSON is {"parameters": {...}, "models": [{...}, ...]} in mergekit's syntax (numbers, bools,
gradient lists, lists of {"filter", "value"}), one models entry per MODEL. Every float tensor of
OUTPUT must be within one unit in the last place of its dtype of the float64 result (plus the
rounding of the tool's f32 or f64 working precision); other tensors must be the base's bytes
(else the first model's). Prints a summary line and exits non-zero on any disagreement.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import safetensors

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from merge_ref import as_f64, read, spacing  # noqa: E402

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15

# Each method: (uses a base, parameter defaults). None marks a required parameter.
GTA = {"weight": None, "density": 1.0, "lambda": 1.0, "int8_mask": False}
METHODS = {
    "linear": {"weight": None, "normalize": True},
    "task_arithmetic": dict(GTA, normalize=False, rescale=False),
    "ties": dict(GTA, normalize=True, rescale=False),
    "dare_linear": dict(GTA, normalize=False, rescale=True),
    "dare_ties": dict(GTA, normalize=False, rescale=True),
    "della": dict(GTA, normalize=True, rescale=True, epsilon=0.15),
    "della_linear": dict(GTA, normalize=False, rescale=True, epsilon=0.15),
    "breadcrumbs": dict(GTA, normalize=False, rescale=False, gamma=0.01),
    "breadcrumbs_ties": dict(GTA, normalize=False, rescale=False, gamma=0.01),
    "slerp": {"t": None},
    "nuslerp": {"weight": None, "nuslerp_flatten": True, "nuslerp_row_wise": False},
    "model_stock": {"filter_wise": False},
    "passthrough": {"scale": 1.0},
}
# (sparsification, sign consensus) of mergekit's generalized task arithmetic.
GTA_KIND = {
    "task_arithmetic": (None, False),
    "ties": ("magnitude", True),
    "dare_linear": ("random", False),
    "dare_ties": ("random", True),
    "della": ("della", True),
    "della_linear": ("della", False),
    "breadcrumbs": ("outliers", False),
    "breadcrumbs_ties": ("outliers", True),
}


# --- parameters, as mergekit's config.evaluate_setting reads them ---------------------------


# Parameters mergekit validates as booleans: a list of them selects, never interpolates.
FLAGS = {"normalize", "rescale", "int8_mask", "filter_wise", "nuslerp_flatten", "nuslerp_row_wise"}


def evaluate(setting, name, t, flag=False):
    if isinstance(setting, (bool, int, float)):
        return float(setting)
    if all(isinstance(e, (bool, int, float)) for e in setting) and (
        flag or any(isinstance(e, bool) for e in setting)
    ):
        return float(bool(setting[int(t * (len(setting) - 1))]))
    if all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    for cond in setting:
        f = cond.get("filter")
        if f is None or f == "*" or f in name:
            return evaluate(cond["value"], name, t, flag)
    return None


def layer_position(names):
    """A tensor's layer position: the first all-digit dotted part (not the first part) is the
    index; the text before it names the stack; index / (layers - 1), 1 for one layer, 0 outside."""
    def where(name):
        parts = name.split(".")
        for i, p in enumerate(parts):
            if i > 0 and p.isdigit():
                return ".".join(parts[:i]), int(p)
        return None

    counts = {}
    for n in names:
        w = where(n)
        if w:
            counts[w[0]] = max(counts.get(w[0], 0), w[1] + 1)

    def position(name):
        w = where(name)
        if not w:
            return 0.0
        layers = counts[w[0]]
        return w[1] / (layers - 1) if layers > 1 else 1.0

    return position


def resolve(method, params, name, t, k):
    defaults = METHODS[method]
    top = params.get("parameters", {})
    models = params.get("models", [{} for _ in range(k)])
    per_model = {"weight", "density", "gamma", "epsilon", "scale"}
    glob, mods = {}, [dict() for _ in range(k)]
    for p, d in defaults.items():
        if p in per_model:
            for m in range(k):
                v = None
                if p in models[m]:
                    v = evaluate(models[m][p], name, t)
                if v is None and p in top:
                    v = evaluate(top[p], name, t)
                if v is None:
                    v = d
                assert v is not None, f"{p} missing for model {m}"
                mods[m][p] = float(v)
        else:
            v = evaluate(top[p], name, t, p in FLAGS) if p in top else None
            glob[p] = float(d if v is None else v)
    return glob, mods


# --- the random stream (soup-merge's documented generator) ----------------------------------


def mix_int(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def stream(seed, name, model):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return mix_int(mix_int(seed ^ h) ^ (model + 1))


def lowbias32(x):
    """Chris Wellons' two-multiply 32-bit integer hash, on a uint32 array."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def uniforms(key, n):
    """u for elements 0..n: element e of block b = e >> 32 hashes its offset j = e mod 2^32
    with the block's keys (k0, k1), the halves of mix(key + (b + 1) * GOLDEN):
    u = lowbias32(lowbias32(j ^ k0) + k1) / 2^32."""
    out = np.empty(n, dtype=np.float64)
    with np.errstate(over="ignore"):
        for block in range(0, (n + (1 << 32) - 1) >> 32):
            z = mix_int((key + (block + 1) * GOLDEN) & MASK64)
            k0, k1 = np.uint32(z & 0xFFFFFFFF), np.uint32(z >> 32)
            lo, hi = block << 32, min(n, (block + 1) << 32)
            j = np.arange(0, hi - lo, dtype=np.uint32)
            h = lowbias32(lowbias32(j ^ k0) + k1)
            out[lo:hi] = h.astype(np.float64) * 2.0**-32
    return out


# --- sparsification, as mergekit's sparsify.py -----------------------------------------------


def rescaled(d, mask, rescale):
    masked = d * mask
    if not rescale:
        return masked
    before, after = np.abs(d).sum(), np.abs(masked).sum()
    if before < 1e-7 or after < 1e-7:
        return masked
    return masked * (before / after)


def sparsify(kind, d, p, key, rescale):
    density = p["density"]
    if kind is None or density >= 1:
        return d
    flat = np.abs(d).reshape(-1)
    n = flat.size
    mask = np.zeros(n)
    if kind == "magnitude":
        # mergekit keeps at least one element of a nonempty tensor.
        k = max(1, int(density * n))
        # torch's descending argsort puts NaN magnitudes first, as the largest.
        nan = np.isnan(flat)
        order = np.lexsort((np.arange(n), -np.where(nan, 0.0, flat), ~nan))
        mask[order[:k]] = 1
    elif kind == "outliers":
        target, top = int(density * n), int(p["gamma"] * n)
        bottom = n - target - top
        if bottom < 0:
            top += bottom
            bottom = 0
        mask[np.argsort(flat, kind="stable")[bottom : n - top]] = 1
    elif kind == "random":
        mask = (uniforms(key, n) < density).astype(np.float64)
    elif kind == "della":
        eps = p["epsilon"]
        m2 = np.abs(d).reshape(1, -1) if d.ndim < 2 else np.abs(d)
        ranks = np.argsort(np.argsort(m2, axis=1, kind="stable"), axis=1, kind="stable")
        length = m2.shape[1]
        if length > 1:
            probs = (density - eps) + (ranks / (length - 1)) * (2 * eps)
        else:
            probs = np.full(m2.shape, density)
        mask = (uniforms(key, n) < probs.reshape(-1)).astype(np.float64)
    return rescaled(d, mask.reshape(d.shape), rescale)


def gta(method, base, xs, glob, mods, name, seed):
    kind, consensus = GTA_KIND[method]
    deltas = [sparsify(kind, x - base, mods[m], stream(seed, name, m), glob["rescale"] != 0) for m, x in enumerate(xs)]
    w = [mods[m]["weight"] for m in range(len(xs))]
    wd = np.stack([wi * di for wi, di in zip(w, deltas)])
    ws = np.array(w).reshape((-1,) + (1,) * base.ndim)
    # Magnitudes of the finite terms only: a NaN would make every tolerance NaN.
    mag = np.where(np.isfinite(wd), np.abs(wd), 0.0).sum(axis=0)
    ambiguous = np.zeros(base.shape, dtype=bool)
    if consensus:
        s = wd.sum(axis=0)
        results = []
        for majority in (np.where(s >= 0, 1.0, -1.0), np.where(s >= 0, -1.0, 1.0)):
            mask = np.sign(wd) == majority
            # A term that loses the vote adds itself times 0: NaN for a NaN or an infinity
            # (mergekit's `deltas * mask`).
            mixed = (wd * mask).sum(axis=0)
            div = (ws * mask).sum(axis=0)
            # np.where, not item assignment: a 0-d tensor's sum is a numpy scalar.
            div = np.where(div == 0, 1.0, div)
            if glob["normalize"]:
                mixed = mixed / div
            results.append(base + glob["lambda"] * mixed)
        # The tool sums in its working precision: a sum this close to 0 may elect either sign.
        ambiguous = np.abs(s) <= 2.0**-20 * mag
        return results[0], results[1], ambiguous, np.abs(base) + abs(glob["lambda"]) * mag * 4
    mixed = wd.sum(axis=0)
    div = sum(w)
    if abs(div) < 1e-8:
        div = 1
    if glob["normalize"]:
        mixed = mixed / div
    scale = abs(glob["lambda"]) * (1 / abs(div) if glob["normalize"] else 1)
    return base + glob["lambda"] * mixed, None, ambiguous, np.abs(base) + scale * mag + np.abs(base) * scale * len(xs)


def slerp(t, v0, v1):
    """mergekit's slerp: normalize (unless the norm is at most 1e-8), lerp above 0.9995."""
    n0, n1 = np.linalg.norm(v0), np.linalg.norm(v1)
    u0 = v0 / n0 if n0 > 1e-8 else v0
    u1 = v1 / n1 if n1 > 1e-8 else v1
    dot = np.sum(u0 * u1)
    if abs(dot) > 0.9995:
        return (1 - t) * v0 + t * v1
    theta = np.arccos(dot)
    s = np.sin(theta)
    return np.sin(theta - theta * t) / s * v0 + np.sin(theta * t) / s * v1


def nuslerp_vec(t, v0, v1):
    """mergekit's nuslerp over the last axis."""
    n0 = np.maximum(np.linalg.norm(v0, axis=-1, keepdims=True), 1e-7)
    n1 = np.maximum(np.linalg.norm(v1, axis=-1, keepdims=True), 1e-7)
    cos = np.clip(np.sum((v0 / n0) * (v1 / n1), axis=-1, keepdims=True), -1, 1)
    theta = np.arccos(cos)
    s = np.sin(theta)
    colinear = np.abs(s) < 1e-8
    with np.errstate(divide="ignore", invalid="ignore"):
        res = (np.sin((1 - t) * theta) * v0 + np.sin(t * theta) * v1) / s
    return np.where(colinear, (1 - t) * v0 + t * v1, res)


def nuslerp(glob, mods, xs, base):
    w0, w1 = mods[0]["weight"], mods[1]["weight"]
    t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
    v0, v1 = (xs[0] - base, xs[1] - base) if base is not None else (xs[0], xs[1])
    shape = v0.shape
    if glob["nuslerp_flatten"] or v0.ndim < 2:
        r = nuslerp_vec(t, v0.reshape(-1), v1.reshape(-1)).reshape(shape)
    elif glob["nuslerp_row_wise"]:
        r = np.swapaxes(nuslerp_vec(t, np.swapaxes(v0, 0, -1), np.swapaxes(v1, 0, -1)), 0, -1)
    else:
        r = nuslerp_vec(t, v0, v1)
    mag = np.abs(v0) + np.abs(v1) + (np.abs(base) if base is not None else 0)
    return (r + base if base is not None else r), mag * 4


def model_stock(glob, base, xs):
    shape = base.shape
    if glob["filter_wise"] and base.ndim >= 2:
        w0 = base
        ws = xs
    else:
        w0 = base.reshape(1, -1)
        ws = [x.reshape(1, -1) for x in xs]
    offs = [w - w0 for w in ws]
    cos = []
    for i in range(len(offs)):
        for j in range(i + 1, len(offs)):
            norms = np.linalg.norm(offs[i], axis=-1) * np.linalg.norm(offs[j], axis=-1)
            cos.append(np.clip(np.sum(offs[i] * offs[j], axis=-1) / np.maximum(norms, 1e-6), -1, 1))
    c = np.mean(cos, axis=0)[..., None]
    n = len(ws)
    # mergekit keeps the base where the ratio has no finite value (opposite task vectors).
    denominator = 1 + (n - 1) * c
    singular = np.abs(denominator) < 1e-6
    t = np.where(singular, 0.0, n * c / np.where(singular, 1.0, denominator))
    out = t * (sum(ws) / n) + (1 - t) * w0
    return out.reshape(shape), (np.abs(base) + sum(np.abs(x) for x in xs)).reshape(shape) * 2


def expected(method, params, name, pos, base, xs, seed):
    """(result, alternative or None, where the alternative is also accepted, magnitude)."""
    glob, mods = resolve(method, params, name, pos, len(xs))
    none = np.zeros(xs[0].shape, dtype=bool)
    if method == "linear":
        w = [m["weight"] for m in mods]
        div = sum(w) if glob["normalize"] else 1.0
        terms = [wi / div * x for wi, x in zip(w, xs)]
        return sum(terms), None, none, sum(np.abs(t) for t in terms)
    if method == "passthrough":
        return mods[0]["scale"] * xs[0], None, none, np.abs(mods[0]["scale"] * xs[0])
    if method in GTA_KIND:
        return gta(method, base, xs, glob, mods, name, seed)
    if method == "slerp":
        t = glob["t"]
        r = slerp(t, base.reshape(-1), xs[0].reshape(-1)).reshape(base.shape)
        return r, None, none, (np.abs(base) + np.abs(xs[0])) * 2
    if method == "nuslerp":
        r, mag = nuslerp(glob, mods, xs, base)
        return r, None, none, mag
    if method == "model_stock":
        r, mag = model_stock(glob, base, xs)
        return r, None, none, mag
    raise SystemExit(f"unknown method {method}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("output")
    p.add_argument("--method", required=True)
    p.add_argument("--params", required=True)
    p.add_argument("--base")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("models", nargs="+")
    args = p.parse_args()
    params = json.loads(args.params)

    with open(args.output, "rb") as f:
        official = dict(safetensors.deserialize(f.read()))
    meta, out = read(args.output)
    base = read(args.base)[1] if args.base else None
    models = [read(path)[1] for path in args.models]
    assert set(official) == set(out), "official reader sees other tensors"
    assert meta.get("model_soup.method") == args.method, meta
    position = layer_position(out.keys())

    failures, checked = [], 0
    for name, (dtype, shape, buf) in sorted(out.items()):
        first = base if base is not None else models[0]
        if official[name]["shape"] != list(shape):
            failures.append(f"{name}: official reader shape {official[name]['shape']}")
        if first[name][0] not in FLOAT_DTYPES:
            if buf != first[name][2]:
                failures.append(f"{name} ({dtype}): not the base's (or first model's) bytes")
            continue
        xs = [as_f64(m[name][0], shape, m[name][2]) for m in models]
        b = as_f64(base[name][0], shape, base[name][2]) if base is not None else None
        ref, alt, either, mag = expected(args.method, params, name, position(name), b, xs, args.seed)
        ours = as_f64(dtype, shape, buf)
        wide = dtype in ("F32", "F64") or any(m[name][0] == "F64" for m in models + ([base] if base else []))
        eps = 2.0**-53 if wide else 2.0**-24
        # One ulp of the output, plus the working precision's rounding of each step (with the
        # stats' coefficients summed in f64, a few times the inputs' magnitudes suffice).
        tol = spacing(dtype, ref) + 16 * (len(xs) + 2) * eps * mag
        ok = np.abs(ours - ref) <= tol
        if alt is not None:
            ok |= either & (np.abs(ours - alt) <= spacing(dtype, alt) + 16 * (len(xs) + 2) * eps * mag)
        ok |= np.isnan(ours) & np.isnan(ref)
        # Infinities of one sign (their difference is NaN, never within a tolerance).
        ok |= np.isinf(ours) & (ours == ref)
        checked += ours.size
        if not ok.all():
            i = int(np.argmax(~ok.reshape(-1)))
            failures.append(
                f"{name} ({dtype}): {int((~ok).sum())} of {ours.size} elements off, first at flat {i}: ours {ours.reshape(-1)[i]!r} ref {ref.reshape(-1)[i]!r}"
            )
    for f in failures:
        print("FAIL", f)
    print(f"reference: {args.method}, {len(out)} tensors, {checked} float elements checked against float64, {len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

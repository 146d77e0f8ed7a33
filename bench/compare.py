#!/usr/bin/env python3
"""Check that merge outputs agree with a float64 reference computed from the inputs.

    python3 compare.py A B C LABEL=OUTPUT [LABEL=OUTPUT ...] [--weights 0.5,0.3,0.2] [--tol 1] [--tol-for mergekit=4]

Arguments with an `=` are outputs, the others inputs. An OUTPUT is a .safetensors file or a directory of shards. Every output must hold exactly the inputs'
tensor names and shapes (its dtype may differ). For each element the error is measured in units of
the output dtype's spacing at S = sum_i |w_i * x_i|, the size of the terms being summed: a merge that
accumulates in float32 and rounds once stays within about 0.5 of that unit, one that accumulates in
bf16 within about 2. Also reports how many elements differ bit-for-bit from the first output.
Prints one line per output and exits 1 if any output has a missing tensor or exceeds its tolerance.
Needs numpy; the safetensors package, when installed, is also asked to open every file.
"""
import argparse
import json
import sys

import numpy as np

from stfile import collect, ulp, widen

CHUNK = 1 << 22


def check_with_safetensors(path_by_label):
    """Open each file with the reference safetensors parser: a malformed header fails here."""
    try:
        from safetensors import safe_open
    except ImportError:
        return "safetensors package not installed, skipped its parser check"
    files = set()
    for owner in path_by_label.values():
        files.update(layout.path for layout in owner.values())
    for f in sorted(files):
        try:
            with safe_open(f, framework="numpy") as handle:
                list(handle.keys())
        except Exception as e:  # the parser's own error types vary by version
            return f"FAIL safetensors parser rejected {f}: {e}"
    return f"safetensors parser opened {len(files)} files"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", metavar="INPUT | LABEL=OUTPUT")
    ap.add_argument("--weights", help="comma-separated (default 1/N each)")
    ap.add_argument("--tol", type=float, default=1.0, help="allowed error in units of spacing at S")
    ap.add_argument("--tol-for", action="append", default=[], metavar="LABEL=UNITS")
    ap.add_argument("--every", type=int, default=1, help="check only every k-th chunk (faster on big files)")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()

    inputs = [collect(p) for p in a.paths if "=" not in p]
    if not inputs or len(inputs) == len(a.paths):
        ap.error("give the merge's inputs and at least one LABEL=OUTPUT")
    weights = [1.0 / len(inputs)] * len(inputs)
    if a.weights:
        weights = [float(w) for w in a.weights.split(",")]
    outputs = {}
    for item in (p for p in a.paths if "=" in p):
        label, _, path = item.partition("=")
        outputs[label] = collect(path)
    tolerance = {label: a.tol for label in outputs}
    for item in a.tol_for:
        label, _, units = item.partition("=")
        tolerance[label] = float(units)

    names = sorted(inputs[0])
    results = {label: {"max_units": 0.0, "differs_from_first": 0, "elements": 0, "problems": []} for label in outputs}
    first_label = next(iter(outputs))
    for label, owner in outputs.items():
        missing, extra = set(names) - set(owner), set(owner) - set(names)
        if missing or extra:
            results[label]["problems"].append(f"{len(missing)} tensors missing, {len(extra)} unexpected")
        for n in set(names) & set(owner):
            if owner[n].shape(n) != inputs[0][n].shape(n):
                results[label]["problems"].append(f"{n}: shape {owner[n].shape(n)}")

    chunk_index = 0
    for n in names:
        raws = [inp[n].raw(n) for inp in inputs]
        code_in = inputs[0][n].dtype(n)
        present = {l: o for l, o in outputs.items() if n in o and o[n].shape(n) == inputs[0][n].shape(n)}
        out_raw = {l: o[n].raw(n) for l, o in present.items()}
        for start in range(0, raws[0].size, CHUNK):
            chunk_index += 1
            if (chunk_index - 1) % a.every:
                continue
            stop = min(start + CHUNK, raws[0].size)
            terms = [np.float64(w) * widen(r[start:stop], code_in, np.float64) for r, w in zip(raws, weights)]
            reference = np.sum(terms, axis=0)
            scale = np.sum(np.abs(terms), axis=0)
            first_bits = None
            for label, raw in out_raw.items():
                code = present[label][n].dtype(n)
                got = widen(raw[start:stop], code, np.float64)
                units = np.abs(got - reference) / ulp(scale, code)
                r = results[label]
                r["max_units"] = max(r["max_units"], float(units.max(initial=0.0)))
                r["elements"] += stop - start
                bits = np.asarray(raw[start:stop])
                if label == first_label:
                    first_bits = bits
                elif first_bits is not None and bits.dtype == first_bits.dtype:
                    r["differs_from_first"] += int(np.count_nonzero(bits != first_bits))
                elif first_bits is not None:
                    r["differs_from_first"] += stop - start

    note = check_with_safetensors(outputs)
    failed = note.startswith("FAIL")
    for label, r in results.items():
        ok = not r["problems"] and r["max_units"] <= tolerance[label]
        r["ok"], r["tolerance"] = ok, tolerance[label]
        failed |= not ok
        share = r["differs_from_first"] / max(r["elements"], 1)
        print(f"{'ok  ' if ok else 'FAIL'} {label}: max error {r['max_units']:.3f} units (tolerance {tolerance[label]}), "
              f"{share:.2%} of {r['elements']} elements differ from {first_label}"
              + (f"; {'; '.join(r['problems'][:3])}" if r["problems"] else ""))
    print(note)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

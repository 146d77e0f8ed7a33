"""A scorer with a known answer, for soup-eval's --scorer tests.

    python distance.py CHECKPOINT TARGET [--positive] [--json]

Prints minus the squared Euclidean distance (float64) between the floating-point tensors of
CHECKPOINT and those of TARGET, read with the official safetensors package: the greedy soup
of any ingredients is then known in advance. CHECKPOINT and TARGET are .safetensors files or
model directories (model.safetensors, or an index and its shards).

--positive prints the distance itself (a loss: use soup-eval --minimize); --json prints
{"results": {"distance": {"score": X}}} after a line of noise.
Environment: SCORER_SLEEP seconds to sleep first; SCORER_RECORD a file to which
"$SCORER_TAG $SOUP_CANDIDATE $SOUP_SLOT start|end TIME $SLURM_JOB_ID" lines are appended.
"""
import json
import os
import sys
import time

import numpy as np
from safetensors.numpy import load_file


def load(path):
    if not os.path.isdir(path):
        return load_file(path)
    index = os.path.join(path, "model.safetensors.index.json")
    if not os.path.exists(index):
        return load_file(os.path.join(path, "model.safetensors"))
    tensors = {}
    with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    for shard in shards:
        tensors.update(load_file(os.path.join(path, shard)))
    return tensors


def record(event):
    where = os.environ.get("SCORER_RECORD")
    if where:
        with open(where, "a") as f:
            f.write("%s %s %s %s %.6f %s\n" % (
                os.environ.get("SCORER_TAG", "-"),
                os.environ.get("SOUP_CANDIDATE", "-"),
                os.environ.get("SOUP_SLOT", "-"),
                event,
                time.time(),
                os.environ.get("SLURM_JOB_ID", "-"),
            ))


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = set(a for a in sys.argv[1:] if a.startswith("--"))
    checkpoint, target = args
    record("start")
    time.sleep(float(os.environ.get("SCORER_SLEEP", "0")))
    have = load(checkpoint)
    want = load(target)
    distance = 0.0
    for name, t in want.items():
        if t.dtype.kind != "f":
            continue
        diff = have[name].astype(np.float64) - t.astype(np.float64)
        distance += float((diff * diff).sum())
    score = distance if "--positive" in flags else -distance
    record("end")
    print("scoring %s" % checkpoint, file=sys.stderr)
    if "--json" in flags:
        print("some progress output")
        print(json.dumps({"results": {"distance": {"score": score}}}))
    else:
        print("loaded %d tensors" % len(have))
        print(repr(score))


main()

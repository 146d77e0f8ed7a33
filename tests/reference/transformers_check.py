"""A real client for soup-merge's model directories: transformers loads the merged model.

Usage: transformers_check.py SOUP_MERGE WORKDIR [--mergekit-yaml PATH]

1. Makes three fine-tunes of a tiny Llama with transformers itself (a random base from a
   LlamaConfig, plus a different small perturbation each), saved with save_pretrained as sharded
   model directories, with a word-level tokenizer and a chat template.
2. Runs SOUP_MERGE on the three directories with weights 0.5, 0.3, 0.2, --dtype bf16 and a
   small --shard-size, so the output is a sharded directory.
3. Loads it with AutoModelForCausalLM.from_pretrained (no missing or unexpected keys, bf16 from
   config.json) and AutoTokenizer, runs a forward pass, and compares every parameter with a
   float64 torch average of the inputs (within one bf16 unit in the last place) and the logits
   with those of that reference model.
4. With --mergekit-yaml, runs mergekit on the same linear recipe that soup-merge reads with
   --config, and compares the two outputs tensor by tensor (within one bf16 ulp).

Prints one line per step and exits non-zero on any disagreement. Needs torch and transformers
(see tests/reference/transformers_check.sh); too heavy for CI, so it is run by hand.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

WEIGHTS = [0.5, 0.3, 0.2]


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>", "hello", "world", "soup", "model", "merge"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return fast


def make_inputs(work):
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(config).eval()
    tok = tokenizer()
    dirs = []
    for i in range(3):
        torch.manual_seed(100 + i)
        model = LlamaForCausalLM(config).eval()
        with torch.no_grad():
            for (name, p), (_, q) in zip(model.named_parameters(), base.named_parameters()):
                p.copy_(q + 0.02 * torch.randn_like(q))
        d = work / f"ft{i}"
        model.save_pretrained(d, safe_serialization=True, max_shard_size="100KB")
        tok.save_pretrained(d)
        dirs.append(d)
    shards = sorted(p.name for p in dirs[0].glob("*.safetensors"))
    print(f"ok: made 3 tiny Llama fine-tunes with transformers, {len(shards)} shards each")
    return dirs


def bf16_ulp(x):
    """One unit in the last place of bf16 at |x| (7 stored mantissa bits)."""
    a = x.abs().clamp(min=torch.finfo(torch.bfloat16).tiny)
    return torch.pow(2.0, torch.floor(torch.log2(a)) - 7)


def reference_state(dirs):
    states = []
    for d in dirs:
        state = {}
        for f in sorted(d.glob("*.safetensors")):
            state.update(load_file(f))
        states.append(state)
    return {
        k: sum(w * s[k].double() for w, s in zip(WEIGHTS, states)) for k in states[0]
    }


def check_transformers(soup_merge, dirs, work):
    out = work / "soup"
    cmd = [soup_merge, *map(str, dirs), "-w", ",".join(map(str, WEIGHTS)), "--dtype", "bf16",
           "--shard-size", "150KB", "-o", str(out), "--force", "-q"]
    subprocess.run(cmd, check=True)
    files = sorted(p.name for p in out.iterdir())
    shards = [f for f in files if f.endswith(".safetensors")]
    if len(shards) < 2 or "model.safetensors.index.json" not in files:
        fail(f"expected a sharded directory, got {files}")
    for f in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "README.md"]:
        if f not in files:
            fail(f"{f} missing from the output: {files}")
    print(f"ok: soup-merge wrote {len(shards)} shards + index + {', '.join(f for f in files if not f.startswith('model'))}")

    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True, dtype="auto")
    bad = {k: v for k, v in info.items() if v}
    if bad:
        fail(f"from_pretrained reported {bad}")
    if model.dtype != torch.bfloat16:
        fail(f"loaded as {model.dtype}, config.json should make it bfloat16")
    tok = AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template([{"role": "user", "content": "hello soup"}], tokenize=False)
    ids = tok(text + " merge model", return_tensors="pt").input_ids
    print(f"ok: from_pretrained loaded {type(model).__name__} in {model.dtype} with no missing or unexpected keys; tokenizer and chat template load ({ids.shape[1]} tokens)")

    ref = reference_state(dirs)
    worst = 0.0
    for name, p in model.state_dict().items():
        if name not in ref:
            continue
        err = (p.double() - ref[name]).abs() / bf16_ulp(ref[name])
        worst = max(worst, err.max().item())
    if worst > 1.0:
        fail(f"a parameter is {worst:.2f} bf16 ulp from the float64 average")
    print(f"ok: every parameter within {worst:.3f} bf16 ulp of the float64 average of the inputs")

    with torch.no_grad():
        logits = model(ids).logits.float()
        reference = LlamaForCausalLM.from_pretrained(dirs[0], dtype=torch.float64).eval()
        reference.load_state_dict({k: v for k, v in ref.items()}, strict=False)
        want = reference(ids).logits
    if not torch.isfinite(logits).all():
        fail("non-finite logits")
    diff = (logits.double() - want).abs().max().item()
    scale = want.abs().max().item()
    if diff > 0.05 * scale:
        fail(f"logits differ from the float64 reference soup by {diff} (scale {scale})")
    print(f"ok: forward pass finite; logits within {diff:.4f} of the float64 soup's (max |logit| {scale:.3f})")
    return out


def check_mergekit(mergekit_yaml, soup_merge, dirs, work):
    recipe = work / "recipe.yaml"
    lines = ["merge_method: linear", "dtype: float32", "out_dtype: bfloat16", "models:"]
    for d, w in zip(dirs, [5, 3, 2]):
        lines += [f"  - model: {d}", "    parameters:", f"      weight: {w}"]
    recipe.write_text("\n".join(lines) + "\n")
    ours = work / "soup-recipe"
    theirs = work / "mergekit-out"
    subprocess.run([soup_merge, "--config", str(recipe), "-o", str(ours), "--force", "-q"], check=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    subprocess.run([mergekit_yaml, str(recipe), str(theirs)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def state(d):
        s = {}
        for f in sorted(Path(d).glob("*.safetensors")):
            s.update(load_file(f))
        return s

    a, b = state(ours), state(theirs)
    if set(a) != set(b):
        fail(f"tensor names differ: {sorted(set(a) ^ set(b))[:5]}")
    worst = 0.0
    for k in a:
        if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape:
            fail(f"{k}: {a[k].dtype}{tuple(a[k].shape)} vs mergekit's {b[k].dtype}{tuple(b[k].shape)}")
        err = (a[k].double() - b[k].double()).abs() / bf16_ulp(b[k].double())
        worst = max(worst, err.max().item())
    if worst > 1.0:
        fail(f"soup-merge --config and mergekit differ by {worst:.2f} bf16 ulp")
    identical = sum(torch.equal(a[k], b[k]) for k in a)
    print(f"ok: soup-merge --config and mergekit-yaml agree on the same recipe: {len(a)} tensors, "
          f"{identical} bit-identical, worst {worst:.2f} bf16 ulp")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("soup_merge")
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--mergekit-yaml")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    dirs = make_inputs(args.workdir)
    check_transformers(args.soup_merge, dirs, args.workdir)
    if args.mergekit_yaml:
        check_mergekit(args.mergekit_yaml, args.soup_merge, dirs, args.workdir)
    print("transformers check passed")


if __name__ == "__main__":
    main()

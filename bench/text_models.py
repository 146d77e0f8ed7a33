"""Helpers for bench/text_bench.sh (torch, transformers, safetensors):

    text_models.py save DIR [SIZE]      a random Llama model directory (f32): SIZE 100m (99.5M
                                        parameters, the default) or 1g (246M, 0.98 GB)
    text_models.py torch DIR THREADS BATCH SEQ_LEN ITERATIONS
                                        transformers' eval-mode forward throughput (logits at
                                        every position), JSON line
    text_models.py ingredients DIR OUT K
                                        K perturbed copies of DIR (fine-tunes of one base)
    text_models.py data OUT N SEQ_LEN   pre-tokenised LM data: input_ids I64 [N, SEQ_LEN]
    text_models.py loss DIR DATA DEVICE BATCH
                                        transformers' next-token loss and accuracy on
                                        pre-tokenised DATA, as soup-eval scores it (each row
                                        one sequence, every position after the first
                                        predicted), f32 on DEVICE (cpu, cuda), JSON line
"""

import json
import os
import shutil
import sys
import time

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

COMMON = dict(vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5,
              rope_theta=10000.0, tie_word_embeddings=False)
SIZES = {
    # 99.5M parameters: two 24.6M embeddings (untied) and 8 layers of 6.3M (4 key-value heads).
    "100m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                 num_attention_heads=12, num_key_value_heads=4),
    # 246M parameters, 0.98 GB in f32: two 32.8M embeddings and 16 layers of 11.3M.
    "1g": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
               num_attention_heads=16, num_key_value_heads=4),
}


def save(out, size="100m"):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**COMMON, **SIZES[size])).eval()
    model.save_pretrained(out, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"saved": out, "parameters": params}), file=sys.stderr)


def forward(path, threads, batch, seq_len, iterations):
    torch.set_num_threads(threads)
    model = LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=generator)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask).logits[0, 0, 0].item()
        started = time.perf_counter()
        for _ in range(iterations):
            model(input_ids=ids, attention_mask=mask).logits[0, 0, 0].item()
        seconds = time.perf_counter() - started
    print(json.dumps({"tool": "torch", "model": "llama-100m", "threads": threads, "batch": batch,
                      "seq_len": seq_len, "iterations": iterations, "seconds": seconds,
                      "tokens_per_second": batch * seq_len * iterations / seconds}))


def ingredients(base, out, k):
    tensors = load_file(os.path.join(base, "model.safetensors"))
    for i in range(k):
        torch.manual_seed(100 + i)
        target = os.path.join(out, f"ft-{i}")
        os.makedirs(target, exist_ok=True)
        shutil.copy(os.path.join(base, "config.json"), target)
        moved = {name: (t + 0.01 * torch.randn_like(t)).contiguous() for name, t in tensors.items()}
        save_file(moved, os.path.join(target, "model.safetensors"), metadata={"format": "pt"})


def data(out, n, seq_len):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, COMMON["vocab_size"], (n, seq_len), generator=generator)
    save_file({"input_ids": ids}, out)


def loss(path, data_path, device, batch):
    started = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    ids = load_file(data_path)["input_ids"]
    loaded = time.perf_counter()
    nll, correct, total = 0.0, 0, 0
    with torch.inference_mode():
        for i in range(0, ids.shape[0], batch):
            x = ids[i:i + batch].to(device)
            logits = model(input_ids=x).logits[:, :-1].double()
            target = x[:, 1:]
            nll += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum").item()
            correct += (logits.argmax(-1) == target).sum().item()
            total += target.numel()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    done = time.perf_counter()
    print(json.dumps({"tool": "transformers " + __import__("transformers").__version__,
                      "torch": torch.__version__, "device": device, "loss": nll / total,
                      "correct": correct, "total": total, "load_seconds": loaded - started,
                      "forward_seconds": done - loaded}))


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "save":
        save(*rest)
    elif command == "torch":
        forward(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), int(rest[4]))
    elif command == "ingredients":
        ingredients(rest[0], rest[1], int(rest[2]))
    elif command == "data":
        data(rest[0], int(rest[1]), int(rest[2]))
    elif command == "loss":
        loss(rest[0], rest[1], rest[2], int(rest[3]))
    else:
        sys.exit(__doc__)

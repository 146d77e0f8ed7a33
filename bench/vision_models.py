"""Helpers for bench/vision_bench.sh (torch, torchvision, Pillow, safetensors):

    vision_models.py save WORK          resnet50 and vit_b_16 (random weights, 1000 classes)
    vision_models.py torch CKPT THREADS BATCH ITERATIONS
                                        PyTorch's eval-mode forward throughput, JSON line
    vision_models.py jpegs PHOTOS OUT N JPEG folder: N images (two classes) made from PHOTOS
    vision_models.py preprocess FOLDER THREADS
                                        torchvision ImageFolder + the ImageNet preset, JSON line
    vision_models.py ingredients OUT K  K perturbed 2-class ResNet-50 fine-tunes of one base
"""

import json
import os
import sys
import time

import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file, save_file


def build(name, num_classes=1000):
    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


def save(work):
    torch.manual_seed(0)
    for name in ["resnet50", "vit_b_16"]:
        model = build(name).eval()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(work, f"{name}.safetensors"), metadata={"model": name})


def forward(path, threads, batch, iterations):
    torch.set_num_threads(threads)
    name = load_file(path) and os.path.basename(path).split(".")[0]
    model = build(name).eval()
    model.load_state_dict(load_file(path))
    x = torch.rand(batch, 3, 224, 224) * 4 - 2
    with torch.inference_mode():
        model(x)
        started = time.perf_counter()
        for _ in range(iterations):
            model(x)
        seconds = time.perf_counter() - started
    print(json.dumps({"tool": "torch", "model": name, "threads": threads, "batch": batch,
                      "iterations": iterations, "seconds": seconds,
                      "images_per_second": batch * iterations / seconds}))


def jpegs(photos, out, n):
    sources = [Image.open(os.path.join(photos, p)).convert("RGB") for p in sorted(os.listdir(photos))]
    for i in range(n):
        image = sources[i % len(sources)].resize((500, 375))
        folder = os.path.join(out, f"class{i % 2}")
        os.makedirs(folder, exist_ok=True)
        image.save(os.path.join(folder, f"{i:04d}.jpg"), quality=90)


def preprocess(folder, threads):
    torch.set_num_threads(threads)
    preset = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.transforms()
    data = torchvision.datasets.ImageFolder(folder, transform=preset)
    started = time.perf_counter()
    xs = [data[i][0] for i in range(len(data))]
    seconds = time.perf_counter() - started
    print(json.dumps({"tool": "torchvision", "images": len(xs), "threads": threads,
                      "seconds": seconds, "images_per_second": len(xs) / seconds}))


def ingredients(out, k):
    torch.manual_seed(1)
    base = build("resnet50", num_classes=2).state_dict()
    for i in range(k):
        state = {n: (v + 0.01 * v.std() * torch.randn_like(v)) if v.is_floating_point() and v.numel() > 1 else v
                 for n, v in base.items()}
        save_file({n: v.contiguous() for n, v in state.items()}, os.path.join(out, f"ft-{i}.safetensors"))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "save":
        save(args[0])
    elif command == "torch":
        forward(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif command == "jpegs":
        jpegs(args[0], args[1], int(args[2]))
    elif command == "preprocess":
        preprocess(args[0], int(args[1]))
    elif command == "ingredients":
        ingredients(args[0], int(args[1]))
    else:
        sys.exit(__doc__)

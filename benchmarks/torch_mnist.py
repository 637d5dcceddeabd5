#!/usr/bin/env python3
"""The default preset's recipe as a plain PyTorch script: the peer of
``python pipelines/mnist.py --preset default`` in benchmarks/bench_e2e.py.

The same work: MNIST's IDX files (the last 10,000 training images are the validation
split, pixels ``byte / 256``), conv 16 3x3 => relu => maxpool 2 => conv 32 3x3 => relu
=> maxpool 2 => flatten => dense 128 => relu => dense 10, float32, Adam (lr 2e-3) with a
linear warm-up of 200 steps and a cosine down to 1 % of it, batches of 64 (the last of
an epoch shorter), 4 epochs over 50,000 images, a validation pass over 10,000 images
in chunks of 1,000 after each epoch, a test pass, then a checkpoint (``torch.save``) and
a JSON summary. What a PyTorch user writes: PyTorch's own layer init, a DataLoader-free
loop over shuffled index batches, ``torch.no_grad()`` evaluation. No plots (fnnet's
pipeline draws two: the comparison leaves that work to fnnet).

Usage: python benchmarks/torch_mnist.py [--data-dir DIR] [--threads N] [--out DIR]
  --threads: torch.set_num_threads(N) (default: PyTorch's own, one per core)
Prints one JSON line: wall, train and eval seconds, test accuracy.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import pathlib
import time

import numpy as np
import torch
from torch import nn


def read_idx(path: pathlib.Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(data_dir: pathlib.Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    def images(name: str) -> torch.Tensor:
        return torch.from_numpy(read_idx(data_dir / name).astype(np.float32) / 256)[:, None]

    def labels(name: str) -> torch.Tensor:
        return torch.from_numpy(read_idx(data_dir / name).astype(np.int64))

    x, y = images("train-images-idx3-ubyte.gz"), labels("train-labels-idx1-ubyte.gz")
    return {"train": (x[:50_000], y[:50_000]), "val": (x[50_000:], y[50_000:]),
            "test": (images("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz"))}


def model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def schedule(steps: int, warmup: int, alpha: float = 0.01):
    def factor(step: int) -> float:  # fnnet.optim.cosine_decay, as a multiplier of the base lr
        if step < warmup:
            return step / warmup
        t = min(step - warmup, steps) / steps
        return alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


@torch.no_grad()
def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000) -> tuple[float, float]:
    net.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), chunk):
        logits = net(x[i : i + chunk])
        loss += nn.functional.cross_entropy(logits, y[i : i + chunk], reduction="sum").item()
        correct += (logits.argmax(1) == y[i : i + chunk]).sum().item()
    net.train()
    return loss / len(x), correct / len(x)


def main() -> None:
    t0 = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_dir = pathlib.Path(os.environ.get("FNNET_DATA_DIR", "~/.cache/fnnet")).expanduser() / "mnist"
    ap.add_argument("--data-dir", type=pathlib.Path, default=default_dir)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/torch-default"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = load(args.data_dir)
    x, y = data["train"]
    net = model()
    batch, per_epoch = 64, math.ceil(len(x) / 64)
    steps = args.epochs * per_epoch
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(steps, min(200, steps // 10)))
    train_s = eval_s = 0.0
    for epoch in range(args.epochs):
        t = time.perf_counter()
        for idx in torch.randperm(len(x)).split(batch):
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        train_s += time.perf_counter() - t
        t = time.perf_counter()
        val_loss, val_acc = evaluate(net, *data["val"])
        eval_s += time.perf_counter() - t
        print(f"epoch {epoch + 1}  loss {loss.item():.4f}  val loss {val_loss:.4f} acc {val_acc:.4f}", flush=True)
    t = time.perf_counter()
    test_loss, test_acc = evaluate(net, *data["test"])
    eval_s += time.perf_counter() - t
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), args.out / "model.pt")
    summary = {"framework": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
               "test_accuracy": test_acc, "val_accuracy": val_acc, "train_seconds": round(train_s, 3),
               "eval_seconds": round(eval_s, 3), "wall_seconds": round(time.perf_counter() - t0, 3)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

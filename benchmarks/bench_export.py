#!/usr/bin/env python
"""Time the export of a pruning instance from a randomly initialised network (magnitude scores).

    .venv/bin/python benchmarks/bench_export.py                       # ResNet50, 3 repeats
    .venv/bin/python benchmarks/bench_export.py --arch mobilenetv1 --repeats 5 --save /tmp/m.npz
    .venv/bin/python benchmarks/bench_export.py --repeats 5 --save /tmp/r50.npz --cli /tmp/r50-cli.npz

Stages: building the model (PyTorch default init, CPU), then ``export_instance`` (FLOP costs by
forward hooks on a 1x3x224x224 input, w^2 scores, PruningInstance), split into its parts, and
optionally writing the .npz file. Prints a Markdown table (median and min over repeats) and one
JSON line; the machine's load average is printed too, since other work shares the cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from falcon_milp import save_instance
from falcon_milp.instance import PruningInstance
from falcon_milp.torch.architectures import build_model, example_input
from falcon_milp.torch.export import export_instance
from falcon_milp.torch.flops import flops_vector, group_sizes, prunable_layers, run_forward
from falcon_milp.torch.importance import MagnitudeImportance


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", type=Path, default=None, help="also time writing the instance here")
    ap.add_argument("--cli", type=Path, default=None, metavar="FILE",
                    help="also time `falcon-milp export --arch ARCH --random-init --flops-fraction 0.3 "
                         "-o FILE` end to end (a new process: imports, init, export, compressed save)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, t_build = timed(lambda: build_model(args.arch, seed=0))
    x = example_input(args.arch)
    rows: dict[str, list[float]] = {"prunable_layers (hooks)": [], "magnitude scores": [],
                                    "PruningInstance.from_flat": [], "export_instance (total)": [],
                                    "for comparison: one real forward pass (CPU)": []}
    inst = None
    for _ in range(args.repeats):
        layers, t = timed(lambda: prunable_layers(model, x))
        rows["prunable_layers (hooks)"].append(t)
        scores, t = timed(lambda: MagnitudeImportance()(model, layers).astype(np.float32))
        rows["magnitude scores"].append(t)
        _, t = timed(lambda: PruningInstance.from_flat(scores, group_sizes(layers), flops_vector(layers),
                                                       names=[l.name for l in layers], copy=False))
        rows["PruningInstance.from_flat"].append(t)
        inst, t = timed(lambda: export_instance(model, x, "magnitude", flops_fraction=0.3, nnz_fraction=0.5))
        rows["export_instance (total)"].append(t)
        _, t = timed(lambda: run_forward(model, x))
        rows["for comparison: one real forward pass (CPU)"].append(t)
    t_save = None
    if args.save is not None:
        _, t_save = timed(lambda: save_instance(inst, args.save))
    t_cli = None
    if args.cli is not None:
        cmd = [sys.executable, "-m", "falcon_milp", "export", "--arch", args.arch, "--random-init",
               "--flops-fraction", "0.3", "-o", str(args.cli)]
        _, t_cli = timed(lambda: subprocess.run(cmd, check=True, capture_output=True))

    load = os.getloadavg()
    print(f"{args.arch}: {inst.n_weights:,} weights in {inst.n_groups} groups, dense MACs "
          f"{inst.total_flops:,.0f}; torch {torch.__version__}, {args.threads} threads, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print()
    print("| stage | median (s) | min (s) |")
    print("|---|---|---|")
    print(f"| build_model (init, once) | {t_build:.3f} | {t_build:.3f} |")
    for name, ts in rows.items():
        print(f"| {name} | {statistics.median(ts):.3f} | {min(ts):.3f} |")
    if t_save is not None:
        print(f"| save_instance (compressed .npz, once) | {t_save:.3f} | {t_save:.3f} |")
    if t_cli is not None:
        print(f"| `falcon-milp export` end to end (new process, once) | {t_cli:.3f} | {t_cli:.3f} |")
    record = {"arch": args.arch, "n_weights": inst.n_weights, "threads": args.threads,
              "repeats": args.repeats, "build_s": t_build, "save_s": t_save, "cli_s": t_cli,
              "stages_s": rows, "loadavg": load, "torch": torch.__version__,
              "machine": platform.machine(), "cpu_count": os.cpu_count()}
    print()
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())

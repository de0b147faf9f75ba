"""``falcon-milp bench``: run solvers on a suite; JSONL records, Markdown report, plots.

Output folder (``--out``, default ``bench-out/<suite>``):
``results.jsonl`` (one record per run, appended and flushed as each run ends),
``run.json`` (settings, machine, versions), ``report.md`` and the PNG plots.
Exit code 0 when every run passed its checks and none crashed, 1 otherwise,
2 for bad usage, 130 after Ctrl-C (the report then covers the runs that finished).
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
from typing import Any, Sequence

from ..exceptions import SolverOptionError, UnknownSolverError
from ..executors import add_executor_options, executor_from_args, package_versions
from ..solvers.registry import solver_names
from ..validation import integer, real
from .harness import Task, make_tasks, run_tasks
from .records import RecordWriter, iter_records, ordered
from .report import build_rows, markdown_report, solver_summaries, text_table, fmt_gap, fmt_time
from .suite import Suite, check_synthetic_available, resolve_suite

RESULTS_FILE = "results.jsonl"
REPORT_FILE = "report.md"
META_FILE = "run.json"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Run every solver on every instance of a suite and report gaps and times."
    parser.add_argument("--suite", nargs="+", default=["quick"], metavar="quick|full|PATH",
                        help="'quick', 'full', or .npz files / folders / synthetic:<arch>:nnz<x>:"
                             "flops<y>:seed<n> names (default quick)")
    parser.add_argument("--solvers", default=None, metavar="A,B,...",
                        help="comma-separated solver names (default: every available solver)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="S",
                        help="time limit per run in seconds (default: the suite's, quick 10, full 60)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="runs per (instance, solver)")
    add_executor_options(parser)
    parser.add_argument("--threads", type=int, default=1, metavar="T",
                        help="threads each solver may use (default 1)")
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default bench-out/<suite>)")
    parser.add_argument("--manifest", default=None, metavar="FILE",
                        help="MANIFEST with best-known bounds (default instances/MANIFEST)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in DIR/results.jsonl that match this run; do the rest")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--quiet", action="store_true", help="do not print the result table")
    parser.add_argument("--title", default=None, help="title of the Markdown report")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rewrite DIR/report.md and the plots from DIR/results.jsonl")


def parse_solvers(text: str | None) -> list[str]:
    """Comma-separated names -> list (default: every available solver). Unknown -> error."""
    available = solver_names()
    if text is None:
        return available
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise UnknownSolverError(f"`--solvers` is empty; available: {', '.join(available)}")
    for n in names:
        if n not in available:
            raise UnknownSolverError(f"`--solvers`: unknown solver {n!r}; available: {', '.join(available)}")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UnknownSolverError(f"`--solvers`: {dup!r} is listed twice")
    return names


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cpus} CPUs available, {platform.system()} {platform.release()}"


def _versions() -> str:
    return package_versions(("falcon-milp", "numpy", "highspy", "pyomo"))


def _task_match(rec: dict[str, Any], task: Task) -> bool:
    opts = rec.get("options") or {}
    return (rec.get("instance") == task.entry.name and rec.get("solver") == task.solver
            and rec.get("repeat") == task.key[2] and opts.get("time_limit") == task.time_limit
            and opts.get("threads") == task.threads)


def _resume(path: Path, tasks: list[Task]) -> tuple[list[dict[str, Any]], list[Task]]:
    """Records of ``path`` that match a task (their key renumbered), and the tasks left."""
    if not path.exists():
        return [], tasks
    by_id = {(t.entry.name, t.solver, t.key[2]): t for t in tasks}
    kept: dict[tuple, dict[str, Any]] = {}
    for rec in iter_records(path):
        task = by_id.get((rec.get("instance"), rec.get("solver"), rec.get("repeat")))
        if task is not None and _task_match(rec, task):
            rec["key"] = list(task.key)
            kept[(task.entry.name, task.solver, task.key[2])] = rec
    left = [t for t in tasks if (t.entry.name, t.solver, t.key[2]) not in kept]
    return list(kept.values()), left


def _progress(total: int):
    from tqdm import tqdm
    return tqdm(total=total, file=sys.stderr, unit="run", dynamic_ncols=True, disable=None,
                desc="bench")


def write_outputs(out: Path, records: list[dict[str, Any]], meta: dict[str, Any], plots: bool) -> Path:
    """report.md (+ plots) and run.json for the records given; returns the report path."""
    rows, _ = build_rows(records)
    plot_list: list[tuple[str, str]] = []
    if plots and rows:
        from .plots import write_plots
        plot_list = write_plots(rows, out)
    (out / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    report = out / REPORT_FILE
    report.write_text(markdown_report(records, meta, plot_list))
    return report


def _summary_text(records: list[dict[str, Any]], solvers: Sequence[str]) -> str:
    rows, _ = build_rows(records)
    lines = ["", "largest gap to best known per solver:"]
    for s in solver_summaries(rows, solvers):
        if s.worst_gap is None:
            what = "no gap (" + ", ".join(f"{v} {k}" for k, v in s.counts.items() if v) + ")"
        elif s.worst_gap == 0:
            what = "0 (every feasible result matches the best known)"
        else:
            what = f"{fmt_gap(s.worst_gap)} on {s.worst_instance}"
        lines.append(f"  {s.solver:<18} {what}; total solve time {fmt_time(s.total_time)} s")
    return "\n".join(lines)


def _report_only(args: argparse.Namespace) -> int:
    """Re-render report.md, the plots and the table from an existing output folder."""
    if not args.out:
        raise SolverOptionError("`--report-only` needs `--out DIR` (the folder holding results.jsonl)")
    out = Path(args.out)
    records = ordered(iter_records(out / RESULTS_FILE))
    meta_path = out / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if args.title:
        meta["title"] = args.title
    report = write_outputs(out, records, meta, plots=not args.no_plots)
    if not args.quiet:
        rows, _ = build_rows(records)
        print(text_table(rows))
        print(_summary_text(records, meta.get("solvers") or sorted({r["solver"] for r in records})))
    print(f"\nreport {report} rewritten from {len(records)} records")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..io import check_writable_dir
    check_writable_dir(args.out or "bench-out", "--out")     # before any work
    if args.report_only:
        return _report_only(args)
    repeat = integer(args.repeat, "--repeat", 1, SolverOptionError)
    executor = executor_from_args(args)
    threads = integer(args.threads, "--threads", 1, SolverOptionError)
    real(args.time_limit, "--time-limit", strict=True, unit="seconds", error=SolverOptionError, optional=True)
    solvers = parse_solvers(args.solvers)
    suite: Suite = resolve_suite(args.suite, manifest_path=args.manifest)
    if not suite.entries:
        raise SolverOptionError(f"suite {suite.name!r} holds no instances")
    time_limit = args.time_limit if args.time_limit is not None else suite.time_limit
    out = Path(args.out) if args.out else Path("bench-out") / suite.name.replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    run_id = _dt.datetime.now().strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    tasks = make_tasks(suite, solvers, time_limit=time_limit, repeat=repeat, threads=threads, run_id=run_id)
    results = out / RESULTS_FILE
    done: list[dict[str, Any]] = []
    if args.resume:
        done, tasks = _resume(results, tasks)
    notes = list(suite.notes)
    missing = check_synthetic_available(suite)
    if missing:
        notes.append(f"{len(missing)} synthetic instances cannot be generated here "
                     "(falcon_milp.synthetic missing); their runs are recorded as errors")
    meta: dict[str, Any] = {
        "command": "falcon-milp bench " + " ".join(shlex.quote(a) for a in _argv_of(args)),
        "title": args.title, "suite": suite.name, "solvers": solvers, "time_limit": time_limit,
        "size_limits": {k: v.to_json() for k, v in suite.size_limits.items()}, "repeat": repeat, "jobs": executor.workers, "executor": executor.kind,
        "scheduler": executor.scheduler, "threads": threads,
        "n_tasks": len(tasks) + len(done), "run_id": run_id, "machine": _machine(),
        "versions": _versions(), "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "notes": notes, "resumed_records": len(done),
    }
    records = list(done)
    interrupted = False
    t0 = time.perf_counter()
    with RecordWriter(results, truncate=True) as writer:
        for rec in ordered(done):
            writer.write(rec)
        bar = _progress(len(tasks))

        def on_record(rec: dict[str, Any]) -> None:
            writer.write(rec)
            records.append(rec)
            if meta.get("mem_method") is None and rec.get("mem_method"):
                meta["mem_method"] = rec["mem_method"]
            bar.set_postfix_str(f"{rec['instance'][-40:]} {rec['solver']}", refresh=False)
            bar.update(1)
        try:
            run_tasks(tasks, on_record=on_record, executor=executor,
                      on_start=lambda what: meta.update(executor_detail=what))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
    meta["wall_s"] = time.perf_counter() - t0
    meta["interrupted"] = interrupted
    meta["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    report = write_outputs(out, ordered(records), meta, plots=not args.no_plots)
    if not args.quiet:
        rows, _ = build_rows(records)
        print(text_table(rows))
        print(_summary_text(records, solvers))
    print(f"\n{len(records)} records in {results}; report {report} "
          f"({meta['wall_s']:.1f} s{', interrupted' if interrupted else ''})")
    if interrupted:
        raise KeyboardInterrupt
    bad = [r for r in records if r["checks"] or r["status"] == "error"]
    if bad:
        print(f"{len(bad)} runs failed a check or crashed: see {report}", file=sys.stderr)
        return 1
    return 0


def _argv_of(args: argparse.Namespace) -> list[str]:
    """Rebuild the command line from the parsed options (for the report header)."""
    out = ["--suite", *args.suite]
    if args.solvers:
        out += ["--solvers", args.solvers]
    if args.time_limit is not None:
        out += ["--time-limit", f"{args.time_limit:g}"]
    for flag, val, default in (("--repeat", args.repeat, 1), ("--jobs", args.jobs, None),
                               ("--threads", args.threads, 1)):
        if val != default:
            out += [flag, str(val)]
    if args.executor:
        out += ["--executor", args.executor]
    if args.scheduler:
        out += ["--scheduler", args.scheduler]
    if args.out:
        out += ["--out", args.out]
    if args.manifest:
        out += ["--manifest", args.manifest]
    return out

"""Benchmark harness: instance suites, runs with checks, JSONL records, Markdown report, plots.

Entry point: ``falcon-milp bench`` (:mod:`falcon_milp.bench.bench_command`). Library use::

    from falcon_milp.bench import resolve_suite, make_tasks, run_tasks
    suite = resolve_suite(["quick"])
    records = run_tasks(make_tasks(suite, ["ratio-greedy"], time_limit=10))
"""
from .harness import Task, check_result, make_tasks, run_task, run_tasks
from .records import RecordWriter, read_records
from .report import GAP_DEFINITIONS, build_rows, markdown_report
from .suite import BestKnown, Suite, SuiteEntry, named_suite, read_manifest, resolve_suite

__all__ = ["BestKnown", "GAP_DEFINITIONS", "RecordWriter", "Suite", "SuiteEntry", "Task",
           "build_rows", "check_result", "make_tasks", "markdown_report", "named_suite",
           "read_manifest", "read_records", "resolve_suite", "run_task", "run_tasks"]

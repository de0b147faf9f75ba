"""Bench and sweep on Dask with a real LocalCluster (2 worker processes x 1 thread): records as
a serial run, worker deaths retried with no record lost or written twice, failed runs recorded,
Ctrl-C keeps what was written."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

from dask_helpers import always_kill, run_task_killing_once  # noqa: E402

from falcon_milp.bench.harness import make_tasks, run_task  # noqa: E402
from falcon_milp.bench.records import RecordWriter, identity, ordered, read_records  # noqa: E402
from falcon_milp.bench.suite import resolve_suite  # noqa: E402
from falcon_milp.cli import main  # noqa: E402
from falcon_milp.executors import ExecutorConfig, execute  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "instances" / "tiny"


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes x 1 thread, shared by the tests of this module."""
    import logging
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=logging.ERROR) as c:
        yield c


def _bench(out: Path, *extra: str) -> int:
    return main(["bench", "--out", str(out), "--quiet", "--no-plots", *extra])


@pytest.mark.slow
def test_quick_suite_on_dask_matches_serial_record_for_record(tmp_path: Path) -> None:
    """The `Done when` test: every record of the quick suite (objectives, bounds, statuses, masks,
    checks: all but timings) is the same on --executor dask (a LocalCluster it starts) as serial."""
    assert _bench(tmp_path / "serial", "--suite", "quick", "--executor", "local") == 0
    assert _bench(tmp_path / "dask", "--suite", "quick", "--executor", "dask", "--jobs", "2") == 0
    serial = ordered(read_records(tmp_path / "serial" / "results.jsonl"))
    dask = read_records(tmp_path / "dask" / "results.jsonl")
    assert len(dask) == len(serial) == len({tuple(r["key"]) for r in dask})
    assert [identity(r) for r in ordered(dask)] == [identity(r) for r in serial]
    for a, b in zip(serial, ordered(dask)):
        assert (a["objective"], a["bound"], a["status"]) == (b["objective"], b["bound"], b["status"])
    assert {r["worker_pid"] for r in dask} - {os.getpid()}, "the dask run used other processes"
    meta = json.loads((tmp_path / "dask" / "run.json").read_text())
    assert meta["executor"] == "dask" and "LocalCluster, 2 worker processes" in meta["executor_detail"]
    assert "- executor: dask (LocalCluster" in (tmp_path / "dask" / "report.md").read_text()


def test_bench_on_a_scheduler_address(tmp_path: Path, cluster) -> None:
    tiny = [str(TINY / f"{n}.npz") for n in ("both-binding", "flops-binding", "p16")]
    assert _bench(tmp_path / "a", "--suite", *tiny, "--solvers", "magnitude,fast,exact") == 0
    assert _bench(tmp_path / "b", "--suite", *tiny, "--solvers", "magnitude,fast,exact",
                  "--scheduler", cluster.scheduler_address) == 0
    a, b = (ordered(read_records(tmp_path / d / "results.jsonl")) for d in "ab")
    assert [identity(r) for r in a] == [identity(r) for r in b] and len(b) == 9


def test_killed_worker_is_retried_and_no_record_is_lost_or_doubled(tmp_path: Path, cluster) -> None:
    suite = resolve_suite([str(TINY)])
    tasks = make_tasks(suite, ["ratio-greedy", "fast"], time_limit=10)
    marker = tmp_path / "killed"
    victim = tasks[len(tasks) // 2].key
    items = [(str(marker), victim, t) for t in tasks]
    out = tmp_path / "results.jsonl"
    with RecordWriter(out) as writer:
        n = execute(run_task_killing_once, items, ExecutorConfig("dask", scheduler=cluster.scheduler_address),
                    writer.write)
    assert marker.exists(), "the task did not kill its worker"
    recs = read_records(out)
    assert n == len(recs) == len(tasks)
    assert sorted(tuple(r["key"]) for r in recs) == sorted(t.key for t in tasks)   # each once
    redone = next(r for r in recs if tuple(r["key"]) == victim)
    assert redone["worker_pid"] != int(marker.read_text()) and redone["checks"] == []
    assert [identity(r) for r in ordered(recs)] == [identity(run_task(t)) for t in tasks]


def test_a_task_whose_worker_always_dies_gives_one_error_record(tmp_path: Path) -> None:
    import dask
    tasks = make_tasks(resolve_suite([str(TINY / "p16.npz")]), ["fast"], time_limit=10)
    got = []
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        from falcon_milp.bench.harness import lost_record
        execute(always_kill, [(None, None, t) for t in tasks], ExecutorConfig("dask", workers=1),
                got.append, on_lost=lambda item, msg: lost_record(item[2], msg))
    assert len(got) == 1 and got[0]["status"] == "error"
    assert got[0]["reason"].startswith("no result: its worker died on every try (dask KilledWorker")
    assert "\n" not in got[0]["reason"]


def _same(a, b) -> bool:
    """Equal structures; floats equal to a relative 1e-9."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.slow
def test_sweep_on_dask_matches_local_and_records_failed_runs(tmp_path: Path, cluster) -> None:
    torch = pytest.importorskip("torch")
    from falcon_milp.torch.architectures import build_model
    torch.save(build_model("mnist_cnn").state_dict(), tmp_path / "cnn.pt")
    cfg = tmp_path / "sweep.toml"
    cfg.write_text('n_test = 500\n[[model]]\narch = "mnist_mlp"\n'
                   '[[model]]\narch = "mnist_mlp"\nname = "wrong"\ncheckpoint = "cnn.pt"\n'
                   '[grid]\nmethod = ["magnitude", "falcon"]\nflops_fraction = 0.3\nn_grads = 64\nmax_iter = 3\n')
    args = [str(cfg), "--quiet", "--no-plot"]
    assert main(["sweep", *args, "--out", str(tmp_path / "local")]) == 1      # 1: a run failed
    assert main(["sweep", *args, "--out", str(tmp_path / "dask"), "--scheduler", cluster.scheduler_address]) == 1
    timing = ("sweep_id", "wall_s", "load_s", "times", "peak_mem_bytes", "mem_method", "worker_pid", "host")
    recs = {}
    for name in ("local", "dask"):
        lines = (tmp_path / name / "results.jsonl").read_text().splitlines()
        recs[name] = sorted((json.loads(l) for l in lines), key=lambda r: r["key"])
        assert len(lines) == 4
    strip = lambda r: {k: v for k, v in r.items() if k not in timing}
    # the same records, floats to 1e-9: a worker process may run BLAS/torch with another
    # thread count, which changes the summation order (seen: 1 ulp in objective_after)
    assert _same(strip_all := [strip(r) for r in recs["local"]], [strip(r) for r in recs["dask"]]), strip_all
    ok = [r for r in recs["dask"] if r["status"] == "ok"]
    failed = [r for r in recs["dask"] if r["status"] == "failed"]
    assert len(ok) == 2 and all(r["test_accuracy"] > 0.5 and r["worker_pid"] != os.getpid() for r in ok)
    assert len(failed) == 2 and all(r["model"]["name"] == "wrong" for r in failed)
    assert all(r["error"].startswith("checkpoint ") and "does not match MNISTMLP" in r["error"]
               and "\n" not in r["error"] for r in failed)
    assert "## Failed runs" in (tmp_path / "dask" / "summary.md").read_text()


@pytest.mark.slow
def test_ctrl_c_cancels_the_cluster_and_keeps_the_records(tmp_path: Path) -> None:
    out = tmp_path / "sig"
    cmd = [sys.executable, "-m", "falcon_milp", "bench", "--suite", str(TINY), "--solvers",
           "magnitude,ratio-greedy", "--repeat", "200", "--executor", "dask", "--jobs", "2",
           "--out", str(out), "--quiet", "--no-plots"]

    def own_group():          # Ctrl-C in a terminal: SIGINT to the whole process group
        os.setpgrp()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=own_group)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_text().count("\n") >= 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert err.strip() == "falcon-milp bench: interrupted", err      # one line, no dask chatter
    recs = read_records(results)
    assert results.read_text().endswith("\n") and 20 <= len(recs) < 200 * 2 * len(list(TINY.glob("*.npz")))
    assert len({(tuple(r["key"])) for r in recs}) == len(recs) and all(r["checks"] == [] for r in recs)
    assert json.loads((out / "run.json").read_text())["interrupted"] is True

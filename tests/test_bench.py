"""Benchmark harness: serial == parallel, JSONL records, interruption, CLI errors, checks."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from falcon_milp import PruningInstance, save_instance
from falcon_milp.bench import harness
from falcon_milp.bench.records import FIELDS, identity, ordered, read_records
from falcon_milp.bench.suite import BestKnown, SizeLimit, SuiteEntry
from falcon_milp.cli import main
from falcon_milp.result import SolveResult
from falcon_milp.solvers import registry, solver_names

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "instances" / "tiny"
SOME_TINY = [str(TINY / f"{n}.npz") for n in
             ("both-binding", "flops-binding", "fractional-costs", "extra-resource", "ratio-trap",
              "zero-budget", "free-layer-ties", "p16")]


def _bench(tmp_path: Path, *extra: str, out: str = "out") -> tuple[int, Path]:
    out_dir = tmp_path / out
    rc = main(["bench", "--out", str(out_dir), "--quiet", "--no-plots", *extra])
    return rc, out_dir


# ----------------------------------------------------------------------------- serial vs parallel
def test_jobs_1_and_2_give_identical_records(tmp_path: Path) -> None:
    rc1, out1 = _bench(tmp_path, "--suite", str(TINY), "--jobs", "1", out="serial")
    rc2, out2 = _bench(tmp_path, "--suite", str(TINY), "--jobs", "2", out="parallel")
    assert rc1 == 0 and rc2 == 0
    r1, r2 = read_records(out1 / "results.jsonl"), read_records(out2 / "results.jsonl")
    n_files = len(list(TINY.glob("*.npz")))
    assert len(r1) == len(r2) == n_files * len(solver_names())
    a = [identity(r) for r in ordered(r1)]
    b = [identity(r) for r in ordered(r2)]
    assert a == b
    # the parallel run really used other processes
    assert {r["worker_pid"] for r in r2} - {os.getpid()}
    # the reports list the same rows in the same order
    rep1 = (out1 / "report.md").read_text().split("## Definitions")[1]
    rep2 = (out2 / "report.md").read_text().split("## Definitions")[1]
    strip = lambda text: [l for l in text.splitlines() if "Runtime" not in l and "MiB" not in l]
    assert [l.split("|")[1:3] for l in strip(rep1) if l.startswith("| `tiny/")] == \
           [l.split("|")[1:3] for l in strip(rep2) if l.startswith("| `tiny/")]


# ----------------------------------------------------------------------------- records
def test_jsonl_records_are_complete_and_checked(tmp_path: Path) -> None:
    rc, out = _bench(tmp_path, "--suite", *SOME_TINY, "--solvers", "magnitude,ratio-greedy",
                     "--repeat", "2")
    assert rc == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(SOME_TINY) * 2 * 2
    keys = set()
    for line in lines:
        rec = json.loads(line)
        assert set(FIELDS) <= set(rec)
        keys.add(tuple(rec["key"]))
        assert rec["checks"] == []
        assert rec["instance"].startswith("tiny/")
        assert rec["mem_method"] in ("vmhwm-reset", "ru_maxrss-delta")
        assert rec["peak_mem_bytes"] >= 0 and rec["runtime_s"] >= 0
        assert rec["best_optimal"] is True
        if rec["status"] == "infeasible":
            assert rec["solver"] == "magnitude" and rec["flop_aware"] is False
            assert rec["violation"] and all(v > 0 for v in rec["violation"].values())
            assert rec["gap_to_best"] is None
        else:
            assert rec["status"] in ("feasible", "optimal")
            # gap to the proven optimum, recomputed here from the definition
            expect = (rec["best_upper"] - rec["objective"]) / max(abs(rec["best_upper"]), 1e-12)
            assert rec["gap_to_best"] == pytest.approx(expect if abs(expect) > 1e-9 else 0.0, abs=1e-12)
    assert len(keys) == len(lines)
    meta = json.loads((out / "run.json").read_text())
    assert meta["interrupted"] is False and meta["n_tasks"] == len(lines)
    report = (out / "report.md").read_text()
    assert "gap to best known** = (U - objective) / max(|U|, 1e-12)" in report
    assert "All 16 (instance, solver) results passed every check." in report


def test_report_and_plots_written(tmp_path: Path) -> None:
    out = tmp_path / "withplots"
    rc = main(["bench", "--suite", *SOME_TINY[:3], "--solvers", "magnitude,ratio-greedy",
               "--out", str(out), "--quiet"])
    assert rc == 0
    for name in ("report.md", "run.json", "results.jsonl", "gap_by_family.png", "time_vs_size.png"):
        assert (out / name).stat().st_size > 0, name
    assert "![" in (out / "report.md").read_text()
    (out / "report.md").unlink()
    (out / "time_vs_size.png").unlink()
    assert main(["bench", "--report-only", "--out", str(out), "--quiet", "--title", "Again"]) == 0
    text = (out / "report.md").read_text()
    assert text.startswith("# Again") and "All 6 (instance, solver) results passed every check." in text
    assert (out / "time_vs_size.png").stat().st_size > 0


def test_report_only_needs_out(capsys) -> None:
    assert main(["bench", "--report-only"]) == 2
    assert "`--report-only` needs `--out DIR`" in capsys.readouterr().err


def test_stdout_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["bench", "--suite", SOME_TINY[0], "--solvers", "ratio-greedy", "--out",
               str(tmp_path / "o"), "--no-plots"])
    assert rc == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:5] == ["instance", "solver", "status", "objective", "bound"]
    assert "tiny/both-binding" in out and "ratio-greedy" in out


# ----------------------------------------------------------------------------- interruption
def test_interrupted_run_keeps_written_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_solve = harness.solve

    def flaky_solve(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_solve(*args, **kwargs)

    monkeypatch.setattr(harness, "solve", flaky_solve)
    rc, out = _bench(tmp_path, "--suite", *SOME_TINY, "--solvers", "magnitude,ratio-greedy")
    assert rc == 130
    recs = read_records(out / "results.jsonl")
    assert len(recs) == 5     # the four finished runs and the one Ctrl-C stopped
    assert [r["key"] for r in recs] == [[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 1, 0], [2, 0, 0]]
    assert [r["status"] for r in recs][-1] == "interrupted"   # never a solver outcome
    assert all(r["status"] != "interrupted" for r in recs[:4])
    meta = json.loads((out / "run.json").read_text())
    assert meta["interrupted"] is True
    assert "of 16 planned (**interrupted**" in (out / "report.md").read_text()


def test_sigint_to_a_parallel_run_keeps_valid_records(tmp_path: Path) -> None:
    out = tmp_path / "sig"
    cmd = [sys.executable, "-m", "falcon_milp", "bench", "--suite", *SOME_TINY, "--solvers",
           "magnitude,ratio-greedy", "--repeat", "400", "--jobs", "2", "--out", str(out), "--quiet",
           "--no-plots"]
    # SIGINT handled as in a terminal even when the suite itself runs as a background job
    # (which starts with SIGINT ignored, and a child would inherit that)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    results = out / "results.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if results.exists() and results.read_text().count("\n") >= 20:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    text = results.read_text()
    assert text.endswith("\n")
    recs = read_records(results)
    assert 20 <= len(recs) < len(SOME_TINY) * 2 * 400
    assert all(r["checks"] == [] for r in recs)
    assert json.loads((out / "run.json").read_text())["interrupted"] is True


def test_resume_reuses_matching_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out = _bench(tmp_path, "--suite", *SOME_TINY[:3], "--solvers", "magnitude,ratio-greedy")
    assert rc == 0
    first = read_records(out / "results.jsonl")

    def must_not_run(*a, **k):
        raise AssertionError("resume re-ran a finished task")
    monkeypatch.setattr(harness, "solve", must_not_run)
    rc = main(["bench", "--suite", *SOME_TINY[:3], "--solvers", "magnitude,ratio-greedy",
               "--out", str(out), "--resume", "--quiet", "--no-plots"])
    assert rc == 0
    again = read_records(out / "results.jsonl")
    assert [identity(r) for r in ordered(again)] == [identity(r) for r in ordered(first)]


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    rc, out = _bench(tmp_path, "--suite", SOME_TINY[0], "--solvers", "magnitude,ratio-greedy")
    assert rc == 0
    path = out / "results.jsonl"
    path.write_text(path.read_text() + '{"schema": 1, "instance": "tin')
    assert len(read_records(path)) == 2


# ----------------------------------------------------------------------------- CLI errors
@pytest.mark.parametrize("args, message", [
    (["--solvers", "nope"], r"`--solvers`: unknown solver 'nope'; available: "),
    (["--solvers", ","], r"`--solvers` is empty"),
    (["--solvers", "magnitude,magnitude"], r"'magnitude' is listed twice"),
    (["--jobs", "0"], r"`--jobs` must be an integer >= 1; got 0"),
    (["--repeat", "-2"], r"`--repeat` must be an integer >= 1; got -2"),
    (["--threads", "0"], r"`--threads` must be an integer >= 1; got 0"),
    (["--time-limit", "-1"], r"`--time-limit` must be a finite number of seconds > 0; got -1.0"),
    (["--time-limit", "inf"], r"`--time-limit` must be a finite number of seconds > 0; got inf"),
])
def test_bad_options_give_one_line_and_exit_2(tmp_path, capsys, args, message) -> None:
    rc = main(["bench", "--suite", SOME_TINY[0], "--out", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1
    import re
    assert re.search(message, err), err


@pytest.mark.parametrize("suite, message", [
    (["no/such/file.npz"], r"`--suite` path 'no/such/file.npz' does not exist"),
    (["synthetic:vgg16:nnz0.3:flops0.2:seed0"], r"architecture must be one of resnet20"),
    (["synthetic:resnet20:nnz1.5:flops0.2:seed0"], r"nnz fraction must be in \[0, 1\]; got 1.5"),
    (["synthetic:resnet20"], r"is not a synthetic name; expected synthetic:<arch>"),
    (["quick", str(TINY)], r"`--suite` 'quick' is a named suite; it cannot be mixed with paths"),
])
def test_bad_suite_gives_one_line_and_exit_2(tmp_path, capsys, suite, message) -> None:
    rc = main(["bench", "--suite", *suite, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    import re
    assert re.search(message, err), err


def test_bad_suite_files_give_one_line_and_exit_2(tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    for suite, message in ((str(tmp_path / "empty"), "holds no .npz instance files"),
                           (str(tmp_path / "notes.txt"), "is not an .npz instance file")):
        rc = main(["bench", "--suite", suite, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_argparse_errors_exit_2(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--jobs", "two"])
    assert exc.value.code == 2
    assert "invalid int value: 'two'" in capsys.readouterr().err


def test_bad_manifest_line(tmp_path, capsys) -> None:
    bad = tmp_path / "MANIFEST"
    bad.write_text('{"schema": 1, "name": "x"}\n')
    rc = main(["bench", "--suite", SOME_TINY[0], "--manifest", str(bad), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "line 1: `family` must be a str" in err


# ----------------------------------------------------------------------------- records of failures
def _tiny_entry(tmp_path: Path, best: BestKnown | None = None) -> SuiteEntry:
    inst = PruningInstance.from_groups([np.array([5.0, 4.0, 3.0]), np.array([3.0, 2.5, 1.0])], [4, 1],
                                       max_nnz=6, max_flops=9)
    path = save_instance(inst, tmp_path / "t.npz")
    return SuiteEntry("user/t", "user", str(path), best)


def _task(entry: SuiteEntry, solver: str, size_limit: SizeLimit | None = None) -> harness.Task:
    return harness.Task((0, 0, 0), entry, solver, 5.0, 1, size_limit, "test", "r")


def test_skipped_and_error_runs_are_recorded(tmp_path, monkeypatch) -> None:
    entry = _tiny_entry(tmp_path)
    rec = harness.run_task(_task(entry, "ratio-greedy", size_limit=SizeLimit(3)))
    assert rec["status"] == "skipped"
    assert rec["reason"] == "suite 'test' gives 'ratio-greedy' instances of at most 3 weights; this one has 6"
    rec = harness.run_task(_task(entry, "ratio-greedy", size_limit=SizeLimit(100, 1)))
    assert rec["reason"] == "suite 'test' gives 'ratio-greedy' instances of at most 1 groups; this one has 2"
    spec = registry.REGISTRY["ratio-greedy"]
    monkeypatch.setitem(registry.REGISTRY, "ratio-greedy", dataclasses.replace(spec, max_weights=2))
    rec = harness.run_task(_task(entry, "ratio-greedy"))
    assert rec["status"] == "skipped" and "takes at most 2 weights; this instance has 6" in rec["reason"]
    monkeypatch.setitem(registry.REGISTRY, "ratio-greedy", spec)

    def boom(instance, **kw):
        raise RuntimeError("boom\nsecond line")
    monkeypatch.setattr("falcon_milp.solvers.greedy.solve_ratio_greedy", boom)
    rec = harness.run_task(_task(entry, "ratio-greedy"))
    assert rec["status"] == "error" and rec["reason"] == "RuntimeError: boom"

    def nothing(instance, **kw):
        return registry.RawSolution(None, 20.0, "time_limit")
    monkeypatch.setattr("falcon_milp.solvers.greedy.solve_ratio_greedy", nothing)
    rec = harness.run_task(_task(entry, "ratio-greedy"))
    assert rec["status"] == "no_solution" and rec["reason"] == "no feasible mask within the time limit"
    assert rec["bound"] == 20.0 and rec["objective"] is None


def test_unloadable_instance_is_an_error_record(tmp_path) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not a zip")
    rec = harness.run_task(_task(SuiteEntry("user/broken", "user", str(path)), "magnitude"))
    assert rec["status"] == "error" and rec["reason"].startswith("could not load the instance:")


def test_crash_gives_exit_code_1(tmp_path, monkeypatch) -> None:
    def boom(instance, **kw):
        raise ValueError("bad")
    monkeypatch.setattr("falcon_milp.solvers.greedy.solve_ratio_greedy", boom)
    rc, out = _bench(tmp_path, "--suite", SOME_TINY[0], "--solvers", "ratio-greedy")
    assert rc == 1
    assert read_records(out / "results.jsonl")[0]["reason"] == "ValueError: bad"


# ----------------------------------------------------------------------------- the checks themselves
def _result(inst: PruningInstance, kept: list[int], objective: float, bound: float, status: str) -> SolveResult:
    mask = np.zeros(inst.n_weights, dtype=bool)
    mask[kept] = True
    return SolveResult(mask, objective, bound, 0.0, status, "heuristic", 0.0, "x")


def test_check_result_catches_each_kind_of_wrong_answer() -> None:
    inst = PruningInstance.from_groups([np.array([5.0, 4.0, 3.0]), np.array([3.0, 2.5, 1.0])], [4, 1],
                                       max_nnz=6, max_flops=9)  # optimum 12: {5, 4} + {3}, flops 9
    best = BestKnown(12.0, 12.0)
    ok = _result(inst, [0, 3, 4, 5], 11.5, 12.0, "feasible")
    assert harness.check_result(inst, ok, True, best) == []
    over = _result(inst, [0, 1, 2], 12.0, 20.0, "feasible")  # flops 12 > 9
    fails = harness.check_result(inst, over, True, best)
    assert any("FLOP-aware solver returned an infeasible mask" in f for f in fails)
    assert any("status feasible but the mask breaks flops" in f for f in fails)
    assert harness.check_result(inst, dataclasses.replace(over, status="infeasible"), False, best) == []
    wrong_obj = _result(inst, [0, 3, 4, 5], 11.6, 12.0, "feasible")
    assert any("differs from the recomputed 11.5" in f for f in harness.check_result(inst, wrong_obj, True, best))
    low_bound = _result(inst, [0, 3, 4, 5], 11.5, 11.7, "feasible")
    assert any("bound 11.7 is below the best-known lower bound 12.0" in f
               for f in harness.check_result(inst, low_bound, True, best))
    above_own = _result(inst, [0, 3, 4, 5], 11.5, 11.0, "feasible")
    assert any("exceeds the solver's bound 11.0" in f for f in harness.check_result(inst, above_own, True, None))
    fake_opt = _result(inst, [0, 3, 4, 5], 11.5, 11.5, "optimal")
    assert any("claimed optimal but 11.5 is below" in f for f in harness.check_result(inst, fake_opt, True, best))
    beyond = _result(inst, [0, 3, 4, 5], 11.5, 12.0, "feasible")
    assert any("exceeds the best-known upper bound 11.0" in f
               for f in harness.check_result(inst, beyond, True, BestKnown(10.0, 11.0)))


def test_gaps_to_best_definition() -> None:
    assert harness.gaps_to_best(9.0, BestKnown(10.0, 10.0)) == (pytest.approx(0.1), pytest.approx(0.1))
    up, lo = harness.gaps_to_best(9.0, BestKnown(9.5, 12.0))
    assert up == pytest.approx(0.25) and lo == pytest.approx(0.5 / 9.5)
    assert harness.gaps_to_best(0.0, BestKnown(0.0, 0.0)) == (0.0, 0.0)
    assert harness.gaps_to_best(10.0 * (1 - 1e-12), BestKnown(10.0, 10.0)) == (0.0, 0.0)
    assert harness.gaps_to_best(1.0, None) == (None, None)
    # the certified gap to U is never below the true gap to the optimum (here 10)
    true_gap = (10.0 - 7.0) / 10.0
    up, lo = harness.gaps_to_best(7.0, BestKnown(9.0, 11.0))
    assert lo <= true_gap <= up and math.isfinite(up)


def test_stale_manifest_digest_is_flagged(tmp_path) -> None:
    entry = dataclasses.replace(_tiny_entry(tmp_path, BestKnown(12.0, 12.0)), digest="0" * 16)
    rec = harness.run_task(_task(entry, "ratio-greedy"))
    assert rec["best_upper"] is None and rec["gap_to_best"] is None
    assert any("differs from the MANIFEST's 0000000000000000" in c for c in rec["checks"])


def test_quick_suite_end_to_end_with_exact(tmp_path: Path) -> None:
    """Every quick instance (tiny, small, real, synthetic) runs; `exact` reaches every MANIFEST optimum."""
    rc, out = _bench(tmp_path, "--suite", "quick", "--solvers", "exact,magnitude")
    assert rc == 0
    recs = read_records(out / "results.jsonl")
    families = {r["family"].split("/")[0] for r in recs}
    assert {"tiny", "small", "real", "synthetic"} <= families
    for r in recs:
        what = {k: r[k] for k in ("instance", "solver", "status", "objective", "bound", "best_lower",
                                  "best_upper", "gap_to_best", "checks", "reason")}
        assert r["checks"] == [] and r["best_optimal"] is True, what
        if r["solver"] == "exact":
            assert r["status"] == "optimal" and r["gap_to_best"] == 0.0, what
        else:
            assert r["status"] in ("infeasible", "optimal", "feasible")

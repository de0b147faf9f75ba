"""Hard time limits: HiGHS in a killable child process, Ctrl-C, LP without a point, exact's limits."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from falcon_milp import solve
from falcon_milp.result import check_mask
from falcon_milp.solvers import highs, isolated
from falcon_milp.synthetic import random_layered


def _sleeper(seconds: float, report=None) -> str:
    report("half-way")
    time.sleep(seconds)
    return "finished"


def _raiser(report=None) -> None:
    raise ValueError("bad thing in the child")


def test_child_killed_at_the_deadline_returns_the_last_partial_result() -> None:
    t = time.perf_counter()
    got = isolated.run_isolated(_sleeper, (60.0,), time.perf_counter() + 0.5)
    assert got.killed and got.value is None and got.partial == "half-way"
    assert time.perf_counter() - t < 10          # generous: never the 60 s the child wanted


def test_child_that_finishes_returns_its_value() -> None:
    got = isolated.run_isolated(_sleeper, (0.0,), None)
    assert not got.killed and got.value == "finished" and got.partial == "half-way"


def test_child_exception_comes_back_with_its_type() -> None:
    with pytest.raises(ValueError, match="bad thing in the child"):
        isolated.run_isolated(_raiser, (), None)


def test_ctrl_c_in_the_parent_kills_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_poll = type(isolated.mp.get_context("fork").Pipe(duplex=False)[0]).poll

    def poll(self, timeout=0.0):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_poll(self, timeout)

    conn_type = type(isolated.mp.get_context("fork").Pipe(duplex=False)[0])
    monkeypatch.setattr(conn_type, "poll", poll)
    t = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        isolated.run_isolated(_sleeper, (60.0,), None)
    assert time.perf_counter() - t < 10


def test_highs_after_an_in_process_run_still_works_in_a_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """A parent that ran HiGHS itself leaves a thread pool without threads in every fork: the
    child rebuilds it (this hung until the deadline before)."""
    inst = random_layered(2000, 5, seed=0)
    monkeypatch.setattr(highs, "ISOLATE", False)
    here = solve(inst, "highs-ilp", backend="highspy")
    monkeypatch.setattr(highs, "ISOLATE", True)
    for backend in ("highspy", "pyomo"):
        r = solve(inst, "highs-ilp", backend=backend, time_limit=60)
        assert not r.extra.get("killed") and r.status == "optimal"
        assert r.objective == pytest.approx(here.objective, rel=1e-12)


def test_killed_highs_reports_time_limit_and_a_checked_incumbent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the kill (HiGHS told it has an hour, killed after 1 s): what comes back is honest."""
    inst = random_layered(200_000, 40, seed=1, nnz_fraction=0.3, flops_fraction=0.1)
    real = highs._highs_options

    def long_limit(kind, time_limit, rel_gap, threads):
        opts = real(kind, time_limit, rel_gap, threads)
        opts["time_limit"] = 3600.0
        return opts

    monkeypatch.setattr(highs, "_highs_options", long_limit)
    t = time.perf_counter()
    r = solve(inst, "highs-ilp", backend="highspy", time_limit=1.0)
    assert time.perf_counter() - t < 30
    assert r.extra.get("killed") is True and r.termination == "time_limit"
    if r.status == "no_solution":
        assert r.mask.sum() == 0 and math.isinf(r.gap)
    else:       # an incumbent HiGHS reported before the kill, with the bound of that moment
        assert check_mask(inst, r.mask).feasible and r.objective <= r.bound


def test_time_limited_lp_without_a_point_is_no_solution(monkeypatch: pytest.MonkeyPatch) -> None:
    inst = random_layered(4000, 4, seed=2)

    def stopped(spec, backend, opts, model_s, deadline=None):
        run = real(spec, backend, opts, model_s, deadline)
        run.termination = "time_limit"
        run.values = np.full(spec.n_cols, 0.5)      # an interior point: nothing integral
        return run

    real = highs._run
    monkeypatch.setattr(highs, "_run", stopped)
    r = solve(inst, "highs-lp", time_limit=5)
    assert r.status == "no_solution" and r.termination == "time_limit"


def test_exact_node_limit_keeps_a_finished_proof() -> None:
    """A search that ends below ``max_nodes`` is a proof: optimal, not iteration_limit."""
    inst = random_layered(20_000, 8, seed=5, nnz_fraction=0.3, flops_fraction=0.1)
    free = solve(inst, "exact")
    nodes = free.extra.get("nodes")
    if nodes is None:
        pytest.skip("solved at the rounding, no search")
    capped = solve(inst, "exact", max_nodes=nodes + 1)
    assert capped.termination == "optimal" and capped.status == "optimal"
    assert capped.objective == free.objective


def test_ctrl_c_stops_the_cli_inside_a_highs_solve(tmp_path) -> None:
    """SIGINT while HiGHS is inside a long step: exit 130, one line, within seconds."""
    import signal
    import subprocess
    import sys
    from falcon_milp import save_instance
    from falcon_milp.synthetic import arch_instance
    path = tmp_path / "r20.npz"
    save_instance(arch_instance("resnet20", 0.3, 0.2), path)
    proc = subprocess.Popen([sys.executable, "-m", "falcon_milp", "solve", str(path), "--solver", "highs-ilp"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(4.0)                      # imports, loading, model building: HiGHS is running by now
    assert proc.poll() is None, "the solve ended before it could be interrupted"
    t = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.perf_counter() - t < 10
    assert proc.returncode == 130
    assert err.strip() == "falcon-milp solve: interrupted"

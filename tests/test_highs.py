"""HiGHS solvers (highs-ilp, highs-compact, highs-lp) against brute force, each other and their contract."""
import logging
import math
import subprocess
import sys

import highspy  # HiGHS tests must not skip: a missing highspy fails here
import numpy as np
import pytest

from falcon_milp import PruningInstance, SolverOptionError, check_mask, solve
from falcon_milp.result import TERMINATIONS, relative_gap
from falcon_milp.solvers.highs import (TERMINATION_OF_STATUS, lagrangian_bound, solve_compact,
                                       solve_ilp, solve_lp, termination_of)
from falcon_milp.solvers.rounding import repair_mask
from falcon_milp.synthetic import random_layered
from tiny import brute_force, tiny_instances

TINY = tiny_instances()
OPTIMA = {name: brute_force(inst)[0] for name, inst in TINY.items()}
BACKENDS = ("pyomo", "highspy")


def close(a, b):
    return a == pytest.approx(b, rel=1e-9, abs=1e-12)


def random_instance(rng, p, n_layers, costs="integer", extra=False):
    sizes = rng.multinomial(p - n_layers, np.ones(n_layers) / n_layers) + 1
    groups = [rng.standard_normal(n) ** 2 for n in sizes]
    if costs == "integer":
        flops = rng.choice([1.0, 4.0, 16.0, 49.0, 196.0], n_layers)
    else:
        flops = rng.random(n_layers) * 10
    total = float(np.dot(flops, sizes))
    more = {"bytes": (list(rng.integers(1, 5, n_layers).astype(float)), float(rng.uniform(0.2, 0.6) * 3 * p))} \
        if extra else None
    return PruningInstance.from_groups(groups, list(flops), max_nnz=int(rng.uniform(0.2, 0.7) * p),
                                       max_flops=float(rng.uniform(0.1, 0.5) * total), extra_resources=more)


# ----------------------------------------------------------------------------- against brute force
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(TINY))
def test_tiny_instances_agree_with_brute_force(case, backend):
    inst, opt = TINY[case], OPTIMA[case]
    for solver in ("highs-ilp", "highs-compact"):
        r = solve(inst, solver=solver, backend=backend)
        assert r.status == "optimal" and r.termination == "optimal", (solver, r.status, r.extra)
        assert close(r.objective, opt) and close(r.bound, opt), (solver, r.objective, r.bound, opt)
        assert r.extra["backend"] == backend
    r = solve(inst, solver="highs-lp", backend=backend)
    assert check_mask(inst, r.mask).feasible
    assert r.bound >= opt - 1e-9 * max(1.0, opt)
    assert r.objective <= opt + 1e-9 * max(1.0, opt)
    assert r.extra["n_fractional"] <= r.extra["n_rows"]


def test_inexact_row_is_solved_again_exactly():
    inst = TINY["fractional-costs"]      # 3 * 0.1 > 0.3 exactly, but not in doubles
    for solver in ("highs-ilp", "highs-compact"):
        r = solve(inst, solver=solver)
        assert r.extra["exact_resolve"] is True and r.status == "optimal" and close(r.objective, 2.0)


@pytest.mark.parametrize("seed", range(6))
def test_float_costs_agree_with_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    sizes = rng.integers(1, 5, size=3)
    inst = PruningInstance.from_groups([rng.random(n) for n in sizes], list(rng.random(3) * 0.3 + 0.05),
                                       max_nnz=int(sizes.sum()) - 1, max_flops=float(rng.random() * 0.6 + 0.1),
                                       extra_resources={"lat": (list(rng.random(3) / 10), float(rng.random() / 3))})
    opt = brute_force(inst)[0]
    for solver in ("highs-ilp", "highs-compact"):
        r = solve(inst, solver=solver)
        assert r.status == "optimal" and close(r.objective, opt), (solver, r.objective, opt, r.extra)


def test_tiny_importance_scales_are_solved_exactly():
    base = TINY["both-binding"]
    groups = [g * 1e-12 for g in base.importances]
    inst = PruningInstance.from_groups(groups, list(base.flops_per_weight), max_nnz=base.max_nnz,
                                       max_flops=base.max_flops)
    wide = PruningInstance.from_groups([np.array([1.0, 0.5, 1e-15, 2e-15, 3e-16]), np.array([0.7, 1e-14])],
                                       [1.0, 2.0], max_nnz=4, max_flops=5.0)
    for case in (inst, wide):
        opt = brute_force(case)[0]
        for solver in ("highs-ilp", "highs-compact"):
            r = solve(case, solver=solver)
            assert r.status == "optimal" and close(r.objective, opt), (solver, r.objective, opt)


# ----------------------------------------------------------------------------- against each other
@pytest.mark.parametrize("seed,costs,extra", [(0, "integer", False), (1, "integer", True), (2, "float", False),
                                              (3, "float", True), (4, "integer", False), (5, "integer", True)])
def test_compact_equals_ilp_on_a_few_hundred_weights(seed, costs, extra):
    rng = np.random.default_rng(seed)
    inst = random_instance(rng, int(rng.integers(200, 400)), int(rng.integers(3, 8)), costs, extra)
    a = solve(inst, solver="highs-ilp")
    b = solve(inst, solver="highs-compact")
    assert a.status == b.status == "optimal"
    assert close(a.objective, b.objective) and close(a.bound, b.bound)
    lp = solve(inst, solver="highs-lp")
    assert lp.bound >= a.objective - 1e-9 * a.objective
    assert lp.extra["n_fractional"] <= lp.extra["n_rows"]


def test_backends_give_the_same_answer():
    inst = random_instance(np.random.default_rng(9), 300, 5, "integer", True)
    for solver in ("highs-ilp", "highs-compact", "highs-lp"):
        a, b = (solve(inst, solver=solver, backend=x) for x in BACKENDS)
        assert close(a.objective, b.objective) and close(a.bound, b.bound), solver


@pytest.mark.parametrize("seed", range(5))
def test_lp_fractional_count_at_most_rows(seed):
    rng = np.random.default_rng(50 + seed)
    inst = random_instance(rng, int(rng.integers(50, 2000)), int(rng.integers(2, 12)), "integer", seed % 2 == 1)
    r = solve(inst, solver="highs-lp")
    assert r.extra["n_rows"] <= 2 + seed % 2              # rows that cannot bind are left out
    assert r.extra["n_fractional"] <= r.extra["n_rows"]
    assert check_mask(inst, r.mask).feasible and r.extra["repaired"] == 0
    # the bound is the LP optimum: the integral part is within max_i I_i per fractional entry
    assert r.bound - r.objective <= r.extra["n_fractional"] * float(inst.importance.max()) + 1e-9 * r.bound
    assert close(r.bound, r.extra["lp_objective"])


def test_lagrangian_bound_is_valid_for_any_multipliers():
    arrays = {"cost": np.array([3.0, 2.0, 1.0]), "lower": np.zeros(3), "upper": np.ones(3),
              "indptr": np.array([0, 3]), "indices": np.array([0, 1, 2]), "data": np.array([1.0, 1.0, 1.0]),
              "row_lower": np.array([-np.inf]), "row_upper": np.array([2.0])}
    # each value carries a rounding margin of a few ulps: above the exact value, never below
    for y, exact in ((0.0, 6.0), (1.0, 5.0), (2.0, 5.0), (5.0, 10.0)):   # 5 = LP optimum at y = 1
        b = lagrangian_bound(arrays, np.array([y]))
        assert exact <= b <= exact * (1 + 1e-13)


# ----------------------------------------------------------------------------- time limit, gap, threads
def test_time_limit_returns_incumbent_and_a_truthful_gap():
    inst = random_layered(20_000, 20, seed=1)
    lp = solve(inst, solver="highs-lp")
    for solver in ("highs-compact", "highs-ilp"):
        r = solve(inst, solver=solver, time_limit=0.5, backend="highspy")
        assert r.termination == "time_limit"
        assert r.status in ("feasible", "no_solution")
        assert r.bound >= lp.objective             # above a feasible value: an upper bound can be true
        if r.status == "feasible":
            assert check_mask(inst, r.mask).feasible
            assert r.gap == relative_gap(r.objective, r.bound) and r.gap > 0
            assert r.bound >= r.objective
        else:
            assert not r.mask.any() and math.isinf(r.gap)


def test_rel_gap_stops_early_with_gap_limit():
    inst = random_layered(3000, 10, seed=2)
    r = solve(inst, solver="highs-compact", rel_gap=1e-3)
    assert r.termination == "gap_limit" and r.options["rel_gap"] == 1e-3
    assert r.gap <= 1.1e-3 and r.status in ("optimal", "feasible")


def test_thread_count_can_change_between_solves():
    inst = TINY["both-binding"]
    for threads in (1, 2, 1):
        for solver in ("highs-ilp", "highs-lp"):
            r = solve(inst, solver=solver, threads=threads)
            assert r.termination == "optimal", (threads, solver, r.extra["highs_status"])


def test_status_table():
    assert set(TERMINATION_OF_STATUS.values()) <= set(TERMINATIONS)
    for member in highspy.HighsModelStatus.__members__.values():
        assert termination_of(member) in TERMINATIONS
    assert termination_of(highspy.HighsModelStatus.kOptimal) == "optimal"
    assert termination_of(highspy.HighsModelStatus.kTimeLimit) == "time_limit"
    assert termination_of(highspy.HighsModelStatus.kSolveError) == "error"


def test_unknown_status_is_logged_as_unknown(caplog):
    with caplog.at_level(logging.WARNING, logger="falcon_milp.solvers.highs"):
        assert termination_of("kSomethingNew") == "unknown"
        assert termination_of(highspy.HighsModelStatus.kObjectiveBound) == "unknown"
    assert "kSomethingNew" in caplog.text and "kObjectiveBound" in caplog.text


# ----------------------------------------------------------------------------- masks, options, quiet
def test_repair_drops_least_important_weights_on_violated_rows():
    inst = PruningInstance.from_groups([np.array([5.0, 1.0, 3.0]), np.array([0.5, 4.0])], [2.0, 0.0],
                                       max_nnz=5, max_flops=4.0)
    mask = np.ones(5, dtype=bool)                     # flops 6 > 4: drop from group 0 only
    before = mask.copy()
    fixed, dropped = repair_mask(inst, mask)
    assert np.array_equal(mask, before)
    assert dropped == 1 and fixed.tolist() == [True, False, True, True, True]
    assert check_mask(inst, fixed).feasible
    same, zero = repair_mask(inst, fixed)
    assert zero == 0 and same is fixed


def test_option_errors():
    inst = TINY["nnz-binding"]
    with pytest.raises(SolverOptionError, match="`backend` must be one of 'auto', 'pyomo', 'highspy'; got 'gurobi'"):
        solve(inst, solver="highs-ilp", backend="gurobi")
    with pytest.raises(SolverOptionError, match="unknown option `presolve` for highs-lp; known: backend"):
        solve(inst, solver="highs-lp", presolve="on")
    with pytest.raises(SolverOptionError, match="unknown option `foo` for highs-compact; known: backend"):
        solve_compact(inst, time_limit=None, rel_gap=0.0, threads=None, foo=1)


def test_solver_functions_return_raw_solutions():
    inst = TINY["both-binding"]
    for func in (solve_ilp, solve_compact, solve_lp):
        raw = func(inst, time_limit=10.0, rel_gap=0.0, threads=None)
        assert raw.mask.dtype == bool and raw.termination == "optimal" and raw.bound >= 23 - 1e-9
        assert {"backend", "model_s", "handover_s", "solve_s", "n_rows", "nnz"} <= set(raw.extra)


@pytest.mark.parametrize("backend", BACKENDS)
def test_solvers_print_nothing(backend):
    code = ("import numpy as np; from falcon_milp import PruningInstance, solve; "
            "inst = PruningInstance.from_groups([np.array([3., 1.]), np.array([2.])], [1., 2.], 2, 3.); "
            f"[solve(inst, solver=s, backend='{backend}') for s in ('highs-ilp', 'highs-compact', 'highs-lp')]")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "" and out.stderr == ""

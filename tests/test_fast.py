"""The ``fast`` solver: exact LP by breakpoint search, budget-keeping rounding, certified gap."""
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.optimize import linprog

from falcon_milp import PruningInstance, SolverOptionError, check_mask, solve
from falcon_milp.solvers.lp import Problem
from falcon_milp.synthetic import arch_instance, random_layered
from tiny import brute_force, tiny_instances

TINY = tiny_instances()


def random_instance(rng, n_layers=4, max_size=30, costs="int", extra=False, dtype=np.float64):
    sizes = rng.integers(1, max_size + 1, size=n_layers)
    groups = [(rng.standard_normal(n) ** 2).astype(dtype) for n in sizes]
    if costs == "int":
        flops = rng.integers(0, 20, size=n_layers).astype(float)
    elif costs == "decimal":           # 0.1, 0.3, ...: not exact in binary
        flops = rng.integers(1, 10, size=n_layers) / 10.0
    else:
        flops = rng.random(n_layers) * 5
    p, total = int(sizes.sum()), float(np.dot(flops, sizes))
    res = None
    if extra:
        c = rng.integers(1, 5, size=n_layers).astype(float)
        res = {"bytes": (c.tolist(), float(rng.uniform(0.2, 0.8) * np.dot(c, sizes)))}
    return PruningInstance.from_groups(groups, flops, max_nnz=int(rng.integers(0, p + 1)),
                                       max_flops=float(rng.uniform(0, total)), extra_resources=res)


def lp_optimum(inst, budgets=None):
    """The per-weight LP relaxation solved by SciPy/HiGHS (reference)."""
    A = np.vstack([inst.weight_costs(r) for r in range(inst.n_resources)])
    b = np.array([float(x) for x in (inst.budgets if budgets is None else budgets)])
    res = linprog(-inst.importance.astype(float), A_ub=A, b_ub=b, bounds=(0, 1), method="highs",
                  options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
    assert res.status == 0
    return -res.fun


@pytest.mark.parametrize("case", sorted(TINY))
def test_tiny_instances(case):
    inst = TINY[case]
    opt = brute_force(inst)[0]
    for nodes in (0, 2000):
        r = solve(inst, solver="fast", search_nodes=nodes)
        assert check_mask(inst, r.mask).feasible
        assert r.objective <= opt + 1e-12
        assert r.bound >= opt - 1e-12
        assert r.gap >= 0
        if nodes == 0:    # the bound is a dual value: never below the (lattice) LP optimum
            assert r.bound >= lp_optimum(inst, Problem(inst).budgets) - 1e-9 * max(1.0, opt)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), costs=st.sampled_from(["int", "decimal", "real"]))
def test_lp_is_exact(seed, costs):
    """Breakpoint search = the LP optimum; its primal point spends the budgets; bound certified."""
    rng = np.random.default_rng(seed)
    inst = random_instance(rng, n_layers=int(rng.integers(1, 7)), costs=costs)
    prob = Problem(inst)
    # budgets rounded down to the lattice of the costs: same integer problem, tighter LP
    assert all(b <= float(c) for b, c in zip(prob.budgets, inst.budgets))
    assert lp_optimum(inst, prob.budgets) <= lp_optimum(inst) + 1e-12
    ref = lp_optimum(inst, prob.budgets)
    lp = prob.solve_lp()
    assert lp.exact
    tol = 1e-9 * max(1.0, abs(ref))
    assert lp.bound >= ref - tol
    assert lp.bound == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert lp.lp_value == pytest.approx(ref, rel=1e-9, abs=1e-12)
    # the primal LP counts are feasible (exactly, as rationals) and their floor too
    assert np.sum(lp.x) <= inst.max_nnz + 1e-9
    assert float(np.dot(lp.x, inst.flops_per_weight)) <= prob.budgets[1] * (1 + 1e-12) + 1e-9
    assert np.all(lp.floor <= np.maximum(lp.x, 0) + 1e-9)
    assert Problem(inst).rows.fits(lp.floor) and int(lp.floor.sum()) <= inst.max_nnz


def test_lp_solution_is_a_vertex_when_nondegenerate():
    """Continuous importances: at most two layers carry a fractional count."""
    for seed in range(10):
        inst = random_layered(20_000, 9, seed=seed, nnz_fraction=0.2, flops_fraction=0.15,
                              dtype=np.float64)
        lp = Problem(inst).solve_lp()
        frac = np.flatnonzero(np.abs(lp.x - np.round(lp.x)) > 1e-9)
        assert frac.size <= 2, (seed, frac)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), extra=st.booleans(),
       costs=st.sampled_from(["int", "decimal"]))
def test_within_certified_gap_of_exact(seed, extra, costs):
    rng = np.random.default_rng(seed)
    inst = random_instance(rng, n_layers=int(rng.integers(1, 6)), max_size=40, costs=costs, extra=extra)
    ex = solve(inst, solver="exact")
    for nodes in (0, 2000):
        fa = solve(inst, solver="fast", search_nodes=nodes)
        assert fa.status in ("feasible", "optimal")
        assert fa.objective <= ex.objective + 1e-9 * max(1.0, ex.objective)
        assert ex.objective <= fa.bound + 1e-9 * max(1.0, ex.objective)


def test_extra_resources_respected_and_bounded():
    rng = np.random.default_rng(11)
    for _ in range(5):
        inst = random_instance(rng, n_layers=5, max_size=3, extra=True)
        if inst.n_weights > 14:
            continue
        opt = brute_force(inst)[0]
        r = solve(inst, solver="fast")
        assert check_mask(inst, r.mask).feasible
        assert r.objective <= opt + 1e-12 <= r.bound + 2e-12


def test_float32_stays_float32():
    inst = arch_instance("resnet20", 0.3, 0.2)
    prob = Problem(inst)
    assert all(v.dtype == np.float32 for v in prob.layers.views)
    assert sum(v.size for v in prob.layers.views) <= inst.n_weights
    r = solve(inst, solver="fast")
    assert r.status in ("feasible", "optimal") and r.gap <= 1e-6


def test_deterministic():
    inst = random_layered(50_000, 12, seed=4)
    a, b = solve(inst, solver="fast"), solve(inst, solver="fast", threads=1)
    assert np.array_equal(a.mask, b.mask) and a.bound == b.bound


def test_not_worse_than_the_paper_rounding():
    for nnz, flops in ((0.1, 0.1), (0.3, 0.2), (0.5, 0.3)):
        inst = arch_instance("resnet20", nnz, flops, seed=2)
        fa, la = solve(inst, solver="fast"), solve(inst, solver="falcon-lagrangian")
        assert fa.objective >= la.objective
        assert fa.gap <= 1e-6


@pytest.mark.parametrize("name,inst_kw,expect", [
    ("no FLOP budget", dict(max_nnz=3, max_flops=math.inf), 5 + 4 + 3),
    ("S above p", dict(max_nnz=100, max_flops=10), None),
    ("S = 0", dict(max_nnz=0, max_flops=10), 0.0),
    ("F = 0", dict(max_nnz=5, max_flops=0), 0.0),
])
def test_corner_budgets(name, inst_kw, expect):
    inst = PruningInstance.from_groups([np.array([5.0, 4, 1]), np.array([3.0, 0.5])], [2.0, 1.0], **inst_kw)
    opt = brute_force(inst)[0]
    r = solve(inst, solver="fast")
    assert r.objective == pytest.approx(opt) and r.status == "optimal"
    if expect is not None:
        assert opt == pytest.approx(expect)


def test_ties_and_zeros():
    """All importances equal (every reduced cost ties) and layers of zeros."""
    inst = PruningInstance.from_groups([np.ones(50), np.zeros(20), np.ones(30)], [3.0, 1.0, 2.0],
                                       max_nnz=40, max_flops=95.0)
    opt_mask_value = 40.0  # 40 weights of importance 1, cheapest first: 30*2 + 10*3 = 90 <= 95
    r = solve(inst, solver="fast")
    assert check_mask(inst, r.mask).feasible
    assert r.objective == opt_mask_value and r.status == "optimal"


def test_decimal_costs_never_break_a_budget():
    """0.1 * 3 > 0.3 in binary: the exact check must keep every mask feasible."""
    for k in range(1, 8):
        inst = PruningInstance.from_groups([np.ones(10), np.full(4, 0.5)], [0.1, 0.3],
                                           max_nnz=14, max_flops=float(Fraction(1, 10) * k))
        r = solve(inst, solver="fast")
        assert check_mask(inst, r.mask).feasible
        assert r.objective == brute_force(inst)[0] if inst.n_weights <= 16 else True


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_option_messages(value):
    with pytest.raises(SolverOptionError, match=r"`search_nodes` must be an integer >= 0; got"):
        solve(TINY["both-binding"], solver="fast", search_nodes=value)

"""The ``exact`` solver: agrees with brute force and with HiGHS, proves optimality, exact budgets."""
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from falcon_milp import PruningInstance, SolverOptionError, check_mask, solve
from falcon_milp.solvers import OPTIMALITY_TOL
from falcon_milp.synthetic import arch_instance, random_layered
from tiny import brute_force, tiny_instances

TINY = tiny_instances()


def tiny_random(rng, costs="int", extra=False, ties=False):
    sizes = rng.integers(1, 5, size=int(rng.integers(1, 5)))
    while sizes.sum() > 12:
        sizes = sizes[:-1]
    if ties:   # few distinct values: many ties across layers
        groups = [rng.integers(0, 3, size=n).astype(float) for n in sizes]
    else:
        groups = [rng.random(n) ** 2 for n in sizes]
    L = sizes.size
    if costs == "int":
        flops = rng.integers(0, 6, size=L).astype(float)
    else:
        flops = rng.integers(1, 10, size=L) / 10.0
    p, total = int(sizes.sum()), float(np.dot(flops, sizes))
    res = None
    if extra:
        c = rng.integers(0, 4, size=L).astype(float)
        res = {"bytes": (c.tolist(), float(rng.integers(0, int(np.dot(c, sizes)) + 2)))}
    return PruningInstance.from_groups(groups, flops, max_nnz=int(rng.integers(0, p + 2)),
                                       max_flops=float(rng.uniform(0, total + 1)), extra_resources=res)


def small_random(rng, n_layers, max_size, extra=False):
    sizes = rng.integers(1, max_size + 1, size=n_layers)
    groups = [rng.standard_normal(n) ** 2 for n in sizes]
    flops = rng.integers(1, 50, size=n_layers).astype(float)
    p, total = int(sizes.sum()), float(np.dot(flops, sizes))
    res = None
    if extra:
        c = rng.integers(1, 5, size=n_layers).astype(float)
        res = {"bytes": (c.tolist(), float(rng.uniform(0.2, 0.9) * np.dot(c, sizes)))}
    return PruningInstance.from_groups(groups, flops, max_nnz=int(rng.integers(0, p + 1)),
                                       max_flops=float(rng.uniform(0, total)), extra_resources=res)


def assert_optimal(inst, r, opt):
    assert r.status == "optimal" and r.gap <= OPTIMALITY_TOL
    assert check_mask(inst, r.mask).feasible
    assert r.objective == pytest.approx(opt, rel=1e-12, abs=1e-12)
    assert r.bound >= opt - 1e-12


@pytest.mark.parametrize("case", sorted(TINY))
def test_equals_brute_force_on_named_tiny(case):
    inst = TINY[case]
    assert_optimal(inst, solve(inst, solver="exact"), brute_force(inst)[0])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), costs=st.sampled_from(["int", "decimal"]),
       extra=st.booleans(), ties=st.booleans())
def test_equals_brute_force_on_random_tiny(seed, costs, extra, ties):
    inst = tiny_random(np.random.default_rng(seed), costs, extra, ties)
    assert_optimal(inst, solve(inst, solver="exact"), brute_force(inst)[0])


@pytest.mark.parametrize("seed", range(6))
def test_equals_highs_on_small_random(seed):
    rng = np.random.default_rng(100 + seed)
    inst = small_random(rng, n_layers=int(rng.integers(2, 7)), max_size=80, extra=seed % 3 == 2)
    ref = solve(inst, solver="highs-compact")
    assert ref.status == "optimal"
    r = solve(inst, solver="exact")
    assert_optimal(inst, r, ref.objective)
    if inst.n_weights <= 250 and seed < 3:
        ilp = solve(inst, solver="highs-ilp")
        assert ilp.status == "optimal" and r.objective == pytest.approx(ilp.objective, rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_band_leaf_agrees_with_plain_scan(seed):
    """The two-row band only skips counts whose slack penalty alone exceeds the incumbent's."""
    inst = random_layered(30_000, 10, seed=seed, nnz_fraction=0.2 + 0.1 * seed, flops_fraction=0.15,
                          dtype=np.float64)
    a, b = solve(inst, solver="exact"), solve(inst, solver="exact", band=False)
    assert a.status == b.status == "optimal"
    assert a.objective == b.objective


def test_architecture_shape_float32():
    inst = arch_instance("resnet20", 0.3, 0.2, seed=1)
    r = solve(inst, solver="exact")
    assert r.status == "optimal" and r.termination == "optimal"
    fast = solve(inst, solver="fast", search_nodes=0)
    lag = solve(inst, solver="falcon-lagrangian")
    assert fast.objective <= r.objective <= fast.bound
    assert lag.objective <= r.objective <= lag.bound
    assert r.extra["nodes"] >= 1 and len(r.extra["windows"]) == 4   # 4 FLOP classes


def test_node_limit_returns_feasible_with_lp_bound():
    inst = random_layered(40_000, 12, seed=3, nnz_fraction=0.3, flops_fraction=0.1)
    full = solve(inst, solver="exact")
    capped = solve(inst, solver="exact", max_nodes=1)
    assert check_mask(inst, capped.mask).feasible
    assert capped.objective <= full.objective <= capped.bound
    if capped.termination == "iteration_limit":
        assert capped.bound == capped.extra["lp_bound"]


def test_rel_gap_stops_at_the_rounding():
    inst = random_layered(20_000, 8, seed=5)
    r = solve(inst, solver="exact", rel_gap=1e-3)
    assert r.gap <= 1e-3                                  # proven within the requested gap
    # one convention: "optimal" only for a proven optimum; within rel_gap = feasible + gap_limit
    assert (r.status, r.termination) in (("optimal", "optimal"), ("feasible", "gap_limit"))
    assert (r.status == "optimal") == (r.gap <= 1e-9)
    assert "nodes" not in r.extra


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), grow=st.sampled_from(["max_nnz", "max_flops"]))
def test_optimum_never_decreases_when_a_budget_grows(seed, grow):
    rng = np.random.default_rng(seed)
    inst = small_random(rng, n_layers=int(rng.integers(1, 6)), max_size=30)
    if grow == "max_nnz":
        bigger = inst.with_budgets(max_nnz=inst.max_nnz + int(rng.integers(1, 10)))
    else:
        bigger = inst.with_budgets(max_flops=inst.max_flops * 1.3 + 1)
    a, b = solve(inst, solver="exact"), solve(bigger, solver="exact")
    assert b.objective >= a.objective


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_lp_bound_at_least_the_optimum(seed):
    rng = np.random.default_rng(seed)
    inst = small_random(rng, n_layers=int(rng.integers(1, 6)), max_size=20, extra=bool(seed % 2))
    r = solve(inst, solver="exact")
    assert r.extra["lp_bound"] >= r.objective - 1e-12


def test_decimal_costs_exact_budget_decisions():
    """Costs 0.1 and 0.3 with budgets at their decimal sums: float sums would cross them."""
    rng = np.random.default_rng(0)
    for k in range(1, 12):
        inst = PruningInstance.from_groups([rng.random(6), rng.random(5)], [0.1, 0.3], max_nnz=11,
                                           max_flops=float(Fraction(k, 10)))
        assert_optimal(inst, solve(inst, solver="exact"), brute_force(inst)[0])


def test_corner_cases():
    groups = [np.array([5.0, 4, 1]), np.array([3.0, 0.5]), np.zeros(3)]
    for kw in (dict(max_nnz=0, max_flops=10), dict(max_nnz=4, max_flops=0),
               dict(max_nnz=20, max_flops=math.inf), dict(max_nnz=2, max_flops=None)):
        inst = PruningInstance.from_groups(groups, [2.0, 1.0, 0.0], **kw)
        assert_optimal(inst, solve(inst, solver="exact"), brute_force(inst)[0])


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_option_messages(value):
    with pytest.raises(SolverOptionError, match=r"`max_nodes` must be an integer >= 1; got"):
        solve(TINY["both-binding"], solver="exact", max_nodes=value)


@pytest.mark.parametrize("seed", range(3))
def test_windowed_milp_fallback_agrees(seed, monkeypatch):
    """After MILP_AFTER search nodes the windows go to HiGHS; same optimum as the plain search."""
    import falcon_milp.solvers.exact as exact_mod
    rng = np.random.default_rng(50 + seed)
    inst = small_random(rng, n_layers=7, max_size=300, extra=seed == 2)
    ref = solve(inst, solver="exact")
    monkeypatch.setattr(exact_mod, "MILP_AFTER", 1)
    r = solve(inst, solver="exact")
    assert r.status == "optimal" and check_mask(inst, r.mask).feasible
    assert r.objective == pytest.approx(ref.objective, rel=1e-12)
    if r.extra.get("nodes", 0) >= 1 and "windowed_milp" in r.extra:
        assert r.extra["windowed_milp"]["status"] == "optimal"


@pytest.mark.parametrize("band_fraction", [0.06, 0.002])
def test_banded_sorting_gives_the_same_answers(band_fraction, monkeypatch):
    """Sorting only bands around the sample's thresholds (narrow bands force full sorts of
    some layers on demand) changes nothing in the results."""
    import falcon_milp.solvers.bands as bands_mod
    for seed in range(3):
        inst = random_layered(60_000, 9, seed=seed, nnz_fraction=0.1 + 0.2 * seed,
                              flops_fraction=0.3 - 0.1 * seed)
        full_e, full_f = solve(inst, solver="exact"), solve(inst, solver="fast", search_nodes=0)
        with monkeypatch.context() as m:
            m.setattr(bands_mod, "SAMPLE_SIZE", 500)
            m.setattr(bands_mod, "SMALL_LAYER", 16)
            m.setattr(bands_mod, "BAND_FRACTION", band_fraction)
            e, f = solve(inst, solver="exact"), solve(inst, solver="fast", search_nodes=0)
        assert e.status == full_e.status == "optimal" and e.objective == full_e.objective
        assert f.extra["lp_value"] == pytest.approx(full_f.extra["lp_value"], rel=1e-12)
        assert f.bound == pytest.approx(full_f.bound, rel=1e-12)
        assert check_mask(inst, f.mask).feasible

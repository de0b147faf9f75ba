"""``falcon-lagrangian``: the paper's algorithm, its certified bound, and a literal re-derivation."""
import math

import numpy as np
import pytest

from falcon_milp import PruningInstance, check_mask, solve
from falcon_milp.solvers.lp import Problem
from falcon_milp.solvers.lagrangian import GOLDEN
from falcon_milp.synthetic import arch_instance, random_layered
from tiny import brute_force, tiny_instances

TINY = tiny_instances()


def literal_paper(inst, stop_acc=1e-12):
    """The published procedure written plainly: a full sort per step, golden-section search,
    prefix rounding (two rows only). Used as the reference for the merged evaluation."""
    v_w = -inst.importance.astype(np.float64)
    f_w = inst.weight_costs(1)
    S, F = inst.max_nnz, inst.max_flops

    def dual(lam):
        vec = np.sort(v_w + lam * f_w)
        ome = max(-vec[S], 0.0) if S < vec.size else 0.0
        return S * ome + F * lam + np.sum(np.maximum(-vec - ome, 0.0))

    lo, hi = 0.0, float(np.max(-v_w / f_w))
    l1, l2 = lo + (hi - lo) * (1 - GOLDEN), lo + (hi - lo) * GOLDEN
    o1, o2 = dual(l1), dual(l2)
    while hi - lo > stop_acc:
        if o1 > o2:
            lo, l1, o1 = l1, l2, o2
            l2 = lo + (hi - lo) * GOLDEN
            o2 = dual(l2)
        else:
            hi, l2, o2 = l2, l1, o1
            l1 = lo + (hi - lo) * (1 - GOLDEN)
            o1 = dual(l1)
    lam = (l1 + l2) / 2
    vec0 = v_w + lam * f_w
    idx = np.argsort(vec0, kind="stable")
    n = min(int(np.searchsorted(np.cumsum(f_w[idx]), F, side="right")), S)
    thres = min(vec0[idx[n]], 0.0) if n < vec0.size else 0.0
    return lam, vec0 < thres


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_literal_procedure(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 200, size=6)
    flops = rng.integers(1, 30, size=6).astype(float)
    inst = PruningInstance.from_groups([rng.standard_normal(n) ** 2 for n in sizes], flops,
                                       max_nnz=int(sizes.sum() * 0.3),
                                       max_flops=float(np.dot(sizes, flops)) * 0.2)
    lam, mask = literal_paper(inst)
    r = solve(inst, solver="falcon-lagrangian")
    assert r.extra["lambda"] == pytest.approx(lam, rel=1e-9, abs=1e-15)
    assert np.array_equal(r.mask, mask)


@pytest.mark.parametrize("case", sorted(TINY))
def test_tiny_feasible_and_bounded(case):
    inst = TINY[case]
    opt = brute_force(inst)[0]
    r = solve(inst, solver="falcon-lagrangian")
    assert check_mask(inst, r.mask).feasible and r.status in ("feasible", "optimal")
    assert r.objective <= opt + 1e-12
    assert r.bound >= opt - 1e-12 and r.gap >= 0


def test_bound_is_the_dual_at_the_final_lambda():
    inst = random_layered(20_000, 9, seed=1)
    r = solve(inst, solver="falcon-lagrangian")
    prob = Problem(inst, lattice=False)       # the dual with the budgets as given
    point = prob.evaluate(np.array([r.extra["lambda"]]))
    assert r.bound >= point.value and r.bound == pytest.approx(point.value, rel=1e-12)
    exact = solve(inst, solver="exact")
    assert r.objective <= exact.objective <= r.bound
    # about 50 golden-section steps from [0, max I/f] down to 1e-12
    lam_ub = float(np.max(inst.importance / inst.weight_costs(1)))
    expected = math.ceil(math.log(1e-12 / lam_ub) / math.log(GOLDEN))
    assert abs(r.extra["golden_steps"] - expected) <= 2


def test_extra_rows_fit_and_bound_stays_valid():
    rng = np.random.default_rng(3)
    for _ in range(6):
        sizes = rng.integers(1, 4, size=4)
        inst = PruningInstance.from_groups(
            [rng.random(n) for n in sizes], [1.0, 2.0, 3.0, 1.0], max_nnz=int(sizes.sum()),
            max_flops=float(rng.integers(2, 12)),
            extra_resources={"bytes": ([3.0, 1.0, 1.0, 2.0], float(rng.integers(1, 8)))})
        opt = brute_force(inst)[0]
        r = solve(inst, solver="falcon-lagrangian")
        assert check_mask(inst, r.mask).feasible
        assert r.objective <= opt + 1e-12 <= r.bound + 2e-12


def test_without_flop_budget_is_magnitude_pruning():
    inst = PruningInstance.from_groups([np.array([5.0, 1, 3]), np.array([4.0, 2])], [9.0, 1.0],
                                       max_nnz=3, max_flops=math.inf)
    r = solve(inst, solver="falcon-lagrangian")
    assert r.extra["golden_steps"] == 0 and r.extra["lambda"] == 0.0
    assert r.objective == 12.0 and r.status == "optimal"


def test_decimal_costs_never_break_a_budget():
    for k in range(1, 10):
        inst = PruningInstance.from_groups([np.ones(6), np.full(3, 0.9)], [0.1, 0.3], max_nnz=9,
                                           max_flops=k / 10)
        r = solve(inst, solver="falcon-lagrangian")
        assert check_mask(inst, r.mask).feasible


def test_float32_architecture_shape():
    inst = arch_instance("resnet20", 0.1, 0.1, seed=0)
    r = solve(inst, solver="falcon-lagrangian")
    fast = solve(inst, solver="fast")
    assert r.status == "feasible" and r.objective <= fast.objective
    assert r.bound >= fast.objective

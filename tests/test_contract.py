"""The solver contract, run over every registered solver (a missing module fails, never skips)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from falcon_milp import PruningInstance, check_mask, solve
from falcon_milp.solvers import OPTIMALITY_TOL, REGISTRY
from tiny import brute_force, tiny_instances

TINY = tiny_instances()
OPTIMA = {name: brute_force(inst)[0] for name, inst in TINY.items()}
TOL = 1e-9


def check_contract(inst, result, spec):
    assert result.solver == spec.name
    assert result.mask.dtype == bool and result.mask.shape == (inst.n_weights,)
    chk = check_mask(inst, result.mask)
    if spec.flop_aware:
        assert chk.feasible, f"{spec.name} returned an infeasible mask"
        assert result.status in ("feasible", "optimal")
    else:
        assert result.status in ("infeasible", "feasible", "optimal")
        assert (result.status == "infeasible") == (not chk.feasible)
    # objective recomputed from the mask
    assert result.objective == pytest.approx(float(inst.importance[result.mask].astype(float).sum()), rel=1e-12, abs=1e-12)
    assert result.objective <= result.bound + TOL * max(1.0, abs(result.bound))
    assert result.gap >= 0
    assert result.runtime_s >= 0
    # the NNZ budget is an exact integer comparison
    assert spec.flop_aware is False or int(result.mask.sum()) <= inst.max_nnz


@pytest.mark.parametrize("solver", sorted(REGISTRY))
@pytest.mark.parametrize("case", sorted(TINY))
def test_contract_on_tiny(solver, case):
    inst, spec = TINY[case], REGISTRY[solver]
    result = solve(inst, solver=solver)
    check_contract(inst, result, spec)
    opt = OPTIMA[case]
    if result.status != "infeasible":
        assert result.objective <= opt + TOL * max(1.0, opt)
    assert result.bound >= opt - TOL * max(1.0, opt)  # every bound is a valid upper bound
    if spec.exact:
        assert result.status == "optimal"
        assert result.objective == pytest.approx(opt, rel=1e-9, abs=1e-12)
    if result.status == "optimal":
        assert result.objective == pytest.approx(opt, rel=OPTIMALITY_TOL * 10, abs=1e-12)


def random_instance(rng, n_layers, max_size, integer_costs=True):
    sizes = rng.integers(1, max_size + 1, size=n_layers)
    groups = [rng.standard_normal(n) ** 2 for n in sizes]
    flops = rng.integers(1, 50, size=n_layers).astype(float) if integer_costs else rng.random(n_layers) * 10
    p, total = int(sizes.sum()), float(np.dot(flops, sizes))
    return PruningInstance.from_groups(groups, flops, max_nnz=int(rng.integers(0, p + 1)),
                                       max_flops=float(rng.uniform(0, total)))


@pytest.mark.parametrize("solver", sorted(REGISTRY))
def test_contract_on_random(solver):
    rng = np.random.default_rng(7)
    for k in range(6):
        inst = random_instance(rng, n_layers=int(rng.integers(1, 8)), max_size=60, integer_costs=k % 2 == 0)
        check_contract(inst, solve(inst, solver=solver), REGISTRY[solver])


EXACT = sorted(n for n, s in REGISTRY.items() if s.exact)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), grow=st.sampled_from(["max_nnz", "max_flops"]))
def test_optimum_never_decreases_when_a_budget_grows(seed, grow):
    rng = np.random.default_rng(seed)
    inst = random_instance(rng, n_layers=int(rng.integers(1, 5)), max_size=12)
    grown = int(inst.max_nnz * 1.5) + 1 if grow == "max_nnz" else inst.max_flops * 1.5 + 1
    bigger = inst.with_budgets(**{grow: grown})
    for solver in EXACT:
        a, b = solve(inst, solver=solver), solve(bigger, solver=solver)
        assert b.objective >= a.objective - 1e-9 * max(1.0, a.objective)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_lp_bound_at_least_ilp_optimum(seed):
    rng = np.random.default_rng(seed)
    inst = random_instance(rng, n_layers=int(rng.integers(1, 5)), max_size=12)
    opt = solve(inst, solver="highs-ilp").objective
    for solver in ("highs-lp", "fast", "falcon-lagrangian"):
        assert solve(inst, solver=solver).bound >= opt - 1e-9 * max(1.0, opt)

"""Pyomo formulations: structure, exactness of the rows, LP/MPS round trip through highspy, errors."""
import logging
import subprocess
import sys
from fractions import Fraction

import highspy  # HiGHS tests must not skip: a missing highspy fails here
import numpy as np
import pytest
import pyomo.environ as pyo

from falcon_milp import InvalidInstanceError, PruningInstance, SolverOptionError, check_mask
from falcon_milp.formulations import (build_compact_model, build_model, build_per_weight_model, build_spec,
                                      counts_to_mask, layer_breakpoints, mask_from_model, resource_rows,
                                      write_model)
from falcon_milp.formulations.resources import EXACT_LIMIT, limb_split
from tiny import brute_force, tiny_instances

TINY = tiny_instances()
OPTIMA = {name: brute_force(inst)[0] for name, inst in TINY.items()}


def highs_optimum(path) -> float:
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    assert h.readModel(str(path)) == highspy.HighsStatus.kOk
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 0.0)
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    return h.getInfo().objective_function_value


def random_float_cost_instance(rng, n_groups=3, max_size=4):
    sizes = rng.integers(1, max_size + 1, size=n_groups)
    groups = [rng.random(n) for n in sizes]
    flops = rng.random(n_groups) * 3          # non-integer costs: rows doubles cannot decide
    total = float(np.dot(flops, sizes))
    extra = {"lat": (list(rng.random(n_groups) / 7), float(rng.random() * 2))}
    return PruningInstance.from_groups(groups, list(flops), max_nnz=int(rng.integers(1, sizes.sum() + 1)),
                                       max_flops=float(rng.uniform(0, total)), extra_resources=extra)


# ----------------------------------------------------------------------------- structure
def test_per_weight_model_structure():
    inst = TINY["extra-resource"].with_budgets(max_nnz=4, max_flops=5)
    m = build_per_weight_model(inst)
    assert m.falcon_kind == "ilp"
    assert len(m.z) == inst.n_weights and all(m.z[i].is_binary() for i in m.z)
    assert list(m.budget.keys()) == ["nnz", "flops", "bytes"]
    # objective: sum I_i z_i
    coefs = {v.index(): c for c, v in zip(m.obj.expr.linear_coefs, m.obj.expr.linear_vars)}
    assert coefs == {i: float(x) for i, x in enumerate(inst.importance) if x != 0}
    # bytes row: 4, 4, 1, 1, 2, 2 <= 7
    body = m.budget["bytes"].body
    assert [c for c in body.linear_coefs] == [4.0, 4.0, 1.0, 1.0, 2.0, 2.0]
    assert m.budget["bytes"].upper == 7
    lp = build_model(inst, "lp")
    assert lp.falcon_kind == "lp" and not any(lp.z[i].is_integer() for i in lp.z)
    assert all(lp.z[i].lb == 0 and lp.z[i].ub == 1 for i in lp.z)


def test_rows_that_cannot_bind_are_left_out():
    inst = TINY["loose"]                                 # every budget >= the dense total
    assert resource_rows(inst) == []
    assert not hasattr(build_model(inst, "ilp"), "budget")
    inf = PruningInstance.from_groups([np.ones(3)], [2.0], max_nnz=2, max_flops=float("inf"))
    assert [r.name for r in resource_rows(inf)] == ["nnz"]


def test_integer_costs_round_the_budget_down_exactly():
    inst = PruningInstance.from_groups([np.ones(4), np.ones(3)], [3.0, 5.0], max_nnz=6, max_flops=17.9)
    rows = {r.name: r for r in resource_rows(inst)}
    assert rows["flops"].rhs == 17.0 and rows["flops"].exact and rows["flops"].scale == 1.0
    dyadic = PruningInstance.from_groups([np.ones(4), np.ones(3)], [0.75, 1.5], max_flops=2.6)
    row = resource_rows(dyadic)[-1]
    assert row.scale == 4.0 and list(row.coef) == [3.0, 6.0] and row.rhs == 10.0 and row.exact
    inexact = TINY["fractional-costs"]
    row = {r.name: r for r in resource_rows(inexact)}["flops"]
    assert not row.exact and row.rhs == 0.3
    # the limb split reproduces C_l and floor(B 2^E) exactly
    sp = limb_split(row, inexact.group_sizes)
    base = 1 << sp.base_bits
    for l, c in enumerate(row.coef_int):
        assert sum(int(sp.digits[j, l]) * base ** j for j in range(sp.n_limbs)) == c
    assert sum(d * base ** j for j, d in enumerate(sp.rhs_digits)) == row.rhs_int
    assert row.rhs_int == int(Fraction(0.3) * 2 ** 55)          # 0.1 needs 2^55
    assert max(sp.digits.max() * inexact.n_weights, max(sp.carry_ub) * base) < EXACT_LIMIT


def test_compact_cuts_only_where_the_slope_changes():
    imp = np.array([3.0, 1.0, 3.0, 2.0, 1.0, 0.0, 0.0, 3.0])
    bp = layer_breakpoints(imp)
    assert list(bp.j) == [0, 3, 4, 6] and list(bp.slope) == [3.0, 2.0, 1.0, 0.0]
    s = np.sort(imp)[::-1]
    for k in range(imp.size + 1):                       # min over the cuts is the prefix sum
        assert min(bp.rhs + bp.slope * k) == pytest.approx(s[:k].sum(), abs=1e-12)
    inst = PruningInstance.from_groups([imp, np.array([5.0, 5.0])], [1.0, 2.0], max_nnz=4, max_flops=6)
    m = build_compact_model(inst)
    assert m.falcon_kind == "compact"
    assert sorted(m.epigraph.keys()) == sorted([("layer0", j) for j in (0, 3, 4, 6)] + [("layer1", 0)])
    assert all(m.k[n].is_integer() for n in inst.names) and not m.t["layer0"].is_integer()
    assert m.k["layer0"].ub == 8 and m.t["layer0"].ub == pytest.approx(imp.sum())


def test_relaxed_tail_is_an_upper_bound():
    rng = np.random.default_rng(3)
    imp = np.concatenate([rng.random(20), rng.random(10) * 1e-14])
    bp = layer_breakpoints(imp, scale=1.0, min_slope=1e-11)
    s = np.sort(imp)[::-1]
    assert bp.j.size == 21 and bp.slope[-1] == 1e-11
    for k in range(imp.size + 1):
        value = min(min(bp.rhs + bp.slope * k), bp.total)
        assert s[:k].sum() <= value + 1e-15 and value - s[:k].sum() <= 1e-11 * k


@pytest.mark.parametrize("seed", range(12))
def test_min_over_cuts_equals_prefix_sum_with_ties(seed):
    rng = np.random.default_rng(seed)
    imp = rng.integers(0, 4, size=int(rng.integers(1, 30))).astype(float) / 2
    bp = layer_breakpoints(imp)
    s = np.sort(imp)[::-1]
    assert bp.j.size == np.unique(imp).size
    for k in range(imp.size + 1):
        assert min(bp.rhs + bp.slope * k) == pytest.approx(s[:k].sum(), abs=1e-12)


def test_counts_to_mask_keeps_the_most_important_stable_ties():
    inst = PruningInstance.from_groups([np.array([1.0, 3.0, 3.0, 2.0]), np.array([5.0, 5.0])], [1.0, 1.0])
    mask = counts_to_mask(inst, np.array([2, 1]))
    assert mask.tolist() == [False, True, True, False, True, False]
    mask = counts_to_mask(inst, [3, 0])
    assert mask.tolist() == [False, True, True, True, False, False]
    assert counts_to_mask(inst, np.array([4.0, 2.0])).all()


def test_counts_to_mask_errors():
    inst = TINY["single-group"]
    with pytest.raises(InvalidInstanceError, match=r"`counts` must have shape \(1,\); got \(2,\)"):
        counts_to_mask(inst, [1, 2])
    with pytest.raises(InvalidInstanceError, match=r"`counts` of group 'layer0' must be in \[0, 4\]; got 5"):
        counts_to_mask(inst, [5])
    with pytest.raises(InvalidInstanceError, match="`counts` must be integers"):
        counts_to_mask(inst, [1.5])


def test_import_does_not_load_pyomo():
    code = ("import sys, falcon_milp.formulations, falcon_milp.solvers.highs; "
            "print(any(m.split('.')[0] in ('pyomo', 'highspy') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- exactness, round trip
@pytest.mark.parametrize("case", sorted(TINY))
def test_written_models_reread_by_highs_give_the_optimum(case, tmp_path):
    inst, opt = TINY[case], OPTIMA[case]
    exact = bool(build_spec(inst, "ilp").notes["inexact_rows"])   # fractional-costs needs limb rows
    for kind in ("ilp", "compact", "lp"):
        model = build_model(inst, kind, exact=exact)
        values = []
        for fmt in ("lp", "mps"):
            path = write_model(model, tmp_path / f"{kind}.{fmt}", fmt)
            assert path.exists()
            values.append(highs_optimum(path))
        assert values[0] == pytest.approx(values[1], rel=1e-12, abs=1e-12)
        if kind == "lp":
            assert values[0] >= opt - 1e-9
        else:
            assert values[0] == pytest.approx(opt, rel=1e-9, abs=1e-12), (kind, fmt)


def test_written_file_has_readable_names(tmp_path):
    inst = TINY["both-binding"]
    text = write_model(build_model(inst, "compact"), tmp_path / "m.lp", "lp").read_text()
    for name in ("k(layer0)", "t(layer1)", "budget(flops)", "epigraph(layer0_0)"):
        assert name in text
    text = write_model(build_model(inst, "ilp"), tmp_path / "m.mps", "mps").read_text()
    assert "z(6)" in text and "budget(nnz)" in text


@pytest.mark.parametrize("seed", range(8))
def test_exact_limb_rows_match_brute_force(seed, tmp_path):
    inst = random_float_cost_instance(np.random.default_rng(seed))
    opt = brute_force(inst)[0]
    for kind in ("ilp", "compact"):
        path = write_model(build_model(inst, kind, exact=True), tmp_path / f"{kind}.lp", "lp")
        assert highs_optimum(path) == pytest.approx(opt, rel=1e-9, abs=1e-12)


def test_colliding_names_fall_back_to_generic_labels(tmp_path, caplog):
    inst = PruningInstance.from_groups([np.array([2.0, 1.0]), np.array([3.0])], [1.0, 2.0], max_nnz=2,
                                       max_flops=3, names=["a b", "a_b"])
    with caplog.at_level(logging.WARNING, logger="falcon_milp.formulations"):
        path = write_model(build_model(inst, "compact"), tmp_path / "m.lp", "lp")
    assert "generic names" in caplog.text
    assert highs_optimum(path) == pytest.approx(brute_force(inst)[0])


def test_mask_from_a_model_solved_through_pyomo():
    from pyomo.contrib.solver.common.factory import SolverFactory
    inst = TINY["both-binding"]
    opt, _ = brute_force(inst)
    for kind in ("ilp", "compact", "lp"):
        model = build_model(inst, kind)
        SolverFactory("highs").solve(model, rel_gap=0.0, solver_options={"output_flag": False})
        mask = mask_from_model(inst, model)
        assert check_mask(inst, mask).feasible
        if kind != "lp":
            assert inst.importance[mask].sum() == pytest.approx(opt)
        model.obj.deactivate()   # a user may modify the model: it stays a Pyomo model
        assert isinstance(model, pyo.ConcreteModel)


# ----------------------------------------------------------------------------- errors
def test_bad_kind_and_format(tmp_path):
    inst = TINY["nnz-binding"]
    with pytest.raises(SolverOptionError, match="`kind` must be one of 'ilp', 'lp', 'compact'; got 'milp'"):
        build_model(inst, "milp")
    with pytest.raises(SolverOptionError, match="`kind` must be one of 'ilp', 'lp', 'compact'; got 'qp'"):
        build_spec(inst, "qp")
    with pytest.raises(SolverOptionError, match="`instance` must be a PruningInstance; got dict"):
        build_model({}, "ilp")
    model = build_model(inst, "ilp")
    with pytest.raises(SolverOptionError, match="`fmt` must be one of 'lp', 'mps'; got 'gms'"):
        write_model(model, tmp_path / "m.gms", "gms")
    with pytest.raises(SolverOptionError, match="`path` must be in an existing directory; '.*nope' does not exist"):
        write_model(model, tmp_path / "nope" / "m.lp", "lp")
    with pytest.raises(SolverOptionError, match="`model` must be a Pyomo model; got str"):
        write_model("model", tmp_path / "m.lp", "lp")


def test_mask_from_model_errors():
    inst = TINY["nnz-binding"]
    with pytest.raises(SolverOptionError, match="`model` must be a model built by falcon_milp.formulations"):
        mask_from_model(inst, pyo.ConcreteModel())
    with pytest.raises(SolverOptionError, match="`model` has no values for z; solve it"):
        mask_from_model(inst, build_model(inst, "ilp"))
    with pytest.raises(SolverOptionError, match="`model` has no values for k; solve it"):
        mask_from_model(inst, build_model(inst, "compact"))

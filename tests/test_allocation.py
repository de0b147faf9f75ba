"""Allocation problems (pick one option per group under several budgets): validation, files,
the multiple-choice MILP against dynamic programming and brute force."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from falcon_milp import (AllocationProblem, InstanceFileError, InvalidInstanceError, SolverOptionError,
                         check_choice, load_allocation, save_allocation, solve_allocation)
from falcon_milp.exceptions import SolverUnavailableError
from falcon_milp.formulations.multiple_choice import (build_multiple_choice_model, multiple_choice_spec,
                                                      usable_options)


def _random_problem(rng: np.random.Generator, max_groups: int = 4, max_options: int = 5) -> AllocationProblem:
    G = int(rng.integers(1, max_groups + 1))
    sizes = rng.integers(1, max_options + 1, G)
    errors = [rng.normal(size=j) for j in sizes]                    # neither convex nor monotone
    nnz = [rng.integers(0, 10, j).astype(float) for j in sizes]
    flops = [rng.random(j) * 3 for j in sizes]                      # non-integer uses
    budgets = {"nnz": float(rng.integers(0, 25)), "flops": float(rng.random() * 6)}
    return AllocationProblem.from_groups(errors, {"nnz": nnz, "flops": flops}, budgets)


def _brute_force(problem: AllocationProblem) -> float | None:
    best = None
    for c in itertools.product(*[range(int(n)) for n in np.diff(problem.offsets)]):
        c = np.array(c, dtype=np.int64)
        if check_choice(problem, c).feasible:
            o = problem.objective(c)
            best = o if best is None else min(best, o)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_highs_and_dp_match_brute_force(seed):
    problem = _random_problem(np.random.default_rng(seed))
    best = _brute_force(problem)
    for solver in ("highs", "dp"):
        res = solve_allocation(problem, solver=solver)
        if best is None:
            assert res.status == "infeasible" and res.choice is None
            continue
        assert res.status == "optimal", (solver, res)
        assert check_choice(problem, res.choice).feasible
        assert res.objective == pytest.approx(best, abs=1e-9)
        assert res.bound <= res.objective and res.gap <= 1e-9
        assert res.objective - res.bound <= 1e-9 * max(1.0, abs(res.objective))


def test_budget_binding_exactly_at_a_non_representable_sum():
    # 0.1 + 0.2 > 0.3 in floats; the exact sums of the stored doubles decide, not a tolerance
    problem = AllocationProblem.from_groups([np.array([1.0, 0.0]), np.array([1.0, 0.0])],
                                            {"flops": [np.array([0.0, 0.1]), np.array([0.0, 0.2])]},
                                            {"flops": 0.3})
    for solver in ("highs", "dp"):
        res = solve_allocation(problem, solver=solver)
        assert res.status == "optimal"
        assert check_choice(problem, res.choice).feasible
        assert res.objective == 1.0            # both cheap options together break the budget exactly


def test_nonconvex_curve_optimum_is_not_the_greedy_one():
    # group 0's curve has a dip at option 2 that marginal (convex-hull) greedy steps past
    errors = [np.array([10.0, 9.0, 1.0, 0.9]), np.array([5.0, 0.0])]
    use = [np.array([0.0, 1.0, 3.0, 4.0]), np.array([0.0, 2.0])]
    problem = AllocationProblem.from_groups(errors, {"nnz": use}, {"nnz": 3.0})
    res = solve_allocation(problem)
    assert res.choice.tolist() == [2, 0] and res.objective == 6.0
    assert solve_allocation(problem, solver="dp").choice.tolist() == [2, 0]


def test_several_budgets_and_no_budget_rows():
    problem = AllocationProblem.from_groups(
        [np.array([3.0, 1.0, 0.0]), np.array([2.0, 0.5])],
        {"nnz": [np.array([0, 1, 2.0]), np.array([0, 1.0])], "flops": [np.array([0, 4, 8.0]), np.array([0, 1.0])],
         "bytes": [np.array([0, 1, 2.0]), np.array([0, 1.0])]},
        {"nnz": 3.0, "flops": 5.0, "bytes": None})
    res = solve_allocation(problem)
    assert res.status == "optimal" and res.choice.tolist() == [1, 1] and res.objective == 1.5
    assert res.usage == {"nnz": 2.0, "flops": 5.0, "bytes": 2.0}
    assert solve_allocation(problem, solver="dp").objective == 1.5
    free = AllocationProblem.from_groups([np.array([3.0, -1.0]), np.array([0.5, 2.0])], {}, {})
    for solver in ("highs", "dp"):
        assert solve_allocation(free, solver=solver).choice.tolist() == [1, 0]


def test_infeasible_is_proven_and_says_which_budget():
    problem = AllocationProblem.from_groups([np.array([1.0, 0.0])], {"nnz": [np.array([2.0, 3.0])]}, {"nnz": 1.0})
    for solver in ("highs", "dp"):
        res = solve_allocation(problem, solver=solver)
        assert res.status == "infeasible" and res.choice is None and res.bound == math.inf
    assert "'nnz'" in res.extra["reason"]


def test_dominance_presolve_keeps_the_optimum():
    rng = np.random.default_rng(7)
    for _ in range(30):
        problem = _random_problem(rng, 3, 6)
        keep = usable_options(problem)
        best = _brute_force(problem)
        if best is None:
            continue
        # the best choice among usable options only equals the true optimum
        sub = [np.flatnonzero(keep[problem.group(g)]) for g in range(problem.n_groups)]
        vals = [problem.objective(np.array(c)) for c in itertools.product(*sub)
                if check_choice(problem, np.array(c, dtype=np.int64)).feasible]
        assert min(vals) == pytest.approx(best, abs=1e-12)


def test_pyomo_model_shape():
    problem = AllocationProblem.from_groups([np.array([1.0, 0.0]), np.array([2.0, 1.0, 0.0])],
                                            {"nnz": [np.array([0, 1.0]), np.array([0, 1, 2.0])]}, {"nnz": 2.0},
                                            names=["a", "b"])
    model = build_multiple_choice_model(problem)
    assert len(model.x) == 5 and len(model.choose) == 2 and len(model.budget) == 1
    spec = multiple_choice_spec(problem)
    assert spec.kind == "multiple-choice" and spec.notes["budget_rows"] == ["nnz"]


def test_validation_messages_name_the_field():
    ok_u = {"nnz": [np.array([0.0, 1.0])]}
    cases = [
        (lambda: AllocationProblem.from_groups([], {}, {}), r"^`errors` must be a non-empty list"),
        (lambda: AllocationProblem.from_groups([np.array([])], {}, {}), r"^`errors\[0\]` must hold at least one"),
        (lambda: AllocationProblem.from_groups([np.array([np.nan])], {}, {}), r"^`errors\[0\]` must be finite"),
        (lambda: AllocationProblem.from_groups([np.zeros(2)], ok_u, {}), r"^`usage` and `budgets` must name the same"),
        (lambda: AllocationProblem.from_groups([np.zeros(2)], {"nnz": [np.array([0.0, -1.0])]}, {"nnz": 1.0}),
         r"^`usage\['nnz'\]\[0\]` must be finite and >= 0"),
        (lambda: AllocationProblem.from_groups([np.zeros(3)], ok_u, {"nnz": 1.0}),
         r"^`usage\['nnz'\]\[0\]` must have 3 entries"),
        (lambda: AllocationProblem.from_groups([np.zeros(2)], ok_u, {"nnz": -1.0}), r"^`budgets\['nnz'\]` must be"),
        (lambda: AllocationProblem.from_groups([np.zeros(2)], ok_u, {"nnz": 1.0}, names=["a", "b"]),
         r"^`names` must have 1 entries"),
    ]
    for make, pattern in cases:
        with pytest.raises(InvalidInstanceError, match=pattern) as info:
            make()
        assert "\n" not in str(info.value)
    problem = AllocationProblem.from_groups([np.zeros(2)], ok_u, {"nnz": 1.0})
    with pytest.raises(InvalidInstanceError, match=r"`choice\[0\]` = 2 is not an option of group 'group0'"):
        check_choice(problem, np.array([2]))
    for kwargs, pattern in [({"solver": "cplex"}, "`solver` must be one of"), ({"time_limit": 0}, "`time_limit`"),
                            ({"rel_gap": -1}, "`rel_gap`"), ({"max_states": 0}, "`max_states`")]:
        with pytest.raises(SolverOptionError, match=pattern):
            solve_allocation(problem, **kwargs)


def test_caller_arrays_untouched_and_copied():
    e = np.array([1.0, 0.0])
    u = np.array([0.0, 1.0])
    problem = AllocationProblem.from_groups([e], {"nnz": [u]}, {"nnz": 1.0})
    e[0], u[1] = -5.0, 9.0
    assert problem.errors.tolist() == [1.0, 0.0] and problem.usage.tolist() == [[0.0, 1.0]]


def test_dp_state_cap_is_a_clear_error():
    rng = np.random.default_rng(3)
    errors = [rng.random(30) for _ in range(6)]
    use = {"a": [rng.random(30) for _ in range(6)], "b": [rng.random(30) for _ in range(6)]}
    problem = AllocationProblem.from_groups(errors, use, {"a": 3.0, "b": 3.0})
    with pytest.raises(SolverUnavailableError, match=r"max_states=50; use solver='highs'"):
        solve_allocation(problem, solver="dp", max_states=50)


def test_file_round_trip_and_corrupt_files(tmp_path):
    problem = AllocationProblem.from_groups([np.array([1.0, 0.5]), np.array([2.0])],
                                            {"nnz": [np.array([0.0, 1.0]), np.array([3.0])]},
                                            {"nnz": None}, names=["conv1", "fc"],
                                            labels=[np.array([0.0, 10.0]), np.array([4.0])])
    path = save_allocation(problem, tmp_path / "a")
    assert path.name == "a.npz"
    back = load_allocation(path)
    assert back.names == ("conv1", "fc") and back.budgets.tolist() == [math.inf]
    assert np.array_equal(back.errors, problem.errors) and np.array_equal(back.labels, problem.labels)
    with np.load(path) as z:                      # numpy alone reads it
        assert z["offsets"].tolist() == [0, 2, 3]
        arrays = {k: z[k] for k in z.files}

    def write(**change):
        p = tmp_path / f"bad{len(list(tmp_path.iterdir()))}.npz"
        np.savez(p, **{**arrays, **change})
        return p

    cases = [
        (tmp_path / "none.npz", r"allocation file '.*none.npz' does not exist$"),
        (write(format_version=np.int64(9)), r"`format_version` must be the integer 1; got 9$"),
        (write(offsets=np.array([0, 3, 2])), r"`offsets` must rise from 0"),
        (write(budgets=np.array([-1.0])), r"`budgets\['nnz'\]` must be a number >= 0"),
        (write(names=np.frombuffer(b"\xff", dtype=np.uint8)), r"`names` and `resource_names` must be UTF-8"),
        (write(errors=np.array(["a", "b", "c"])), r"`errors` must hold numbers"),
    ]
    for p, pattern in cases:
        with pytest.raises(InstanceFileError, match=pattern) as info:
            load_allocation(p)
        assert "\n" not in str(info.value)
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(path.read_bytes()[:40])
    with pytest.raises(InstanceFileError, match=r"is truncated or corrupt|missing array"):
        load_allocation(trunc)


def test_cli_allocate(tmp_path, capsys):
    import json

    from falcon_milp.cli import main
    problem = AllocationProblem.from_groups([np.array([3.0, 1.0, 0.0]), np.array([2.0, 0.5])],
                                            {"nnz": [np.array([0, 1, 2.0]), np.array([0, 1.0])]},
                                            {"nnz": 2.0}, names=["conv", "fc"])
    path = save_allocation(problem, tmp_path / "p.npz")
    assert main(["allocate", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "optimal" and out["objective"] == 1.5
    assert [r["option"] for r in out["choice"]] == [1, 1]
    assert main(["allocate", str(path), "--solver", "dp"]) == 0
    assert "status optimal" in capsys.readouterr().out
    assert main(["allocate", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and "Traceback" not in err
    assert main(["allocate", str(path), "--time-limit", "-1"]) == 2
    assert "`time_limit` must be" in capsys.readouterr().err

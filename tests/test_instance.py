import math

import numpy as np
import pytest

from falcon_milp import InvalidInstanceError, PruningInstance, check_mask


def make(**kw):
    args = dict(importances=[np.array([3.0, 1.0, 2.0]), np.array([0.5, 4.0])],
                flops_per_weight=[10.0, 2.0], max_nnz=3, max_flops=22.0, names=["conv1", "fc"])
    args.update(kw)
    return PruningInstance.from_groups(**args)


def test_attributes_read_back():
    inst = make()
    assert inst.names == ("conv1", "fc")
    assert inst.max_nnz == 3 and isinstance(inst.max_nnz, int)
    assert inst.max_flops == 22.0
    np.testing.assert_array_equal(inst.flops_per_weight, [10.0, 2.0])
    np.testing.assert_array_equal(inst.importances[0], [3, 1, 2])
    np.testing.assert_array_equal(inst.importances[1], [0.5, 4])
    assert inst.n_weights == 5 and inst.n_groups == 2
    np.testing.assert_array_equal(inst.offsets, [0, 3, 5])
    np.testing.assert_array_equal(inst.group_of_weight(), [0, 0, 0, 1, 1])


def test_none_budgets_resolve_to_dense_totals():
    inst = make(max_nnz=None, max_flops=None)
    assert inst.max_nnz == 5
    assert inst.max_flops == 34.0
    assert check_mask(inst, np.ones(5, dtype=bool)).feasible


def test_none_flops_budget_never_cuts_the_dense_mask():
    # 0.1 * 3 + 0.2 does not round to a float >= its exact value; the resolved budget must
    inst = PruningInstance.from_groups([np.ones(3), np.ones(1)], [0.1, 0.2])
    assert check_mask(inst, np.ones(4, dtype=bool)).feasible


def test_float32_is_kept_and_caller_array_untouched():
    a = np.array([1.0, 2.0], dtype=np.float32)
    inst = PruningInstance.from_groups([a, a.copy()], [1, 1])
    assert inst.importance.dtype == np.float32
    assert not inst.importance.flags.writeable
    a[0] = 9.0  # the instance holds its own copy
    assert inst.importance[0] == 1.0


def test_from_flat_matches_from_groups():
    inst = make()
    flat = PruningInstance.from_flat(inst.importance, [3, 2], [10.0, 2.0], 3, 22.0, names=["conv1", "fc"])
    np.testing.assert_array_equal(flat.importance, inst.importance)
    assert flat.budgets == inst.budgets


def test_extra_resource():
    inst = make(extra_resources={"bytes": ([4.0, 1.0], 9.0)})
    assert inst.resource_names == ("nnz", "flops", "bytes")
    assert inst.budgets[2] == 9.0
    np.testing.assert_array_equal(inst.costs[:, 2], [4.0, 1.0])


def test_with_budgets():
    inst = make().with_budgets(max_nnz=1)
    assert inst.max_nnz == 1 and inst.max_flops == 22.0     # budgets not named are kept
    free = make().with_budgets(max_flops=None)               # None = no budget, as in from_groups
    assert free.max_nnz == 3 and free.max_flops == 34.0


@pytest.mark.parametrize("kw, message", [
    (dict(importances=[np.array([1.0, np.nan]), np.array([1.0])]), r"`importances` of group 'conv1' must be finite and >= 0; got nan at index 1"),
    (dict(importances=[np.array([1.0]), np.array([np.inf])]), r"`importances` of group 'fc' must be finite and >= 0; got inf"),
    (dict(importances=[np.array([-1.0]), np.array([1.0])]), r"`importances` of group 'conv1' must be finite and >= 0; got -1.0 at index 0"),
    (dict(importances=[]), r"`importances` is empty"),
    (dict(importances=[np.array([]), np.array([1.0])]), r"`importances` of group 'conv1' is empty"),
    (dict(importances=np.ones(3)), r"`importances` must be a list with one array per group"),
    (dict(importances=[np.array(["a"]), np.array([1.0])]), r"`importances` of group 'conv1' must be numeric"),
    (dict(flops_per_weight=[1.0]), r"`flops_per_weight` must have one number per group \(2\); got 1"),
    (dict(flops_per_weight=[1.0, -2.0]), r"`flops_per_weight` of group 'fc' must be finite and >= 0; got -2.0"),
    (dict(flops_per_weight=[float("nan"), 1.0]), r"`flops_per_weight` of group 'conv1' must be finite and >= 0; got nan"),
    (dict(flops_per_weight=[float("inf"), 1.0]), r"`flops_per_weight` of group 'conv1' must be finite and >= 0; got inf"),
    (dict(flops_per_weight=["x", 1.0]), r"`flops_per_weight` of group 'conv1' must be a finite number >= 0; got 'x'"),
    (dict(max_nnz=-1), r"`max_nnz` must be an integer >= 0; got -1"),
    (dict(max_nnz=2.5), r"`max_nnz` must be an integer >= 0; got 2.5"),
    (dict(max_nnz=True), r"`max_nnz` must be an integer >= 0; got True"),
    (dict(max_flops=-0.5), r"`max_flops` must be a number >= 0; got -0.5"),
    (dict(max_flops=float("nan")), r"`max_flops` must be a number >= 0; got nan"),
    (dict(max_flops="10"), r"`max_flops` must be a number >= 0; got '10'"),
    (dict(names=["a"]), r"`names` must have one entry per group \(2\); got 1"),
    (dict(names=["a", "a"]), r"`names` must be unique; 'a' appears twice"),
    (dict(names=["a", ""]), r"`names` entry 1 must be a non-empty string"),
    (dict(extra_resources={"flops": ([1, 1], 3)}), r"`extra_resources` names must be new non-empty strings; got 'flops'"),
    (dict(extra_resources={"bytes": ([1, -1], 3)}), r"`extra_resources\['bytes'\]` of group 'fc' must be finite and >= 0; got -1.0"),
    (dict(extra_resources={"bytes": ([1, 1], -3)}), r"`extra_resources\['bytes'\] budget` must be a number >= 0; got -3.0"),
    (dict(extra_resources={"bytes": 3}), r"`extra_resources\['bytes'\]` must be a pair"),
])
def test_bad_input_messages(kw, message):
    with pytest.raises(InvalidInstanceError, match=message):
        make(**kw)


def test_bad_input_leaves_caller_data_untouched():
    arrays = [np.array([1.0, np.nan]), np.array([2.0])]
    before = [a.copy() for a in arrays]
    with pytest.raises(InvalidInstanceError):
        PruningInstance.from_groups(arrays, [1.0, 1.0])
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kw, message", [
    (dict(group_sizes=[3, 3]), r"`importance` must be 1-D with sum\(group_sizes\) = 6 entries; got shape \(5,\)"),
    (dict(group_sizes=[5, 0]), r"`group_sizes` entry 1 must be >= 1; got 0"),
    (dict(group_sizes=[2.5, 2.5]), r"`group_sizes` must hold integers"),
    (dict(importance=np.array([1, 2, 3, -4, 5.0])), r"`importances` of group 'layer1' must be finite and >= 0; got -4.0 at index 0"),
])
def test_from_flat_messages(kw, message):
    args = dict(importance=np.arange(5.0), group_sizes=[3, 2], flops_per_weight=[1, 1])
    args.update(kw)
    with pytest.raises(InvalidInstanceError, match=message):
        PruningInstance.from_flat(**args)


def test_check_mask_exact_and_messages():
    inst = PruningInstance.from_groups([np.ones(3), np.ones(1)], [0.1, 0.3], max_nnz=3, max_flops=0.3)
    # 3 * 0.1 > 0.3 exactly with binary floats: rejected
    assert not check_mask(inst, np.array([1, 1, 1, 0], dtype=bool)).feasible
    assert check_mask(inst, np.array([0, 0, 0, 1], dtype=bool)).feasible
    chk = check_mask(inst, np.array([1, 1, 1, 1], dtype=bool))
    assert set(chk.violations(inst.resource_names)) == {"nnz", "flops"}
    with pytest.raises(InvalidInstanceError, match=r"`mask` must be a bool array; got dtype int64"):
        check_mask(inst, np.array([1, 0, 0, 0]))
    with pytest.raises(InvalidInstanceError, match=r"`mask` must have shape \(4,\); got \(3,\)"):
        check_mask(inst, np.zeros(3, dtype=bool))


def test_infinite_budget_allowed():
    inst = make(max_flops=math.inf)
    assert math.isinf(inst.max_flops)
    assert check_mask(inst, np.array([1, 1, 1, 0, 0], dtype=bool)).feasible

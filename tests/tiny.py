"""Named tiny instances with answers by brute force (p <= 16), shared by every solver's tests."""
from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np

from falcon_milp import PruningInstance


def brute_force(instance: PruningInstance) -> tuple[float, np.ndarray]:
    """Exact optimum by enumerating all 2^p masks (p <= 16), budgets compared exactly."""
    p = instance.n_weights
    assert p <= 16, "brute force is for tiny instances"
    imp = instance.importance.astype(np.float64)
    group = instance.group_of_weight()
    budgets = [Fraction(float(b)) if np.isfinite(float(b)) else None for b in instance.budgets]
    costs = [[Fraction(float(c)) for c in instance.costs[l]] for l in range(instance.n_groups)]
    best, best_mask = -1.0, None
    for bits in itertools.product((0, 1), repeat=p):
        mask = np.array(bits, dtype=bool)
        counts = np.bincount(group[mask], minlength=instance.n_groups)
        ok = True
        for r, b in enumerate(budgets):
            if b is not None and sum(costs[l][r] * int(counts[l]) for l in range(instance.n_groups)) > b:
                ok = False
                break
        if ok:
            val = float(imp[mask].sum())
            if val > best:
                best, best_mask = val, mask
    return best, best_mask


def _inst(groups, flops, s, f, **kw) -> PruningInstance:
    return PruningInstance.from_groups([np.asarray(g, dtype=float) for g in groups], flops,
                                       max_nnz=s, max_flops=f, **kw)


def tiny_instances() -> dict[str, PruningInstance]:
    """Hand-checkable cases: each one exercises a different corner of the problem."""
    rng = np.random.default_rng(12345)
    cases = {
        # FLOP budget binds, NNZ does not: keep cheap layer b
        "flops-binding": _inst([[5, 4, 3], [3, 2.5, 1]], [4, 1], 6, 9),
        # NNZ budget binds, FLOPs free
        "nnz-binding": _inst([[5, 4, 3], [3, 2.5, 1]], [4, 1], 2, None),
        # both bind; greedy by ratio is not optimal
        "both-binding": _inst([[10, 9, 1], [4, 3, 3, 2]], [5, 2], 3, 14),
        # nothing fits
        "zero-budget": _inst([[1, 2], [3]], [1, 1], 0, 0),
        "zero-flops": _inst([[1, 2], [3]], [1, 1], 3, 0),
        # everything fits
        "loose": _inst([[1, 2], [3, 4]], [1, 2], 10, 100),
        # zero-cost layer (e.g. a layer that costs no FLOPs), ties, zero importances
        "free-layer-ties": _inst([[1, 1, 1], [2, 2, 0], [0.5]], [0, 3, 1], 4, 4),
        # non-integer costs where rounding matters: 0.1 * 3 > 0.3 in floats
        "fractional-costs": _inst([[1, 1, 1], [0.9]], [0.1, 0.3], 3, 0.3),
        "single-group": _inst([[3, 1, 2, 5]], [2], 3, 5),
        # an extra resource (bytes) that binds
        "extra-resource": _inst([[5, 4], [3, 3], [2, 1]], [1, 1, 1], 6, None,
                                extra_resources={"bytes": ([4, 1, 2], 7)}),
    }
    for k in range(4):  # random ones, both budgets around half
        sizes = rng.integers(1, 5, size=rng.integers(2, 5))
        while sizes.sum() > 14:
            sizes = sizes[:-1]
        groups = [rng.random(n) ** 2 for n in sizes]
        flops = rng.integers(1, 9, size=sizes.size).astype(float)
        p, total = int(sizes.sum()), float((flops * sizes).sum())
        cases[f"random-{k}"] = _inst(groups, flops, int(rng.integers(1, p)), float(rng.integers(1, total)))
    return cases

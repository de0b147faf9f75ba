"""The pruning instance: groups of weights, per-weight importances, resource costs and budgets.

A group is one prunable tensor (layer). Inside a group every weight has the same cost for
each resource; resource 0 is the nonzero count (cost 1, budget S = ``max_nnz``) and
resource 1 the FLOPs (cost f_l, budget F = ``max_flops``). Further resources (bytes, a
measured latency per weight, ...) have the same shape: one cost per group and one budget.

The selection problem is

    max  sum_i I_i z_i   s.t.  sum_l c_{l,r} * (number of kept weights of group l) <= B_r  for all r,
                              z in {0, 1}^p.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Mapping, Sequence

import numpy as np

from . import _validation as v
from .exceptions import InvalidInstanceError

NNZ, FLOPS = 0, 1


def _ceil_float(x: Fraction) -> float:
    """The smallest float >= x (so that a budget resolved from an exact total never cuts it)."""
    f = float(x)
    return f if Fraction(f) >= x else math.nextafter(f, math.inf)


@dataclass(frozen=True, eq=False)
class PruningInstance:
    """An immutable pruning problem. Build it with :meth:`from_groups` or :meth:`from_flat`.

    Attributes
    ----------
    importance : (p,) float32/float64 array, read-only, groups concatenated in order.
    group_sizes : (L,) int64, number of weights of each group.
    names : group names, unique.
    costs : (L, R) float64, cost per kept weight of each group for each resource.
    budgets : tuple of R budgets; ``budgets[0]`` is the int S, the others floats (inf allowed).
    resource_names : ("nnz", "flops", ...extra).
    metadata : free-form JSON-serialisable dict (model, input shape, importance kind, source).
    """

    importance: np.ndarray
    group_sizes: np.ndarray
    names: tuple[str, ...]
    costs: np.ndarray
    budgets: tuple[Any, ...]
    resource_names: tuple[str, ...] = ("nnz", "flops")
    metadata: dict = field(default_factory=dict)

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_groups(
        cls,
        importances: Sequence[Any],
        flops_per_weight: Sequence[float],
        max_nnz: int | None = None,
        max_flops: float | None = None,
        names: Sequence[str] | None = None,
        extra_resources: Mapping[str, tuple[Sequence[float], float | None]] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> "PruningInstance":
        """Build from one importance array per group and one FLOP cost per weight of each group.

        ``max_nnz=None`` / ``max_flops=None`` mean no such budget (resolved to the dense total).
        ``extra_resources`` maps a resource name to (cost per weight of each group, budget).
        The caller's arrays are copied, never modified.
        """
        if isinstance(importances, np.ndarray) or not isinstance(importances, Sequence):
            raise InvalidInstanceError(
                "`importances` must be a list with one array per group; got "
                f"{type(importances).__name__}")
        if len(importances) == 0:
            raise InvalidInstanceError("`importances` is empty; an instance needs at least one group")
        n_groups = len(importances)
        group_names = v.check_names(names, n_groups)
        arrays = [v.as_importance_array(a, group_names[i]) for i, a in enumerate(importances)]
        dtype = np.float32 if all(a.dtype == np.float32 for a in arrays) else np.float64
        flat = np.concatenate([a.astype(dtype, copy=False) for a in arrays])
        sizes = np.array([a.size for a in arrays], dtype=np.int64)
        return cls._build(flat, sizes, group_names, flops_per_weight, max_nnz, max_flops,
                          extra_resources, metadata)

    @classmethod
    def from_flat(
        cls,
        importance: np.ndarray,
        group_sizes: Sequence[int],
        flops_per_weight: Sequence[float],
        max_nnz: int | None = None,
        max_flops: float | None = None,
        names: Sequence[str] | None = None,
        extra_resources: Mapping[str, tuple[Sequence[float], float | None]] | None = None,
        metadata: Mapping[str, Any] | None = None,
        copy: bool = True,
    ) -> "PruningInstance":
        """Build from one flat importance array and the group sizes (cheap at 25M weights).

        With ``copy=False`` a float32/float64 array is used as it is (made read-only view).
        """
        sizes = v.check_group_sizes(group_sizes)
        group_names = v.check_names(names, sizes.size)
        arr = np.asarray(importance)
        if arr.ndim != 1 or arr.size != int(sizes.sum()):
            raise InvalidInstanceError(
                f"`importance` must be 1-D with sum(group_sizes) = {int(sizes.sum())} entries; "
                f"got shape {arr.shape}")
        if arr.dtype not in (np.float32, np.float64):
            if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
                raise InvalidInstanceError(f"`importance` must be real numbers; got dtype {arr.dtype}")
            arr = arr.astype(np.float64)
        elif copy:
            arr = arr.copy()
        bad = v._first_bad(arr)
        if bad is not None:
            offsets = np.concatenate([[0], np.cumsum(sizes)])
            g = int(np.searchsorted(offsets, bad[0], side="right") - 1)
            raise InvalidInstanceError(
                f"`importances` of group '{group_names[g]}' must be finite and >= 0; "
                f"got {bad[1]!r} at index {bad[0] - int(offsets[g])}")
        return cls._build(arr, sizes, group_names, flops_per_weight, max_nnz, max_flops,
                          extra_resources, metadata)

    @classmethod
    def _build(cls, flat, sizes, names, flops_per_weight, max_nnz, max_flops,
               extra_resources, metadata) -> "PruningInstance":
        n_groups = sizes.size
        flops = cls._cost_column(flops_per_weight, "flops_per_weight", names)
        columns = [np.ones(n_groups), flops]
        resource_names = ["nnz", "flops"]
        raw_budgets: list[Any] = [max_nnz, max_flops]
        for rname, spec in (extra_resources or {}).items():
            if not isinstance(rname, str) or not rname or rname in resource_names:
                raise InvalidInstanceError(
                    f"`extra_resources` names must be new non-empty strings; got {rname!r}")
            try:
                costs_r, budget_r = spec
            except (TypeError, ValueError):
                raise InvalidInstanceError(
                    f"`extra_resources['{rname}']` must be a pair (costs per group, budget)") from None
            columns.append(cls._cost_column(costs_r, f"extra_resources['{rname}']", names))
            resource_names.append(rname)
            raw_budgets.append(budget_r)
        costs = np.column_stack(columns).astype(np.float64)
        p = int(sizes.sum())
        budgets: list[Any] = [v.check_max_nnz(raw_budgets[0], p)]
        for r in range(1, len(resource_names)):
            field_name = "max_flops" if r == FLOPS else f"extra_resources['{resource_names[r]}'] budget"
            if raw_budgets[r] is None:
                total = sum((Fraction(float(c)) * int(n) for c, n in zip(costs[:, r], sizes)), Fraction(0))
                budgets.append(_ceil_float(total))
            else:
                budgets.append(v.check_budget(raw_budgets[r], field_name))
        meta = dict(metadata or {})
        flat.flags.writeable = False
        sizes.flags.writeable = False
        costs.flags.writeable = False
        return cls(flat, sizes, tuple(names), costs, tuple(budgets), tuple(resource_names), meta)

    @staticmethod
    def _cost_column(values: Any, field_name: str, names: tuple[str, ...]) -> np.ndarray:
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise InvalidInstanceError(
                f"`{field_name}` must have one number per group ({len(names)}); got {values!r}")
        vals = list(values)
        if len(vals) != len(names):
            raise InvalidInstanceError(
                f"`{field_name}` must have one number per group ({len(names)}); got {len(vals)}")
        return np.array([v.check_cost(x, field_name, names[i]) for i, x in enumerate(vals)])

    # ----------------------------------------------------------------- views
    @property
    def n_weights(self) -> int:
        return int(self.importance.size)

    @property
    def n_groups(self) -> int:
        return int(self.group_sizes.size)

    @property
    def n_resources(self) -> int:
        return len(self.resource_names)

    @property
    def offsets(self) -> np.ndarray:
        """(L+1,) start of each group in the flat arrays; offsets[-1] = p."""
        out = np.zeros(self.n_groups + 1, dtype=np.int64)
        np.cumsum(self.group_sizes, out=out[1:])
        return out

    @property
    def importances(self) -> list[np.ndarray]:
        """One read-only view per group."""
        return np.split(self.importance, self.offsets[1:-1])

    @property
    def flops_per_weight(self) -> np.ndarray:
        return self.costs[:, FLOPS]

    @property
    def max_nnz(self) -> int:
        return int(self.budgets[NNZ])

    @property
    def max_flops(self) -> float:
        return float(self.budgets[FLOPS])

    @property
    def total_flops(self) -> float:
        """Dense FLOPs, sum_l f_l * n_l (float)."""
        return float(np.dot(self.costs[:, FLOPS], self.group_sizes))

    def weight_costs(self, resource: int = FLOPS) -> np.ndarray:
        """(p,) cost of each weight for one resource (materialised: O(p) memory)."""
        return np.repeat(self.costs[:, resource], self.group_sizes)

    def group_of_weight(self) -> np.ndarray:
        """(p,) index of the group of each weight."""
        return np.repeat(np.arange(self.n_groups), self.group_sizes)

    def with_budgets(self, **budgets: Any) -> "PruningInstance":
        """A copy with some budgets changed: ``max_nnz=``, ``max_flops=`` or an extra resource name."""
        new = list(self.budgets)
        for key, value in budgets.items():
            if key == "max_nnz":
                new[NNZ] = v.check_max_nnz(value, self.n_weights)
            elif key == "max_flops":
                new[FLOPS] = self.max_flops if value is None else v.check_budget(value, "max_flops")
            elif key in self.resource_names[2:]:
                new[self.resource_names.index(key)] = v.check_budget(value, f"extra_resources['{key}'] budget")
            else:
                raise InvalidInstanceError(f"unknown budget `{key}`; known: max_nnz, max_flops, "
                                           + ", ".join(self.resource_names[2:]))
        return PruningInstance(self.importance, self.group_sizes, self.names, self.costs,
                               tuple(new), self.resource_names, dict(self.metadata))

    def summary(self) -> dict[str, Any]:
        """Sizes and budgets, JSON-friendly (what `falcon-milp info` prints)."""
        return {
            "n_weights": self.n_weights,
            "n_groups": self.n_groups,
            "dtype": str(self.importance.dtype),
            "resources": {
                name: {"budget": self.budgets[r],
                       "dense_total": float(np.dot(self.costs[:, r], self.group_sizes))}
                for r, name in enumerate(self.resource_names)},
            "total_importance": float(np.sum(self.importance, dtype=np.float64)),
            "metadata": self.metadata,
        }

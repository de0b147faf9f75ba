"""Channel-count problems: how many channels each coupled group keeps, under bilinear budgets.

Group g (channels that must be pruned together: a layer's outputs, BatchNorm, the inputs of its
consumers, every layer tied by a residual addition) keeps k_g of its n_g channels, at least
``min_keep[g]``; the channels are kept in a fixed order (descending importance), so the value of
keeping k_g is the prefix sum ``V_g(k) = sum_{j<k} values_g[j]`` of non-increasing values >= 0
(a concave function of k). A resource r uses

    u_r(k) = const_r + sum_g lin_r[g] k_g + sum_(g, h) pair_r[g, h] k_g k_h

(a convolution from group g to group h with a kh x kw kernel costs H_out W_out kh kw k_g k_h
MACs: one pair term; with a fixed input or output, or depthwise, it is linear), all coefficients >= 0. The problem

    max  sum_g V_g(k_g)   s.t.  u_r(k) <= B_r  for every resource r,  min_keep <= k <= n,  k integer

is solved by :func:`falcon_milp.solvers.channels.solve_channels` (formulation:
``formulations/channels.md``). :func:`check_counts` sums every use in exact rational arithmetic
(every float is a dyadic rational), the check every returned count vector passes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Mapping, Sequence

import numpy as np

from .exceptions import InvalidInstanceError

__all__ = ["ChannelProblem", "ChannelResource", "CountCheck", "check_counts"]


@dataclass(frozen=True, eq=False)
class ChannelResource:
    """u(k) = constant + lin . k + sum_i pair_coef[i] k[pair_g[i]] k[pair_h[i]]."""

    constant: float
    lin: np.ndarray            # (G,)
    pair_g: np.ndarray         # (P,) int64
    pair_h: np.ndarray         # (P,) int64
    pair_coef: np.ndarray      # (P,) float64, > 0

    def value(self, counts: np.ndarray) -> float:
        """u(k) in float64 (the exact sum is :func:`check_counts`)."""
        k = np.asarray(counts, dtype=np.float64)
        return float(self.constant + self.lin @ k + np.sum(self.pair_coef * k[self.pair_g] * k[self.pair_h]))

    def exact(self, counts: Sequence[int]) -> Fraction:
        total = Fraction(float(self.constant))
        for g in np.flatnonzero(self.lin):
            total += Fraction(float(self.lin[g])) * int(counts[g])
        for g, h, c in zip(self.pair_g, self.pair_h, self.pair_coef):
            total += Fraction(float(c)) * int(counts[g]) * int(counts[h])
        return total


def _resource(spec: Any, name: str, G: int) -> ChannelResource:
    if isinstance(spec, ChannelResource):
        spec = {"constant": spec.constant, "lin": spec.lin,
                "pairs": list(zip(spec.pair_g.tolist(), spec.pair_h.tolist(), spec.pair_coef.tolist()))}
    if not isinstance(spec, Mapping):
        raise InvalidInstanceError(f"`resources['{name}']` must be a dict with 'constant', 'lin', 'pairs'")
    const = float(spec.get("constant", 0.0))
    lin = np.zeros(G) if spec.get("lin") is None else np.asarray(spec["lin"], dtype=np.float64)
    if lin.shape != (G,):
        raise InvalidInstanceError(f"`resources['{name}'].lin` must have {G} entries (one per group); "
                                   f"got shape {lin.shape}")
    merged: dict[tuple[int, int], float] = {}
    for i, item in enumerate(spec.get("pairs", ())):
        if not isinstance(item, Sequence) or len(item) != 3 or any(
                isinstance(v, bool) or not float(v).is_integer() for v in item[:2]):
            raise InvalidInstanceError(f"`resources['{name}'].pairs[{i}]` must be (group, group, coefficient) "
                                       f"with integer groups; got {item!r}")
        g, h, c = item
        g, h = int(g), int(h)
        if not (0 <= g < G and 0 <= h < G):
            raise InvalidInstanceError(f"`resources['{name}'].pairs` names group {max(g, h)}; "
                                       f"there are {G} groups")
        key = (min(g, h), max(g, h))
        merged[key] = merged.get(key, 0.0) + float(c)
    pairs = [(g, h, c) for (g, h), c in merged.items() if c != 0.0]
    coef = np.array([c for _, _, c in pairs], dtype=np.float64)
    for label, arr in (("constant", np.array([const])), ("lin", lin), ("pairs", coef)):
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise InvalidInstanceError(f"`resources['{name}'].{label}` must be finite and >= 0")
    return ChannelResource(const, lin, np.array([p[0] for p in pairs], dtype=np.int64),
                           np.array([p[1] for p in pairs], dtype=np.int64), coef)


@dataclass(frozen=True, eq=False)
class ChannelProblem:
    """Groups (sizes, kept-value curves, minimum counts), resources and budgets (module docstring).

    Build with :meth:`from_groups`. ``values[g]``: the n_g channel values of group g in the
    order they are kept (non-increasing, >= 0); ``resources[r]``: a :class:`ChannelResource`;
    ``budgets[r]``: its budget (inf = none).
    """

    names: tuple[str, ...]
    sizes: np.ndarray
    min_keep: np.ndarray
    values: tuple[np.ndarray, ...]
    resources: dict[str, ChannelResource]
    budgets: dict[str, float]
    metadata: dict[str, Any] = field(default_factory=dict)
    round_to: int = 1

    @classmethod
    def from_groups(cls, values: Sequence[Any], resources: Mapping[str, Any],
                    budgets: Mapping[str, float | None], names: Sequence[str] | None = None,
                    min_keep: Sequence[int] | int = 1,
                    metadata: dict[str, Any] | None = None, round_to: int = 1) -> "ChannelProblem":
        """``values[g]``: group g's channel values in keep order; ``resources[r]``: a dict with
        ``constant``, ``lin`` (G,) and ``pairs`` [(g, h, coef), ...] (or a ChannelResource);
        ``budgets[r]``: a number >= 0 or None; ``round_to``: kept counts are multiples of it
        (or the whole group; hardware-friendly widths). Raises InvalidInstanceError naming the
        field; the arguments are not modified."""
        if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
            raise InvalidInstanceError(f"`round_to` must be an integer >= 1; got {round_to!r}")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise InvalidInstanceError("`values` must be a non-empty list with one array per group")
        vals = []
        for g, v in enumerate(values):
            a = np.array(v, dtype=np.float64).reshape(-1)
            if a.size == 0:
                raise InvalidInstanceError(f"`values[{g}]` must hold at least one channel; got none")
            if not np.all(np.isfinite(a)) or np.any(a < 0):
                raise InvalidInstanceError(f"`values[{g}]` must be finite and >= 0")
            if np.any(np.diff(a) > 0):
                raise InvalidInstanceError(f"`values[{g}]` must be non-increasing (channels in keep order)")
            a.setflags(write=False)
            vals.append(a)
        G = len(vals)
        sizes = np.array([a.size for a in vals], dtype=np.int64)
        mk = np.asarray(min_keep, dtype=np.float64)
        if mk.ndim > 1 or (mk.ndim == 1 and mk.shape[0] != G):
            raise InvalidInstanceError(f"`min_keep` must be one integer or {G} (one per group); got shape {mk.shape}")
        mk = np.broadcast_to(mk, (G,))
        if np.any(mk != np.round(mk)) or np.any(mk < 0) or np.any(mk > sizes):
            bad = int(np.flatnonzero((mk != np.round(mk)) | (mk < 0) | (mk > sizes))[0])
            raise InvalidInstanceError(f"`min_keep[{bad}]` must be an integer in [0, {int(sizes[bad])}]; "
                                       f"got {mk[bad]}")
        if not isinstance(resources, Mapping) or not isinstance(budgets, Mapping):
            raise InvalidInstanceError("`resources` and `budgets` must be dicts keyed by resource name")
        if set(resources) != set(budgets):
            raise InvalidInstanceError("`resources` and `budgets` must name the same resources; differ in "
                                       f"{sorted(set(resources) ^ set(budgets))}")
        res = {str(r): _resource(resources[r], str(r), G) for r in resources}
        bud = {}
        for r in resources:
            b = budgets[r]
            b = math.inf if b is None else b
            if isinstance(b, bool) or not isinstance(b, (int, float, np.integer, np.floating)) \
                    or math.isnan(float(b)) or float(b) < 0:
                raise InvalidInstanceError(f"`budgets['{r}']` must be a number >= 0 or None; got {b!r}")
            bud[str(r)] = float(b)
        names = tuple(f"group{g}" for g in range(G)) if names is None else tuple(str(n) for n in names)
        if len(names) != G:
            raise InvalidInstanceError(f"`names` must have {G} entries (one per group); got {len(names)}")
        return cls(names, sizes, mk.astype(np.int64), tuple(vals), res, bud, dict(metadata or {}), int(round_to))

    @property
    def n_groups(self) -> int:
        return len(self.names)

    def options(self, g: int) -> np.ndarray:
        """The counts group g may keep: multiples of ``round_to`` in [min_keep, n], and n."""
        lo, n, r = int(self.min_keep[g]), int(self.sizes[g]), self.round_to
        ks = np.arange(-(-lo // r) * r, n + 1, r, dtype=np.int64) if r > 1 else np.arange(lo, n + 1, dtype=np.int64)
        ks = ks[ks >= max(lo, 1 if r > 1 else lo)]
        return ks if ks.size and ks[-1] == n else np.append(ks, n)

    def value(self, counts: np.ndarray) -> float:
        """sum_g V_g(k_g) (float64)."""
        return float(sum(v[:int(k)].sum() for v, k in zip(self.values, counts)))

    def usage(self, counts: np.ndarray) -> dict[str, float]:
        return {r: res.value(counts) for r, res in self.resources.items()}


@dataclass(frozen=True)
class CountCheck:
    """Exact use of every resource by a count vector, next to the budgets."""

    usage: dict[str, Fraction]
    budgets: dict[str, Fraction | None]

    @property
    def feasible(self) -> bool:
        return all(b is None or self.usage[r] <= b for r, b in self.budgets.items())

    def violated(self) -> list[str]:
        return [r for r, b in self.budgets.items() if b is not None and self.usage[r] > b]


def check_counts(problem: ChannelProblem, counts: Any) -> CountCheck:
    """Validate ``counts`` ((G,) integers in [min_keep, n], multiples of round_to or n) and sum
    every use exactly."""
    c = np.asarray(counts)
    if c.shape != (problem.n_groups,) or not np.issubdtype(c.dtype, np.integer):
        raise InvalidInstanceError(f"`counts` must be an integer array of shape ({problem.n_groups},); "
                                   f"got {c.dtype} {c.shape}")
    bad = np.flatnonzero((c < problem.min_keep) | (c > problem.sizes))
    if bad.size:
        g = int(bad[0])
        raise InvalidInstanceError(f"`counts[{g}]` = {int(c[g])} is outside [{int(problem.min_keep[g])}, "
                                   f"{int(problem.sizes[g])}] for group '{problem.names[g]}'")
    if problem.round_to > 1:
        off = [g for g in range(problem.n_groups) if c[g] % problem.round_to and c[g] != problem.sizes[g]]
        if off:
            g = off[0]
            raise InvalidInstanceError(f"`counts[{g}]` = {int(c[g])} is not a multiple of round_to = "
                                       f"{problem.round_to} (nor the whole group '{problem.names[g]}')")
    usage = {r: res.exact(c) for r, res in problem.resources.items()}
    budgets = {r: (Fraction(b) if math.isfinite(b) else None) for r, b in problem.budgets.items()}
    return CountCheck(usage, budgets)

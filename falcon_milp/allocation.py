"""Allocation problems: pick one option per group under several budgets (a multiple-choice knapsack).

Group g (a layer) has options j = 0..J_g-1 (kept-weight levels, say), each with a cost
e_{g,j} (an error to minimise, any real number) and a use u^r_{g,j} >= 0 of every resource r:

    min  sum_g e_{g, j_g}   s.t.  sum_g u^r_{g, j_g} <= B_r  for every resource r.

Curves need not be convex or monotone. Feasibility is checked exactly: every use and budget is
a float, i.e. an exact dyadic rational, summed with :class:`fractions.Fraction`.

Files (:func:`save_allocation` / :func:`load_allocation`): a NumPy ``.npz`` archive readable
with numpy alone, nothing pickled: ``format_version`` (int64), ``offsets`` (G+1,) int64 (group
g's options are entries offsets[g]:offsets[g+1]), ``errors`` (J,) float64, ``usage`` (R, J)
float64, ``budgets`` (R,) float64 (inf = no budget), ``names`` / ``resource_names`` as UTF-8
JSON bytes (uint8 arrays) and ``labels`` (J,) float64 (what each option is, e.g. its kept count).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .exceptions import InstanceFileError, InvalidInstanceError
from .io import read_npz_arrays

__all__ = ["ALLOCATION_FORMAT_VERSION", "AllocationProblem", "AllocationResult", "ChoiceCheck",
           "check_choice", "load_allocation", "save_allocation"]

ALLOCATION_FORMAT_VERSION = 1


def _vector(x: Any, name: str, n: int | None = None) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInstanceError(f"`{name}` must be an array of numbers; got {type(x).__name__}") from None
    if a.ndim != 1:
        raise InvalidInstanceError(f"`{name}` must be one-dimensional; got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise InvalidInstanceError(f"`{name}` must have {n} entries (one per option); got {a.shape[0]}")
    return a


@dataclass(frozen=True, eq=False)
class AllocationProblem:
    """Options per group: errors, resource uses, budgets (module docstring).

    Build with :meth:`from_groups`; arrays are stored flat (``offsets`` delimit the groups).
    ``labels``: what each option is (a kept count, say; default its index in the group).
    """

    offsets: np.ndarray
    errors: np.ndarray
    usage: np.ndarray
    budgets: np.ndarray
    names: tuple[str, ...]
    resource_names: tuple[str, ...]
    labels: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_groups(cls, errors: Sequence[Any], usage: Mapping[str, Sequence[Any]],
                    budgets: Mapping[str, float | None], names: Sequence[str] | None = None,
                    labels: Sequence[Any] | None = None,
                    metadata: dict[str, Any] | None = None) -> "AllocationProblem":
        """``errors[g]``: the J_g option errors of group g; ``usage[r][g]``: their use of resource
        r; ``budgets[r]``: its budget (None = no budget). Raises InvalidInstanceError naming the
        field at the first problem; the arguments are not modified."""
        if isinstance(errors, (str, bytes)) or not isinstance(errors, Sequence) or len(errors) == 0:
            raise InvalidInstanceError("`errors` must be a non-empty list with one array per group")
        G = len(errors)
        errs = [_vector(e, f"errors[{g}]") for g, e in enumerate(errors)]
        for g, e in enumerate(errs):
            if e.size == 0:
                raise InvalidInstanceError(f"`errors[{g}]` must hold at least one option; got none")
            if not np.all(np.isfinite(e)):
                raise InvalidInstanceError(f"`errors[{g}]` must be finite; got {e[~np.isfinite(e)][0]}")
        sizes = np.array([e.size for e in errs], dtype=np.int64)
        if not isinstance(usage, Mapping) or not isinstance(budgets, Mapping):
            raise InvalidInstanceError("`usage` and `budgets` must be dicts keyed by resource name")
        if set(usage) != set(budgets):
            extra = sorted(set(usage) ^ set(budgets))
            raise InvalidInstanceError(f"`usage` and `budgets` must name the same resources; differ in {extra}")
        rnames = tuple(str(r) for r in usage)
        rows, bud = [], []
        for r in rnames:
            per = usage[r]
            if isinstance(per, (str, bytes)) or not isinstance(per, Sequence) or len(per) != G:
                raise InvalidInstanceError(f"`usage['{r}']` must be a list with one array per group ({G})")
            parts = [_vector(u, f"usage['{r}'][{g}]", int(sizes[g])) for g, u in enumerate(per)]
            for g, u in enumerate(parts):
                if not np.all(np.isfinite(u)) or np.any(u < 0):
                    raise InvalidInstanceError(f"`usage['{r}'][{g}]` must be finite and >= 0")
            rows.append(np.concatenate(parts))
            b = budgets[r]
            if b is None:
                b = math.inf
            if isinstance(b, bool) or not isinstance(b, (int, float, np.integer, np.floating)) \
                    or math.isnan(float(b)) or float(b) < 0:
                raise InvalidInstanceError(f"`budgets['{r}']` must be a number >= 0 or None; got {b!r}")
            bud.append(float(b))
        if names is None:
            names = [f"group{g}" for g in range(G)]
        names = tuple(str(n) for n in names)
        if len(names) != G:
            raise InvalidInstanceError(f"`names` must have {G} entries (one per group); got {len(names)}")
        if labels is None:
            lab = np.concatenate([np.arange(n, dtype=np.float64) for n in sizes])
        else:
            if len(labels) != G:
                raise InvalidInstanceError(f"`labels` must have {G} entries (one per group); got {len(labels)}")
            lab = np.concatenate([_vector(l, f"labels[{g}]", int(sizes[g])) for g, l in enumerate(labels)])
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        usage_arr = np.vstack(rows) if rows else np.zeros((0, int(offsets[-1])))
        return cls(offsets, np.concatenate(errs), usage_arr, np.array(bud, dtype=np.float64), names,
                   rnames, lab, dict(metadata or {}))

    @property
    def n_groups(self) -> int:
        return len(self.names)

    @property
    def n_options(self) -> int:
        return int(self.offsets[-1])

    def group(self, g: int) -> slice:
        return slice(int(self.offsets[g]), int(self.offsets[g + 1]))

    def objective(self, choice: np.ndarray) -> float:
        """sum_g e_{g, choice[g]} in float64 (``choice``: option index inside each group)."""
        return float(np.sum(self.errors[self.offsets[:-1] + np.asarray(choice, dtype=np.int64)]))


@dataclass(frozen=True)
class ChoiceCheck:
    """Exact use of every resource by a choice, next to the budgets."""

    usage: tuple[Fraction, ...]
    budgets: tuple[Fraction, ...]

    @property
    def feasible(self) -> bool:
        return all(u <= b for u, b in zip(self.usage, self.budgets))


def check_choice(problem: AllocationProblem, choice: Any) -> ChoiceCheck:
    """Validate ``choice`` ((G,) option index per group) and sum its resource use exactly."""
    c = np.asarray(choice)
    if c.shape != (problem.n_groups,) or not np.issubdtype(c.dtype, np.integer):
        raise InvalidInstanceError(f"`choice` must be an integer array of shape ({problem.n_groups},); "
                                   f"got {c.dtype} {c.shape}")
    sizes = np.diff(problem.offsets)
    bad = np.flatnonzero((c < 0) | (c >= sizes))
    if bad.size:
        g = int(bad[0])
        raise InvalidInstanceError(f"`choice[{g}]` = {int(c[g])} is not an option of group '{problem.names[g]}' "
                                   f"(0..{int(sizes[g]) - 1})")
    idx = problem.offsets[:-1] + c.astype(np.int64)
    usage = tuple(sum((Fraction(float(u)) for u in problem.usage[r, idx]), Fraction(0))
                  for r in range(problem.usage.shape[0]))
    budgets = tuple(Fraction(float(b)) if math.isfinite(b) else Fraction(10**400) for b in problem.budgets)
    return ChoiceCheck(usage, budgets)


@dataclass
class AllocationResult:
    """A solved allocation. ``choice``: option index per group (None without a solution);
    ``objective``: its error sum; ``bound``: proven lower bound on the optimum (-inf if none);
    ``gap`` = (objective - bound) / max(|objective|, 1e-12); ``status``: ``optimal`` (gap <=
    1e-9), ``feasible`` or ``no_solution``; ``usage``: exact use per resource (as floats)."""

    choice: np.ndarray | None
    objective: float
    bound: float
    gap: float
    status: str
    solver: str
    runtime_s: float
    usage: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def labels(self, problem: AllocationProblem) -> np.ndarray:
        """The chosen options' labels (e.g. kept counts), one per group."""
        if self.choice is None:
            raise InvalidInstanceError("no solution: the allocation has no choice")
        return problem.labels[problem.offsets[:-1] + self.choice]


def _json_bytes(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)


def save_allocation(problem: AllocationProblem, path: str | os.PathLike) -> Path:
    """Write ``problem`` to ``path`` (``.npz`` appended if missing); returns the path."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    with open(path, "wb") as fh:
        np.savez_compressed(fh, format_version=np.int64(ALLOCATION_FORMAT_VERSION), offsets=problem.offsets,
                            errors=problem.errors, usage=problem.usage, budgets=problem.budgets,
                            labels=problem.labels, names=_json_bytes(list(problem.names)),
                            resource_names=_json_bytes(list(problem.resource_names)))
    return path


def load_allocation(path: str | os.PathLike) -> AllocationProblem:
    """Read a file written by :func:`save_allocation` (or by hand, same keys); every array is
    re-validated through :meth:`AllocationProblem.from_groups`."""
    keys = ("format_version", "offsets", "errors", "usage", "budgets", "labels", "names", "resource_names")
    where = f"allocation file '{path}'"
    data = read_npz_arrays(path, keys, where, "a falcon-milp allocation")
    version = data["format_version"]
    if version.shape != () or not np.issubdtype(version.dtype, np.integer) \
            or int(version) != ALLOCATION_FORMAT_VERSION:
        raise InstanceFileError(f"{where}: `format_version` must be the integer {ALLOCATION_FORMAT_VERSION}; "
                                f"got {version.tolist()!r}")
    try:
        names = json.loads(data["names"].astype(np.uint8).tobytes().decode())
        rnames = json.loads(data["resource_names"].astype(np.uint8).tobytes().decode())
        if not all(isinstance(x, list) and all(isinstance(n, str) for n in x) for x in (names, rnames)):
            raise ValueError
    except (UnicodeDecodeError, ValueError, TypeError):
        raise InstanceFileError(f"{where}: `names` and `resource_names` must be UTF-8 JSON lists of "
                                "strings") from None
    if len(set(rnames)) != len(rnames):
        raise InstanceFileError(f"{where}: `resource_names` must be distinct; got {rnames}")
    for key in ("errors", "usage", "budgets", "labels", "offsets"):
        if not (np.issubdtype(data[key].dtype, np.number) or data[key].dtype == bool):
            raise InstanceFileError(f"{where}: `{key}` must hold numbers; got dtype {data[key].dtype}")
    off = np.asarray(data["offsets"], dtype=np.int64)
    n = int(data["errors"].shape[0]) if data["errors"].ndim == 1 else -1
    if off.ndim != 1 or off.size < 2 or off[0] != 0 or np.any(np.diff(off) < 1) or off[-1] != n:
        raise InstanceFileError(f"{where}: `offsets` must rise from 0 to the number of options")
    usage = np.asarray(data["usage"], dtype=np.float64)
    if usage.ndim != 2 or usage.shape != (len(rnames), n) or data["budgets"].shape != (len(rnames),):
        raise InstanceFileError(f"{where}: `usage` must be (resources, options) and `budgets` (resources,)")
    groups = [slice(int(a), int(b)) for a, b in zip(off[:-1], off[1:])]
    try:
        return AllocationProblem.from_groups(
            [data["errors"][s] for s in groups],
            {r: [usage[i, s] for s in groups] for i, r in enumerate(rnames)},
            {r: float(b) for r, b in zip(rnames, data["budgets"])}, names,
            [data["labels"][s] for s in groups])
    except InvalidInstanceError as exc:
        raise InstanceFileError(f"{where}: {exc}") from None

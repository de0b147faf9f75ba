"""Pyomo formulations of the selection problem (math: ``formulations/*.md``).

- ``"ilp"``: per-weight ILP, one binary per weight (:func:`build_per_weight_model`);
- ``"lp"``: its LP relaxation (``relax=True``);
- ``"compact"``: one integer count and one epigraph variable per layer (:func:`build_compact_model`);
- allocation problems (one option per group under several budgets): the multiple-choice
  knapsack of :func:`build_multiple_choice_model`.

Every builder returns a Pyomo ``ConcreteModel`` a user can inspect, modify, solve with any
Pyomo solver, or write with :func:`write_model`; :func:`mask_from_model` reads the mask back
from a solved model. Pyomo is imported only when a model is built.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..exceptions import SolverOptionError
from ..instance import PruningInstance
from ..validation import choice
from .compact import build_compact_model, compact_spec, counts_to_mask, layer_breakpoints
from .multiple_choice import build_multiple_choice_model, multiple_choice_spec
from .per_weight import build_per_weight_model, per_weight_spec
from .resources import resource_rows
from .spec import LinearSpec

log = logging.getLogger(__name__)

KINDS = ("ilp", "lp", "compact")
FORMATS = ("lp", "mps")

__all__ = ["FORMATS", "KINDS", "LinearSpec", "build_compact_model", "build_model", "build_multiple_choice_model", "build_per_weight_model",
           "build_spec", "compact_spec", "counts_to_mask", "layer_breakpoints", "mask_from_model",
           "multiple_choice_spec", "per_weight_spec", "resource_rows", "write_model"]


def _check(instance: Any, kind: Any) -> None:
    if not isinstance(instance, PruningInstance):
        raise SolverOptionError(f"`instance` must be a PruningInstance; got {type(instance).__name__}")
    choice(kind, "kind", KINDS, SolverOptionError)


def build_spec(instance: PruningInstance, kind: str, exact: bool = False, objective_scale: float = 1.0,
               min_slope: float = 0.0) -> LinearSpec:
    """The solver-neutral arrays of formulation ``kind`` (what :func:`build_model` renders).

    ``objective_scale`` (a power of two) multiplies the importances; ``min_slope`` (compact only)
    merges the epigraph cuts of tiny slopes into one relaxed cut (:func:`layer_breakpoints`).
    """
    _check(instance, kind)
    if kind == "compact":
        return compact_spec(instance, exact=exact, objective_scale=objective_scale, min_slope=min_slope)
    return per_weight_spec(instance, relax=kind == "lp", exact=exact, objective_scale=objective_scale)


def build_model(instance: PruningInstance, kind: str = "ilp", exact: bool = False):
    """Pyomo model of formulation ``kind`` in {"ilp", "lp", "compact"}.

    ``exact=True`` states budget rows that doubles cannot evaluate exactly (non-integer costs
    whose exact sums need more than 50 bits) in limb form, so that a floating-point MILP solver
    decides them exactly (``formulations/resources.md``); rows with integer costs are exact
    either way.
    """
    _check(instance, kind)
    if kind == "compact":
        return build_compact_model(instance, exact=exact)
    return build_per_weight_model(instance, relax=kind == "lp", exact=exact)


def write_model(model: Any, path: str | os.PathLike, fmt: str = "lp") -> Path:
    """Write ``model`` as CPLEX LP (``fmt="lp"``) or free MPS (``"mps"``) with readable names.

    Names are Pyomo's symbolic labels (``z(17)``, ``k(conv1)``, ``budget(flops)``); if two
    labels collide (group names differing only in punctuation) the file is written with
    generic names (x1, c1, ...) instead and a warning is logged. Returns the path written.
    """
    from pyomo.core.base.block import BlockData
    from pyomo.opt import ProblemFormat

    choice(fmt, "fmt", FORMATS, SolverOptionError)
    if not isinstance(model, BlockData):
        raise SolverOptionError(f"`model` must be a Pyomo model; got {type(model).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise SolverOptionError(f"`path` must be in an existing directory; '{path.parent}' does not exist")
    problem_format = ProblemFormat.cpxlp if fmt == "lp" else ProblemFormat.mps
    try:
        model.write(str(path), format=problem_format, io_options={"symbolic_solver_labels": True})
    except RuntimeError as exc:
        if "Duplicate symbol" not in str(exc):
            raise
        log.warning("symbolic names collide (%s); writing %s with generic names", exc, path)
        model.write(str(path), format=problem_format, io_options={"symbolic_solver_labels": False})
    return path


def mask_from_model(instance: PruningInstance, model: Any) -> np.ndarray:
    """The mask of a solved model built here (by any Pyomo solver, values loaded into the model).

    ilp: z_i >= 1/2; lp: z_i >= 1 - 1e-9 (fractional entries dropped); compact: the rounded
    counts k_l, mapped by :func:`counts_to_mask`. Check it with :func:`falcon_milp.check_mask`.
    """
    kind = getattr(model, "falcon_kind", None)
    if kind not in KINDS:
        raise SolverOptionError("`model` must be a model built by falcon_milp.formulations")
    if kind == "compact":
        k = np.array([model.k[name].value for name in instance.names], dtype=float)
        if np.isnan(k).any():
            raise SolverOptionError("`model` has no values for k; solve it and load the solution first")
        return counts_to_mask(instance, np.clip(np.rint(k), 0, instance.group_sizes).astype(np.int64))
    z = np.array([model.z[i].value for i in range(instance.n_weights)], dtype=float)
    if np.isnan(z).any():
        raise SolverOptionError("`model` has no values for z; solve it and load the solution first")
    return z >= (0.5 if kind == "ilp" else 1.0 - 1e-9)

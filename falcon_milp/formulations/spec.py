"""A solver-neutral description of a linear model (numpy only), rendered to Pyomo or handed to HiGHS.

Both backends read the same numbers, so the Pyomo model a user inspects and the arrays passed
to ``highspy`` are the same model by construction. A model is

    max  sum_j cost_j x_j   s.t.  row_lower <= A x <= row_upper,  lower <= x <= upper,
                                  x_j integer for the integer blocks

with columns and rows grouped in named, indexed blocks (one Pyomo ``Var`` / ``Constraint`` each).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class ColumnBlock:
    """Columns named ``name[index]``: bounds, integrality and objective coefficients."""

    name: str
    index: Sequence[Any]
    lower: np.ndarray
    upper: np.ndarray
    integer: bool
    cost: np.ndarray
    doc: str = ""
    start: int = 0          # first column of the block in the model (set by LinearSpec)

    @property
    def size(self) -> int:
        return len(self.index)

    @property
    def cols(self) -> slice:
        return slice(self.start, self.start + self.size)


@dataclass
class RowBlock:
    """Rows named ``name[index]`` in CSR form over the model's columns: lower <= A x <= upper."""

    name: str
    index: Sequence[Any]
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    doc: str = ""
    scalar: bool = False     # one row, rendered as a scalar Constraint

    @property
    def size(self) -> int:
        return len(self.index)


@dataclass
class LinearSpec:
    """The whole model: column blocks, row blocks, and what it is (``kind``, notes for the reader)."""

    kind: str
    columns: list[ColumnBlock]
    rows: list[RowBlock]
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        start = 0
        for block in self.columns:
            block.start = start
            start += block.size

    @property
    def n_cols(self) -> int:
        return sum(b.size for b in self.columns)

    @property
    def n_rows(self) -> int:
        return sum(b.size for b in self.rows)

    @property
    def nnz(self) -> int:
        return sum(int(b.indptr[-1]) for b in self.rows)

    def column_block(self, name: str) -> ColumnBlock:
        for block in self.columns:
            if block.name == name:
                return block
        raise KeyError(name)

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat arrays: cost, lower, upper, integrality (bool) per column; CSR A, row bounds."""
        cost = np.concatenate([b.cost for b in self.columns])
        lower = np.concatenate([np.broadcast_to(b.lower, (b.size,)) for b in self.columns]).astype(np.float64)
        upper = np.concatenate([np.broadcast_to(b.upper, (b.size,)) for b in self.columns]).astype(np.float64)
        integer = np.concatenate([np.full(b.size, b.integer) for b in self.columns])
        if self.rows:
            offsets = np.cumsum([0] + [int(b.indptr[-1]) for b in self.rows])
            indptr = np.concatenate([self.rows[0].indptr[:1]] +
                                    [b.indptr[1:] + off for b, off in zip(self.rows, offsets)])
            indices = np.concatenate([b.indices for b in self.rows])
            data = np.concatenate([b.data for b in self.rows])
            row_lower = np.concatenate([b.lower for b in self.rows])
            row_upper = np.concatenate([b.upper for b in self.rows])
        else:
            indptr = np.zeros(1, dtype=np.int64)
            indices = np.zeros(0, dtype=np.int64)
            data = np.zeros(0)
            row_lower = row_upper = np.zeros(0)
        return {"cost": cost, "lower": lower, "upper": upper, "integer": integer, "indptr": indptr,
                "indices": indices, "data": data, "row_lower": row_lower, "row_upper": row_upper}


def rows_from_lists(name: str, index: Sequence[Any], entries: Sequence[tuple[np.ndarray, np.ndarray]],
                    lower: Sequence[float], upper: Sequence[float], doc: str = "",
                    scalar: bool = False) -> RowBlock:
    """A row block from one (columns, coefficients) pair per row; zero coefficients are dropped."""
    cols, vals, indptr = [], [], [0]
    for c, v in entries:
        c = np.asarray(c, dtype=np.int64)
        v = np.asarray(v, dtype=np.float64)
        keep = v != 0
        cols.append(c[keep])
        vals.append(v[keep])
        indptr.append(indptr[-1] + int(keep.sum()))
    return RowBlock(name, list(index), np.array(indptr, dtype=np.int64),
                    np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64),
                    np.concatenate(vals) if vals else np.zeros(0),
                    np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64), doc, scalar)


def to_pyomo(spec: LinearSpec, name: str):
    """Render ``spec`` as a Pyomo ConcreteModel: one Var per column block, one Constraint per row block.

    Integer columns with bounds [0, 1] become ``Binary``, other integer ones ``Integers`` with
    bounds, continuous ones ``Reals`` with bounds. The objective is ``obj`` (maximise).
    ``model.falcon_kind`` and ``model.falcon_notes`` tell what the model is.
    """
    import pyomo.environ as pyo
    from pyomo.core.expr.numeric_expr import LinearExpression

    model = pyo.ConcreteModel(name=name)
    variables: list[Any] = []
    for block in spec.columns:
        lo = np.broadcast_to(block.lower, (block.size,)).astype(np.float64)
        hi = np.broadcast_to(block.upper, (block.size,)).astype(np.float64)
        uniform = block.size > 0 and bool(np.all(lo == lo[0]) and np.all(hi == hi[0]))
        index = _pyomo_index(pyo, block.index)
        if block.integer and uniform and lo[0] == 0 and hi[0] == 1:
            var = pyo.Var(index, domain=pyo.Binary, doc=block.doc)
        else:
            domain = pyo.Integers if block.integer else pyo.Reals
            if uniform:
                bounds: Any = (_bound(lo[0]), _bound(hi[0]))
            else:
                lookup = {key: (_bound(a), _bound(b)) for key, a, b in zip(block.index, lo, hi)}
                bounds = lambda m, *key: lookup[key[0] if len(key) == 1 else key]  # noqa: E731
            var = pyo.Var(index, domain=domain, bounds=bounds, doc=block.doc)
        model.add_component(block.name, var)
        variables.extend(var[key] for key in block.index)
    cost = np.concatenate([b.cost for b in spec.columns]) if spec.columns else np.zeros(0)
    nz = np.flatnonzero(cost)
    model.obj = pyo.Objective(
        expr=LinearExpression(constant=0.0, linear_coefs=cost[nz].tolist(),
                              linear_vars=[variables[j] for j in nz]),
        sense=pyo.maximize)
    for block in spec.rows:
        exprs = []
        for i in range(block.size):
            lo_i, hi_i = int(block.indptr[i]), int(block.indptr[i + 1])
            body = LinearExpression(constant=0.0, linear_coefs=block.data[lo_i:hi_i].tolist(),
                                    linear_vars=[variables[j] for j in block.indices[lo_i:hi_i]])
            lo_b, hi_b = _bound(block.lower[i]), _bound(block.upper[i])
            if lo_b is not None and lo_b == hi_b:
                exprs.append(body == lo_b)
            elif lo_b is None:
                exprs.append(body <= hi_b)
            else:
                exprs.append((lo_b, body, hi_b))
        if block.scalar:
            con = pyo.Constraint(expr=exprs[0], doc=block.doc)
        else:
            lookup = dict(zip(block.index, exprs))
            con = pyo.Constraint(_pyomo_index(pyo, block.index),
                                 rule=lambda m, *key: lookup[key[0] if len(key) == 1 else key],
                                 doc=block.doc)
        model.add_component(block.name, con)
    model.falcon_kind = spec.kind
    model.falcon_notes = dict(spec.notes)
    model.falcon_columns = [(b.name, b.start, b.size) for b in spec.columns]
    return model


def _bound(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def _pyomo_index(pyo, index: Sequence[Any]):
    if isinstance(index, range) and index.step == 1:
        return pyo.RangeSet(index.start, index.stop - 1) if len(index) else pyo.Set(initialize=[])
    keys = list(index)
    dimen = len(keys[0]) if keys and isinstance(keys[0], tuple) else 1
    return pyo.Set(initialize=keys, ordered=True, dimen=dimen)

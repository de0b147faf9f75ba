"""The per-weight ILP and its LP relaxation (math: ``formulations/per_weight.md``).

    max  sum_i I_i z_i
    s.t. sum_l C_{l,r} sum_{i in l} z_i <= floor(B_r 2^E_r)     for every resource row that can bind
         z in {0,1}^p   (LP: z in [0,1]^p)

Rows are scaled to integer coefficients as in :mod:`.resources` (nnz: sum z_i <= S; integer
FLOP costs: sum f_i z_i <= floor(F)). With ``exact=True`` a row that doubles cannot evaluate
exactly is replaced by its limb form over counts k_l = sum_{i in l} z_i.
"""
from __future__ import annotations

import numpy as np

from ..instance import PruningInstance
from .resources import budget_entries, limb_blocks, limb_split, resource_rows
from .spec import ColumnBlock, LinearSpec, rows_from_lists


def per_weight_spec(instance: PruningInstance, relax: bool = False, exact: bool = False,
                    objective_scale: float = 1.0) -> LinearSpec:
    """The per-weight model as a :class:`LinearSpec`: column block ``z`` over all weights (flat order).

    ``objective_scale`` (a power of two, so exact) multiplies every importance.
    """
    p = instance.n_weights
    columns = [ColumnBlock("z", range(p), np.asarray(0.0), np.asarray(1.0), not relax,
                           instance.importance.astype(np.float64) * objective_scale,
                           "z[i] = 1 keeps weight i (groups concatenated in order)")]
    rows = resource_rows(instance)
    plain = [r for r in rows if r.exact or relax or not exact]
    limbed = [r for r in rows if not (r.exact or relax or not exact)]
    row_blocks = []
    if plain:
        row_blocks.append(rows_from_lists(
            "budget", [r.name for r in plain], [budget_entries(r, instance) for r in plain],
            np.full(len(plain), -np.inf), [r.rhs for r in plain],
            "sum_i C_r(i) z_i <= floor(B_r 2^E_r), one row per resource that can bind"))
    if limbed:
        n_groups = instance.n_groups
        k_start = p
        columns.append(ColumnBlock("k", list(instance.names), np.zeros(n_groups),
                                   instance.group_sizes.astype(np.float64), True, np.zeros(n_groups),
                                   "k[l] = number of kept weights of group l"))
        offsets = instance.offsets
        row_blocks.append(rows_from_lists(
            "count", list(instance.names),
            [(np.append(np.arange(offsets[l], offsets[l + 1]), k_start + l),
              np.append(np.ones(int(instance.group_sizes[l])), -1.0)) for l in range(n_groups)],
            np.zeros(n_groups), np.zeros(n_groups), "sum_{i in l} z_i = k[l]"))
        splits = [limb_split(r, instance.group_sizes) for r in limbed]
        limb_cols, limb_rows = limb_blocks(splits, k_start, p + n_groups)
        columns += limb_cols
        row_blocks += limb_rows
    notes = _row_notes(instance, rows, limbed)
    notes["objective_scale"] = objective_scale
    return LinearSpec("lp" if relax else "ilp", columns, row_blocks, notes)


def _row_notes(instance: PruningInstance, rows, limbed) -> dict:
    kept = {r.name for r in rows}
    limbed_names = {r.name for r in limbed}
    return {
        "rows": {r.name: {"scale": r.scale, "rhs": r.rhs, "exact": r.exact or r.name in limbed_names,
                          "form": "limbs" if r.name in limbed_names else "row"} for r in rows},
        "omitted_rows": [n for n in instance.resource_names if n not in kept],
        "inexact_rows": [r.name for r in rows if not r.exact and r.name not in limbed_names],
    }


def build_per_weight_model(instance: PruningInstance, relax: bool = False, exact: bool = False):
    """The per-weight ILP (``relax=True``: its LP relaxation) as a Pyomo ConcreteModel.

    Components: ``z`` (indexed by the flat weight index), ``obj`` (maximise), ``budget``
    (indexed by resource name; rows that can never bind are left out, see
    ``model.falcon_notes``) and, with ``exact=True`` and a row doubles cannot decide,
    ``k``/``count`` and the ``limb_*`` components of ``formulations/resources.md``.
    """
    from .spec import to_pyomo
    spec = per_weight_spec(instance, relax=relax, exact=exact)
    return to_pyomo(spec, "falcon_per_weight_lp" if relax else "falcon_per_weight_ilp")

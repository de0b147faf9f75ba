"""The fallback of ``exact``: the windowed class-count problem as a compact MILP, solved by HiGHS.

If the search has not finished after ``MILP_AFTER`` nodes (many classes with wide windows,
typically several extra rows with different costs) the same windowed problem goes to HiGHS:
an integer count and a value per class, one cut per window segment of the concave value. Its
answer is re-checked with exact integer budgets; the optimality proof is then HiGHS's (its
dual-bound slack is added to the bound). Every run goes through :func:`.highs.run_highs`
(a hard deadline and Ctrl-C).
"""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .highs import new_highs, run_highs

if TYPE_CHECKING:
    from .core_search import Core


def windowed_milp(core: Core, k_start: np.ndarray, deadline: float | None
                   ) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The class-count problem inside the windows as a compact MILP, solved by HiGHS.

    Columns: an integer count k_c in [lo_c, hi_c] and a value t_c per class; rows: the concave
    value of each class as one cut per window segment (``t_c <= V_c(j) + I_c(j) (k_c - j)``, exact
    at integer counts), the NNZ budget and every finite resource row (scaled integers). Returns
    the best counts and HiGHS's status, or None when HiGHS is missing or the integers are too
    large for doubles. The counts are re-checked with exact integer arithmetic.
    """
    try:
        import highspy
    except ImportError:   # pragma: no cover - highspy is a dependency
        return None
    W = core.windows
    C = len(W)
    R = len(core.rows)
    caps = [core.prob.rows.cap[r] for r in core.rows]
    big = any(cap is not None and abs(cap) >= 2**52 for cap in caps) or any(
        abs(w.cost[i]) * (w.hi + 1) >= 2**52 for w in W for i in range(R))
    if big:
        return None
    lower = np.concatenate([[w.lo for w in W], np.full(C, -np.inf)]).astype(np.float64)
    upper = np.concatenate([[w.hi for w in W], np.full(C, np.inf)]).astype(np.float64)
    cost = np.concatenate([np.zeros(C), np.ones(C)])
    starts, index, value, rlo, rhi = [], [], [], [], []
    for c, w in enumerate(W):
        seg = w.vals[1:]                     # importance of rank j, j = lo .. hi-1
        for j in range(w.lo, w.hi):
            s = float(seg[j - w.lo])
            starts.append(len(index))
            index += [C + c, c]
            value += [1.0, -s]
            rlo.append(-np.inf)
            rhi.append(float(w.value[j - w.lo]) - s * j)
        starts.append(len(index))           # t_c <= V(hi) (also covers an empty window)
        index.append(C + c)
        value.append(1.0)
        rlo.append(-np.inf)
        rhi.append(float(w.value[-1]))
    starts.append(len(index))
    index += list(range(C))
    value += [1.0] * C
    rlo.append(-np.inf)
    rhi.append(float(core.prob.S))
    for i in range(R):
        if caps[i] is None:
            continue
        starts.append(len(index))
        index += list(range(C))
        value += [float(w.cost[i]) for w in W]
        rlo.append(-np.inf)
        rhi.append(float(caps[i]))
    model = {"n_cols": 2 * C, "cost": cost, "lower": lower, "upper": upper, "row_lower": np.array(rlo),
             "row_upper": np.array(rhi), "starts": np.array(starts, dtype=np.int32),
             "index": np.array(index, dtype=np.int32), "value": np.array(value, dtype=np.float64),
             "integrality": np.concatenate([np.ones(C), np.zeros(C)]).astype(np.int32),
             "start": np.asarray([float(v) for v in k_start]
                                 + [float(w.value[k_start[c] - w.lo]) for c, w in enumerate(W)])}
    got = run_highs(_run_windowed, (model, deadline), deadline)   # a hard deadline and Ctrl-C
    if got.killed:
        return k_start.copy(), {"status": "time_limit", "highs_nodes": 0, "dual_bound": math.inf,
                                "killed": True}
    run = got.value
    out = {"status": run["status"], "highs_nodes": run["nodes"], "dual_bound": run["dual_bound"]}
    if run["values"] is None:
        return k_start.copy(), {**out, "status": out["status"] if out["status"] != "optimal" else "no_solution"}
    k = np.rint(run["values"][:C]).astype(np.int64)
    k = np.clip(k, [w.lo for w in W], [w.hi for w in W])
    ok = int(k.sum()) <= core.prob.S and all(
        caps[i] is None or sum(w.cost[i] * int(k[c]) for c, w in enumerate(W)) <= caps[i] for i in range(R))
    if not ok:     # HiGHS's tolerance let a budget slip: keep the search's incumbent
        return k_start.copy(), {**out, "status": "rejected"}
    return k, out


def _run_windowed(model: dict[str, Any], deadline: float | None, report: Any = None) -> dict[str, Any]:
    """Solve the windowed MILP arrays of :func:`windowed_milp` with HiGHS: status ("optimal"
    or HiGHS's status name), nodes, dual bound, column values."""
    import highspy
    h = new_highs()
    for key, val in (("mip_rel_gap", 0.0), ("mip_abs_gap", 0.0), ("random_seed", 0),
                     ("mip_feasibility_tolerance", 1e-9)):
        h.setOptionValue(key, val)
    if deadline is not None:
        h.setOptionValue("time_limit", max(0.01, deadline - time.perf_counter()))
    n_rows = len(model["starts"])
    h.passModel(model["n_cols"], n_rows, len(model["index"]), int(highspy.MatrixFormat.kRowwise),
                int(highspy.ObjSense.kMaximize), 0.0, model["cost"], model["lower"], model["upper"],
                model["row_lower"], model["row_upper"], model["starts"], model["index"],
                model["value"], model["integrality"])
    h.setSolution(_solution(highspy, model["start"]))
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    values = (np.asarray(h.getSolution().col_value, dtype=np.float64)
              if info.primal_solution_status == 2 else None)
    return {"status": "optimal" if status == highspy.HighsModelStatus.kOptimal else status.name,
            "nodes": int(info.mip_node_count), "dual_bound": float(info.mip_dual_bound), "values": values}


def _solution(highspy: Any, values: np.ndarray) -> Any:
    s = highspy.HighsSolution()
    s.col_value = values.tolist()
    s.value_valid = True
    return s

"""Benchmark records: one JSON object per run, appended to a JSONL file as each run ends.

Every line is a complete record (fields listed in :data:`FIELDS`), written with one
``write`` and flushed, so a run stopped with Ctrl-C keeps every record already written
(at most the line being written is lost; :func:`read_records` ignores a torn last line).
Lines are in completion order; ``key`` = [instance index, solver index, repeat] gives the
deterministic order of the report.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..exceptions import FalconError
from ..jsonl import JsonlError, JsonlWriter, iter_jsonl

RECORD_SCHEMA = 1

FIELDS: dict[str, str] = {
    "schema": "record schema version (1)",
    "run_id": "id of the bench invocation that wrote the record",
    "key": "[instance index, solver index, repeat]: the deterministic order",
    "instance": "instance name (path under instances/ without .npz, or a synthetic name)",
    "family": "instance family (tiny, small/layered, real/mnist, synthetic/resnet20, ...)",
    "n_weights": "number of weights p (null if the instance could not be loaded)",
    "n_groups": "number of groups (layers)",
    "budgets": "resource -> budget (null = infinity)",
    "digest": "problem digest of the loaded instance (see suite.problem_digest)",
    "solver": "solver name",
    "exact": "whether the solver is meant to prove optimality",
    "flop_aware": "false only for the FLOP-unaware baseline (magnitude)",
    "options": "options passed to the solver (time_limit, rel_gap, threads)",
    "repeat": "repeat number, 0-based",
    "status": "optimal | feasible | infeasible | no_solution | skipped | error",
    "termination": "why the solver stopped (optimal, time_limit, heuristic, ...) or null",
    "reason": "one-line reason for skipped / error / no_solution, else null",
    "objective": "sum of kept importances, recomputed from the mask (null without a mask)",
    "bound": "the solver's proven upper bound on the optimum (null = none)",
    "gap": "the solver's own certified gap (bound - objective) / max(|objective|, 1e-12)",
    "best_lower": "MANIFEST best-known lower bound (null if unknown)",
    "best_upper": "MANIFEST best-known upper bound (null if unknown)",
    "best_lower_by": "solvers that reached best_lower (from the MANIFEST)",
    "best_upper_by": "solvers that proved best_upper (from the MANIFEST)",
    "best_optimal": "true when best_lower == best_upper (the optimum is proven)",
    "gap_to_best": "(best_upper - objective) / max(|best_upper|, 1e-12); null if unknown or infeasible",
    "gap_to_best_lower": "(best_lower - objective) / max(|best_lower|, 1e-12)",
    "n_kept": "number of kept weights",
    "usage": "resource -> amount used by the mask (exact check, as float)",
    "violation": "resource -> amount over budget (infeasible masks only)",
    "checks": "list of failed checks; empty when every check passed",
    "mask_sha256": "SHA-256 (first 16 hex digits) of the packed mask, to compare runs",
    "runtime_s": "wall time of the solve, as measured by falcon_milp.solve",
    "wall_s": "wall time of the run in the worker (solve + checks, instance loading excluded)",
    "load_s": "time to load or generate the instance in this worker (0 when cached)",
    "peak_mem_bytes": "peak resident memory during the solve above the resident memory at its start",
    "mem_method": "vmhwm-reset (Linux: high-water mark reset before the solve) or ru_maxrss-delta",
    "worker_pid": "process id of the worker",
    "extra": "solver-specific details (JSON-safe)",
}

TIMING_FIELDS = ("run_id", "runtime_s", "wall_s", "load_s", "peak_mem_bytes", "mem_method",
                 "worker_pid")
"""Fields that legitimately differ between two runs of the same benchmark."""


class RecordsError(FalconError, ValueError):
    """A records file that cannot be read."""


def jsonable(value: Any) -> Any:
    """A JSON-safe copy: numpy scalars to Python, arrays to lists (large ones summarised),
    non-finite floats to None, tuples to lists, unknown objects to their repr."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, np.ndarray):
        if value.size <= 64:
            return jsonable(value.tolist())
        return {"array_shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return repr(value)


def identity(record: dict[str, Any]) -> dict[str, Any]:
    """The record without timing / memory / process fields: what must not change between
    a serial and a parallel run of the same benchmark."""
    out = {k: v for k, v in record.items() if k not in TIMING_FIELDS}
    extra = out.get("extra")
    if isinstance(extra, dict):  # solvers may report their own timings inside extra
        out["extra"] = {k: v for k, v in extra.items() if not _is_timing_key(k)}
    return out


def _is_timing_key(key: str) -> bool:
    k = key.lower()
    return k.endswith(("_s", "_sec", "_seconds", "_time", "time_s")) or k in ("time", "runtime", "elapsed")


def sort_key(record: dict[str, Any]) -> tuple[int, ...]:
    return tuple(record["key"])


class RecordWriter(JsonlWriter):
    """Appends records to a JSONL file, one ``write`` + flush + fsync per record
    (:class:`falcon_milp.jsonl.JsonlWriter`, records made JSON-safe by :func:`jsonable`)."""

    def __init__(self, path: str | os.PathLike, truncate: bool = True) -> None:
        super().__init__(path, truncate=truncate, prepare=jsonable)


def iter_records(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file in file order. A torn last line (no newline: the run was
    killed while writing it) is ignored; any other bad line raises RecordsError."""
    path = Path(path)
    if not path.exists():
        raise RecordsError(f"records file '{path}' does not exist")
    try:
        for lineno, rec in iter_jsonl(path):
            if not isinstance(rec, dict) or rec.get("schema") != RECORD_SCHEMA:
                raise RecordsError(f"records file '{path}' line {lineno} is not a schema-{RECORD_SCHEMA} record")
            missing = [k for k in FIELDS if k not in rec]
            if missing:
                raise RecordsError(f"records file '{path}' line {lineno} lacks field `{missing[0]}`")
            yield rec
    except JsonlError as exc:
        raise RecordsError(str(exc)) from None


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    return list(iter_records(path))


def ordered(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records in the deterministic (instance, solver, repeat) order."""
    return sorted(records, key=sort_key)

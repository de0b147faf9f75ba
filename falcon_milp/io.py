"""Instance files: one ``.npz`` archive readable with numpy alone (format in instances/README.md).

Arrays: ``importance`` (p,) float32/float64, ``group_sizes`` (L,) int64, ``costs`` (L, R)
float64, and ``header``: UTF-8 bytes (uint8 array) of a JSON object with ``schema_version``,
``names``, ``resource_names``, ``budgets`` (JSON numbers; null = infinity) and ``metadata``.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .exceptions import FalconError, InstanceFileError
from .instance import PruningInstance

SCHEMA_VERSION = 1
_ARRAYS = ("importance", "group_sizes", "costs", "header")


def save_instance(instance: PruningInstance, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``instance`` to ``path`` (``.npz`` appended if missing); returns the path written."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    header = {
        "schema_version": SCHEMA_VERSION,
        "names": list(instance.names),
        "resource_names": list(instance.resource_names),
        "budgets": [b if not (isinstance(b, float) and math.isinf(b)) else None for b in instance.budgets],
        "metadata": instance.metadata,
    }
    try:
        blob = json.dumps(header, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InstanceFileError(f"`metadata` must be JSON-serialisable (no NaN/inf); {exc}") from None
    saver = np.savez_compressed if compress else np.savez
    tmp = path.with_name(path.name + ".tmp.npz")
    with open(tmp, "wb") as fh:
        saver(fh, importance=instance.importance, group_sizes=instance.group_sizes,
              costs=instance.costs, header=np.frombuffer(blob, dtype=np.uint8))
    os.replace(tmp, path)
    return path


def _read_header(raw: np.ndarray, where: str) -> dict[str, Any]:
    try:
        header = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InstanceFileError(f"{where}: `header` is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise InstanceFileError(f"{where}: `header` must be a JSON object")
    version = header.get("schema_version")
    if version != SCHEMA_VERSION:
        raise InstanceFileError(
            f"{where}: unknown `schema_version` {version!r}; this version reads {SCHEMA_VERSION}")
    for key in ("names", "resource_names", "budgets"):
        if not isinstance(header.get(key), list):
            raise InstanceFileError(f"{where}: `header.{key}` must be a list")
    return header


def load_instance(path: str | os.PathLike) -> PruningInstance:
    """Read and fully validate an instance file. Errors name the file and the field."""
    path = Path(path)
    where = f"instance file '{path}'"
    if not path.exists():
        raise InstanceFileError(f"{where} does not exist")
    if path.is_dir():
        raise InstanceFileError(f"{where} is a directory, not an .npz file")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in _ARRAYS if k not in data.files]
            if missing:
                raise InstanceFileError(f"{where}: missing array `{missing[0]}` (not a falcon-milp instance?)")
            arrays = {k: data[k] for k in _ARRAYS}
    except FalconError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zipfile.LargeZipFile) as exc:
        raise InstanceFileError(f"{where} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    header = _read_header(arrays["header"], where)
    costs = arrays["costs"]
    names, rnames, budgets = header["names"], header["resource_names"], header["budgets"]
    if costs.ndim != 2 or costs.shape != (len(names), len(rnames)) or len(budgets) != len(rnames):
        raise InstanceFileError(
            f"{where}: `costs` must have shape (groups, resources) = ({len(names)}, {len(rnames)}) "
            f"with one budget per resource; got {costs.shape} and {len(budgets)} budgets")
    if rnames[:2] != ["nnz", "flops"]:
        raise InstanceFileError(f"{where}: `resource_names` must start with 'nnz', 'flops'; got {rnames[:2]}")
    if costs.size and not np.array_equal(costs[:, 0], np.ones(len(names))):
        raise InstanceFileError(f"{where}: `costs` column 0 (nnz) must be all ones")
    budgets = [math.inf if b is None else b for b in budgets]
    extra = {rnames[r]: (costs[:, r], budgets[r]) for r in range(2, len(rnames))}
    try:
        return PruningInstance.from_flat(
            arrays["importance"], arrays["group_sizes"], costs[:, 1], max_nnz=budgets[0],
            max_flops=budgets[1], names=names, extra_resources=extra,
            metadata=header.get("metadata") or {}, copy=False)
    except FalconError as exc:
        raise InstanceFileError(f"{where}: {exc}") from None

"""Instance files: one ``.npz`` archive readable with numpy alone (format in instances/README.md).

Arrays: ``importance`` (p,) float32/float64, ``group_sizes`` (L,) int64, ``costs`` (L, R)
float64, and ``header``: UTF-8 bytes (uint8 array) of a JSON object with ``schema_version``,
``names``, ``resource_names``, ``budgets`` (JSON numbers; null = infinity) and ``metadata``.
"""
from __future__ import annotations

import errno
import json
import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .exceptions import FalconError, InstanceFileError, OutputPathError
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


def _dir_refuses_files(directory: Path) -> str | None:
    """Why no file can be created in ``directory`` (an existing directory), or None.

    ``os.access`` first; then, where the OS has ``O_TMPFILE``, an anonymous file that never
    gets a name in the directory and vanishes on close (this catches read-only mounts and
    pseudo file systems such as /proc, which ``os.access`` passes for root). Where
    ``O_TMPFILE`` is not supported, a file system reporting 0 blocks (procfs, sysfs) is refused.
    """
    if not os.access(directory, os.W_OK | os.X_OK):
        return "is not writable"
    tmpfile = getattr(os, "O_TMPFILE", None)
    if tmpfile is None:
        return None
    try:
        os.close(os.open(directory, tmpfile | os.O_WRONLY, 0o600))
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):   # no O_TMPFILE here
            try:
                return "cannot hold files (a pseudo file system)" if os.statvfs(directory).f_blocks == 0 else None
            except OSError:
                return None
        return f"is not writable ({os.strerror(exc.errno) if exc.errno else exc})"
    return None


def check_writable(path: str | os.PathLike, field: str) -> Path:
    """Check, before any work, that the file ``path`` can be written; returns it as a Path.

    Its directory must exist and accept new files, and ``path`` must not be a directory.
    Nothing is created and an existing file is not touched. Raises OutputPathError naming
    ``field`` (e.g. ``--mask-out``).
    """
    target = Path(path)
    parent = target.parent
    if target.is_dir():
        raise OutputPathError(f"`{field}` '{target}' is a directory; give a file name")
    if not parent.exists():
        raise OutputPathError(f"`{field}` '{target}': directory '{parent}' does not exist")
    if not parent.is_dir():
        raise OutputPathError(f"`{field}` '{target}': '{parent}' is not a directory")
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputPathError(f"`{field}` '{target}' exists and is not writable")
    why = _dir_refuses_files(parent)
    if why:
        raise OutputPathError(f"`{field}` '{target}': directory '{parent}' {why}")
    return target


def check_writable_dir(path: str | os.PathLike, field: str) -> Path:
    """Check that the output folder ``path`` exists and accepts files, or can be created
    (its nearest existing ancestor is a directory that accepts files). Creates nothing."""
    target = Path(path)
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        what = f"'{target}'" if probe == target else f"'{target}': '{probe}'"
        raise OutputPathError(f"`{field}` {what} is not a directory")
    why = _dir_refuses_files(probe)
    if why:
        where = f"'{target}'" if probe == target else f"'{target}': directory '{probe}'"
        raise OutputPathError(f"`{field}` {where} {why}")
    return target


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON has no such numbers),
    recursively through dicts, lists and tuples, so that ``json.dumps(..., allow_nan=False)`` works."""
    if isinstance(value, float) or isinstance(value, np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


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


def read_npz_arrays(path: str | os.PathLike, keys: Sequence[str], where: str,
                    what: str = "a falcon-milp instance") -> dict[str, np.ndarray]:
    """The arrays ``keys`` of the ``.npz`` archive at ``path``, nothing unpickled; every way a
    file can be unreadable (absent, a directory, not a zip, truncated, corrupt, pickled
    objects, a missing key) is one :class:`InstanceFileError` that starts with ``where``."""
    path = Path(path)
    if not path.exists():
        raise InstanceFileError(f"{where} does not exist")
    if path.is_dir():
        raise InstanceFileError(f"{where} is a directory, not an .npz file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError as exc:
        raise InstanceFileError(f"{where} cannot be read ({exc.strerror or exc})") from None
    if head.startswith(b"\x93NUMPY"):
        raise InstanceFileError(f"{where} is a single .npy array, not an .npz archive")
    if not head.startswith(b"PK"):
        raise InstanceFileError(f"{where} is not an .npz archive (no zip signature)")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise InstanceFileError(f"{where}: missing array `{missing[0]}` (not {what}?)")
            return {k: data[k] for k in keys}
    except FalconError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc):    # numpy's own message suggests allow_pickle: never wanted here
            raise InstanceFileError(f"{where}: an array holds Python objects (pickled data); "
                                    f"{what.split()[-1]} arrays are plain numbers") from None
        raise InstanceFileError(f"{where} is truncated or corrupt (ValueError: {exc})") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, zipfile.LargeZipFile, zlib.error,
            NotImplementedError, RuntimeError) as exc:   # zlib: a corrupt deflate stream (fuzzing)
        raise InstanceFileError(f"{where} is truncated or corrupt ({type(exc).__name__}: {exc})") from None


def load_instance(path: str | os.PathLike) -> PruningInstance:
    """Read and fully validate an instance file. Errors name the file and the field."""
    path = Path(path)
    where = f"instance file '{path}'"
    arrays = read_npz_arrays(path, _ARRAYS, where)
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

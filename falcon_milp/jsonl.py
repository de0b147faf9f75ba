"""JSON Lines files written one complete line at a time (benchmark and sweep records).

:class:`JsonlWriter` writes each object with one ``write``, then flushes and fsyncs, so a run
stopped by Ctrl-C or killed keeps every line already written; at most the line being written
is torn. :func:`iter_jsonl` skips such a torn last line (no trailing newline); appending
(``truncate=False``) first cuts it off, so the file stays one object per line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from .exceptions import FalconError

__all__ = ["JsonlError", "JsonlWriter", "iter_jsonl"]


class JsonlError(FalconError, ValueError):
    """A JSON Lines file that cannot be read."""


class JsonlWriter:
    """Writes objects to a JSONL file, one ``write`` + flush + fsync per object.

    ``prepare(obj)`` makes an object JSON-safe before ``json.dumps(..., allow_nan=False)``.
    """

    def __init__(self, path: str | os.PathLike, truncate: bool = True,
                 prepare: Callable[[Any], Any] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not truncate and self.path.exists():
            _cut_torn_tail(self.path)
        self._fh = open(self.path, "w" if truncate else "a", encoding="utf-8")
        self._prepare = prepare
        self.count = 0

    def write(self, obj: Any) -> None:
        if self._prepare is not None:
            obj = self._prepare(obj)
        line = json.dumps(obj, allow_nan=False, sort_keys=True)
        self._fh.write(line + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.count += 1

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _cut_torn_tail(path: Path) -> None:
    with open(path, "rb+") as fh:
        data = fh.read()
        if data and not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, object) of each non-empty line. A torn last line (no newline: the writer
    was killed while writing it) is skipped; any other bad line raises JsonlError."""
    path = Path(path)
    if not path.exists():
        raise JsonlError(f"records file '{path}' does not exist")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == len(lines) and not text.endswith("\n"):
                return
            raise JsonlError(f"records file '{path}' line {lineno} is not valid JSON ({exc})") from None
        yield lineno, obj

"""Where X (the n x p per-sample gradients) lives: in memory at 32 or 16 bits, or in a file.

At ImageNet scale X is the largest object of a FALCON run: n x p x 4 bytes is 16.8 GB for
MobileNetV1 at n = 1000 and 51 GB for ResNet50 at n = 500. :class:`GradientStore` keeps X
row-major in one of

* ``float32`` / ``float64`` in memory (a torch tensor; products are single BLAS calls),
* ``bfloat16`` / ``float16`` in memory (half the bytes; read in row blocks that are widened to
  float32 into one reusable buffer, so products accumulate in float32),
* a file (``path``, any of the four dtypes, raw row-major; rows are written as the gradients
  are computed and read back in row blocks or column panels with positioned reads). The file
  is read, not memory-mapped, so its pages stay in the OS cache (reclaimable) instead of being
  counted in the process's resident memory.

Every product widens X to float32 (float64 for a float64 X) and accumulates in it; the
vectors outside are float64 numpy arrays. :meth:`normal_products` computes X d and X^T X d in
one pass over X (one read of the file instead of two).
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch

from ..validation import choice
from . import OptionError

__all__ = ["STORE_DTYPES", "GradientStore", "as_store", "choose_storage"]

#: storage dtypes by name
STORE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64,
                                        "bfloat16": torch.bfloat16, "float16": torch.float16}
_RAW = {torch.float32: np.float32, torch.float64: np.float64, torch.bfloat16: np.uint16,
        torch.float16: np.float16}

#: bytes of the widened (float32) row block / column panel used by the streamed products
BLOCK_BYTES = 64 * 2**20


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class GradientStore:
    """X (n, p), row-major, in memory (any of :data:`STORE_DTYPES`) or in a file (``path``)."""

    def __init__(self, n: int, p: int, dtype: str | torch.dtype = "float32", path: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", *, data: torch.Tensor | None = None,
                 block_bytes: int = BLOCK_BYTES) -> None:
        if isinstance(dtype, str):
            if dtype not in STORE_DTYPES:
                raise OptionError(f"`x_dtype` must be one of {', '.join(STORE_DTYPES)}; got {dtype!r}")
            dtype = STORE_DTYPES[dtype]
        if dtype not in _RAW:
            raise OptionError(f"`x_dtype` must be one of {', '.join(STORE_DTYPES)}; got {dtype}")
        self.n, self.p, self.dtype = int(n), int(p), dtype
        self.device = torch.device(device)
        self.path = None if path is None else os.fspath(path)
        self.block_bytes = int(block_bytes)
        self._fh = None
        self._buf: torch.Tensor | None = None
        self._fro2: float | None = None
        if data is not None:
            self.data: torch.Tensor | None = data
        elif self.path is None:
            self.data = torch.empty((self.n, self.p), dtype=dtype, device=self.device)
        else:
            self.data = None
            if self.device.type != "cpu":
                raise OptionError("`x_path` (a file store) works with `device='cpu'` only")
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                raise OptionError(f"`x_path` {self.path!r} exists; give the name of a new file") from None
            except OSError as exc:
                raise OptionError(f"`x_path` {self.path!r} cannot be created: {exc.strerror}") from None
            self._fh = os.fdopen(fd, "r+b", buffering=0)
            self._fh.truncate(self.n * self.p * self.itemsize)

    # ------------------------------------------------------------------ facts
    @property
    def shape(self) -> tuple[int, int]:
        return self.n, self.p

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def nbytes(self) -> int:
        """Bytes X takes where it is stored (memory or file)."""
        return self.n * self.p * self.itemsize

    @property
    def in_memory(self) -> bool:
        return self.data is not None

    @property
    def kind(self) -> str:
        """``"memory"`` or ``"file"``, with the dtype: e.g. ``"memory bfloat16"``."""
        return f"{'memory' if self.in_memory else 'file'} {str(self.dtype).replace('torch.', '')}"

    @property
    def direct(self) -> bool:
        """True when X is an in-memory float32/float64 tensor (products are plain BLAS calls)."""
        return self.data is not None and self.dtype in (torch.float32, torch.float64)

    # ------------------------------------------------------------------ writing
    def write_rows(self, start: int, rows: torch.Tensor) -> None:
        """Store ``rows`` (c, p) as rows ``start .. start + c - 1`` (cast to the store's dtype)."""
        c = int(rows.shape[0])
        self._fro2 = None
        if self.data is not None:
            self.data[start:start + c] = rows.to(device=self.device, dtype=self.dtype)
            return
        assert self._fh is not None
        arr = rows.detach().to("cpu", self.dtype).contiguous()
        if self.dtype == torch.bfloat16:
            arr = arr.view(torch.int16)
        raw = arr.numpy()
        self._fh.seek(start * self.p * self.itemsize)
        self._fh.write(memoryview(raw).cast("B"))

    def scale_(self, factor: float) -> None:
        """X <- factor X (in place; for a file, done block by block)."""
        if self.data is not None:
            self.data.mul_(factor)
        else:
            for i, j, blk in self.row_blocks():
                self.write_rows(i, blk * factor)
        self._fro2 = None

    # ------------------------------------------------------------------ reading
    def _rows_per_block(self) -> int:
        return max(1, min(self.n, self.block_bytes // max(1, 4 * self.p)))

    def _buffer(self, numel: int) -> torch.Tensor:
        if self._buf is None or self._buf.numel() < numel:
            self._buf = torch.empty(numel, dtype=_wide(self.dtype), device=self.device)
        return self._buf[:numel]

    def _read(self, offset_items: int, out: np.ndarray) -> None:
        assert self._fh is not None
        self._fh.seek(offset_items * self.itemsize)
        view = memoryview(out).cast("B")
        got = self._fh.readinto(view)
        if got != view.nbytes:
            raise OSError(f"gradient file {self.path!r} is shorter than expected")

    def _raw_to_wide(self, raw: np.ndarray, out: torch.Tensor) -> torch.Tensor:
        t = torch.from_numpy(raw)
        if self.dtype == torch.bfloat16:
            t = t.view(torch.bfloat16)
        out.copy_(t.reshape(out.shape))
        return out

    def row_blocks(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield ``(i, j, X[i:j])`` widened to float32 (float64 for a float64 store); the
        yielded tensor is a view of the store (direct) or a reused buffer (valid until the next)."""
        r = self._rows_per_block() if not self.direct else self.n
        for i in range(0, self.n, r):
            j = min(self.n, i + r)
            if self.direct:
                assert self.data is not None
                yield i, j, self.data[i:j]
                continue
            out = self._buffer((j - i) * self.p).view(j - i, self.p)
            if self.data is not None:
                out.copy_(self.data[i:j])
            else:
                raw = np.empty((j - i) * self.p, dtype=_RAW[self.dtype])
                self._read(i * self.p, raw)
                self._raw_to_wide(raw, out)
            yield i, j, out

    def column_panel(self, a: int, b: int) -> torch.Tensor:
        """X[:, a:b] widened (a view for a direct store, else a fresh tensor)."""
        if self.data is not None:
            blk = self.data[:, a:b]
            return blk if self.direct else blk.to(_wide(self.dtype))
        raw = np.empty((self.n, b - a), dtype=_RAW[self.dtype])
        for i in range(self.n):
            self._read(i * self.p + a, raw[i])
        out = torch.empty((self.n, b - a), dtype=_wide(self.dtype))
        return self._raw_to_wide(raw, out)

    def panel_width(self) -> int:
        """Columns per panel so that a widened panel takes about ``block_bytes`` (4x that for a
        file, so that each positioned read of a row's segment is long)."""
        budget = self.block_bytes * (1 if self.in_memory else 4)
        return max(1, min(self.p, budget // max(1, 4 * self.n)))

    # ------------------------------------------------------------------ products
    def _vec(self, v: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
        return t.to(device=self.device, dtype=_wide(self.dtype))

    @staticmethod
    def _out(t: torch.Tensor) -> np.ndarray:
        return t.to("cpu", torch.float64).numpy()

    def matvec(self, d: np.ndarray) -> np.ndarray:
        """X d, float64 (n,)."""
        dv = self._vec(d)
        out = torch.empty(self.n, dtype=dv.dtype, device=self.device)
        for i, j, blk in self.row_blocks():
            out[i:j] = torch.mv(blk, dv)
        return self._out(out)

    def rmatvec(self, r: np.ndarray) -> np.ndarray:
        """X^T r, float64 (p,)."""
        rv = self._vec(r)
        if self.direct:
            assert self.data is not None
            return self._out(torch.mv(self.data.T, rv))
        acc = torch.zeros(self.p, dtype=torch.float64, device=self.device)
        for i, j, blk in self.row_blocks():
            acc += torch.mv(blk.T, rv[i:j])
        return self._out(acc)

    def normal_products(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(X d, X^T X d), float64; one pass over a streamed store (two BLAS calls if direct)."""
        if self.direct:
            r = self.matvec(d)
            return r, self.rmatvec(r)
        dv = self._vec(d)
        r = torch.empty(self.n, dtype=dv.dtype, device=self.device)
        acc = torch.zeros(self.p, dtype=torch.float64, device=self.device)
        for i, j, blk in self.row_blocks():
            r[i:j] = torch.mv(blk, dv)
            acc += torch.mv(blk.T, r[i:j])
        return self._out(r), self._out(acc)

    def column_sq_sums(self) -> np.ndarray:
        """diag(X^T X): float64 (p,) column sums of squares."""
        acc = torch.zeros(self.p, dtype=torch.float64, device=self.device)
        for i, j, blk in self.row_blocks():
            for s in range(0, j - i, 64):          # 64 rows at a time bound the squares' copy
                part = blk[s:s + 64]
                acc += (part * part).sum(0, dtype=torch.float64)
        return self._out(acc)

    def frobenius2(self) -> float:
        """||X||_F^2 (computed once per content)."""
        if self._fro2 is None:
            total = 0.0
            for i, j, blk in self.row_blocks():
                for s in range(0, j - i, 64):
                    total += float(torch.linalg.vector_norm(blk[s:s + 64])) ** 2
            self._fro2 = total
        return self._fro2

    def column_sums(self) -> np.ndarray:
        """X^T 1, float64 (p,)."""
        return self.rmatvec(np.ones(self.n))

    def to_tensor(self) -> torch.Tensor:
        """All of X as one CPU tensor in the widened dtype (a copy unless direct; n p 4 bytes)."""
        if self.direct:
            assert self.data is not None
            return self.data.cpu()
        out = torch.empty((self.n, self.p), dtype=_wide(self.dtype))
        for i, j, blk in self.row_blocks():
            out[i:j] = blk.cpu()
        return out

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        arr = self.to_tensor().numpy()
        return arr if dtype is None else arr.astype(dtype)

    def close(self) -> None:
        """Release the memory / close and delete the file (the store is unusable afterwards)."""
        self.data = None
        self._buf = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            try:
                os.remove(self.path)  # type: ignore[arg-type]
            except OSError:
                pass

    def __del__(self) -> None:  # pragma: no cover - best effort for a forgotten file store
        try:
            if self._fh is not None:
                self.close()
        except Exception:
            pass


def as_store(X: "np.ndarray | torch.Tensor | GradientStore") -> GradientStore:
    """Wrap an (n, p) float array or tensor as a store without copying it."""
    if isinstance(X, GradientStore):
        return X
    t = X.detach() if isinstance(X, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(X))
    if t.ndim != 2:
        raise OptionError(f"`X` must be a 2-D (n, p) array; got shape {tuple(t.shape)}")
    if t.dtype not in _RAW:
        raise OptionError(f"`X` must be float32, float64, bfloat16 or float16; got dtype {t.dtype}")
    return GradientStore(t.shape[0], t.shape[1], t.dtype, device=t.device, data=t)


def choose_storage(n: int, p: int, max_memory: int, x_dtype: str | None = None,
                   on_disk: bool = False) -> tuple[str, bool]:
    """(dtype, on_disk) for an (n, p) X. Given ``x_dtype`` / ``on_disk`` win; otherwise
    float32 in memory if n p 4 bytes fit in half of ``max_memory`` (the rest is for the
    model, its activations and the chunks of gradients), bfloat16 in memory if n p 2 bytes do,
    else a bfloat16 file."""
    if x_dtype is not None:
        choice(x_dtype, "x_dtype", tuple(STORE_DTYPES))
    if on_disk:
        return x_dtype or "bfloat16", True
    if x_dtype is not None:
        return x_dtype, False
    room = 0.5 * max_memory
    if n * p * 4 <= room:
        return "float32", False
    if n * p * 2 <= room:
        return "bfloat16", False
    return "bfloat16", True

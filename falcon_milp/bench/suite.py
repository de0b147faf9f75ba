"""Instance suites for the benchmark harness.

Three sources of instances:

- committed files under ``instances/`` (``tiny/``, ``small/``, ``real/``), format in
  ``instances/README.md``;
- architecture-shaped instances generated at run time from a name,
  ``synthetic:<arch>:nnz<x>:flops<y>:seed<n>[:float32|:float64]`` (``arch`` one of
  resnet20, mobilenetv1, resnet50, built by :func:`falcon_milp.synthetic.arch_instance`,
  or ``layered<p>x<L>``: ``p`` weights in ``L`` layers, built by
  :func:`falcon_milp.synthetic.random_layered`; ``x``/``y`` the kept fractions of
  weights / FLOPs);
- any ``.npz`` file or folder of them given on the command line.

``instances/MANIFEST`` (JSON Lines, one object per instance, fields in
``instances/README.md``) holds the best-known lower and upper bounds of every suite
instance, which solver proved them, and which named suites (``quick``, ``full``) use it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..exceptions import FalconError, InstanceFileError
from ..instance import PruningInstance

INSTANCES_ENV = "FALCON_MILP_INSTANCES"
"""Environment variable naming the instances folder (default: ``instances/`` of the checkout)."""

MANIFEST_SCHEMA = 1
FILE_FAMILIES = ("tiny", "small", "real")
SYNTHETIC_ARCHS = ("resnet20", "mobilenetv1", "resnet50")
OPTIMAL_RTOL = 1e-9
"""Best-known lower and upper bounds closer than this (relative) count as a proven optimum."""

_SPEC_RE = re.compile(
    r"^synthetic:(?P<arch>layered(?P<p>[0-9]+)x(?P<layers>[0-9]+)|[a-z0-9]+):nnz(?P<nnz>[0-9.eE+-]+):flops(?P<flops>[0-9.eE+-]+)"
    r":seed(?P<seed>[0-9]+)(?::(?P<dtype>float32|float64))?$")


class SuiteError(InstanceFileError):
    """A suite entry (path, synthetic name, MANIFEST line) that cannot be used."""


def instances_root() -> Path:
    """The instances folder: $FALCON_MILP_INSTANCES, else ``instances/`` next to the package."""
    env = os.environ.get(INSTANCES_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2] / "instances"
    if here.is_dir():
        return here
    return Path.cwd() / "instances"


# --------------------------------------------------------------------------- bounds
@dataclass(frozen=True)
class BestKnown:
    """Best-known bounds on the optimum of one instance (a maximisation).

    ``lower``: the best objective of a feasible mask found so far; ``upper``: the smallest
    proven upper bound. ``lower_by`` / ``upper_by`` name the solvers that reached them.
    """

    lower: float | None
    upper: float | None
    lower_by: tuple[str, ...] = ()
    upper_by: tuple[str, ...] = ()

    @property
    def optimal(self) -> bool:
        """True when lower and upper agree to OPTIMAL_RTOL: the optimum is proven."""
        if self.lower is None or self.upper is None:
            return False
        return self.upper - self.lower <= OPTIMAL_RTOL * max(abs(self.upper), 1e-12)

    def to_json(self) -> dict[str, Any]:
        return {"best_lower": self.lower, "lower_by": list(self.lower_by),
                "best_upper": self.upper, "upper_by": list(self.upper_by),
                "optimal": self.optimal}


def _opt_float(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SuiteError(f"{what} must be a finite number or null; got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- digest
def problem_digest(instance: PruningInstance) -> str:
    """SHA-256 (first 16 hex digits) of the problem: importances, sizes, costs, names, budgets.

    Metadata is left out, and so is the zip container, so the digest of a file and of the
    same instance rebuilt in memory agree.
    """
    h = hashlib.sha256()
    for arr in (instance.importance, instance.group_sizes, instance.costs):
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    tail = [list(instance.names), list(instance.resource_names),
            [float(b).hex() for b in instance.budgets]]
    h.update(json.dumps(tail).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class ManifestEntry:
    """One line of ``instances/MANIFEST``."""

    name: str
    family: str
    source: str                     # file path relative to instances/, or a synthetic spec
    n_weights: int
    n_groups: int
    budgets: dict[str, float | None]  # resource -> budget (null = no budget / infinity)
    provenance: str
    digest: str
    best: BestKnown
    suites: tuple[str, ...] = ()

    @property
    def synthetic(self) -> bool:
        return self.source.startswith("synthetic:")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": MANIFEST_SCHEMA, "name": self.name, "family": self.family,
            "source": self.source, "n_weights": self.n_weights, "n_groups": self.n_groups,
            "budgets": self.budgets, "provenance": self.provenance, "digest": self.digest}
        out.update(self.best.to_json())
        out["suites"] = list(self.suites)
        return out


def _manifest_entry(obj: Any, where: str) -> ManifestEntry:
    if not isinstance(obj, dict):
        raise SuiteError(f"{where}: each line must be a JSON object")
    if obj.get("schema") != MANIFEST_SCHEMA:
        raise SuiteError(f"{where}: unknown `schema` {obj.get('schema')!r}; this version reads {MANIFEST_SCHEMA}")
    for key, typ in (("name", str), ("family", str), ("source", str), ("provenance", str),
                     ("digest", str), ("n_weights", int), ("n_groups", int), ("budgets", dict),
                     ("lower_by", list), ("upper_by", list), ("suites", list)):
        if not isinstance(obj.get(key), typ) or isinstance(obj.get(key), bool):
            raise SuiteError(f"{where}: `{key}` must be a {typ.__name__}; got {obj.get(key)!r}")
    best = BestKnown(_opt_float(obj.get("best_lower"), f"{where}: `best_lower`"),
                     _opt_float(obj.get("best_upper"), f"{where}: `best_upper`"),
                     tuple(obj["lower_by"]), tuple(obj["upper_by"]))
    if best.lower is not None and best.upper is not None and best.lower > best.upper:
        raise SuiteError(f"{where}: `best_lower` {best.lower!r} exceeds `best_upper` {best.upper!r}")
    return ManifestEntry(obj["name"], obj["family"], obj["source"], obj["n_weights"],
                         obj["n_groups"], dict(obj["budgets"]), obj["provenance"], obj["digest"],
                         best, tuple(obj["suites"]))


def read_manifest(path: str | os.PathLike | None = None) -> dict[str, ManifestEntry]:
    """name -> entry. A missing MANIFEST gives an empty dict; a malformed line raises SuiteError."""
    path = Path(path) if path is not None else instances_root() / "MANIFEST"
    if not path.exists():
        return {}
    entries: dict[str, ManifestEntry] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"MANIFEST '{path}' line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SuiteError(f"{where} is not valid JSON ({exc})") from None
        entry = _manifest_entry(obj, where)
        if entry.name in entries:
            raise SuiteError(f"{where}: instance '{entry.name}' appears twice")
        entries[entry.name] = entry
    return entries


def write_manifest(path: str | os.PathLike, entries: Iterable[ManifestEntry]) -> None:
    """Write the MANIFEST sorted by name, one JSON object per line (floats round-trip exactly)."""
    lines = [json.dumps(e.to_json(), allow_nan=False) for e in sorted(entries, key=lambda e: e.name)]
    Path(path).write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- synthetic
@dataclass(frozen=True)
class SyntheticSpec:
    arch: str
    nnz_fraction: float
    flops_fraction: float
    seed: int
    dtype: str = "float32"

    @property
    def name(self) -> str:
        return (f"synthetic:{self.arch}:nnz{self.nnz_fraction:g}:flops{self.flops_fraction:g}"
                f":seed{self.seed}:{self.dtype}")


def parse_synthetic(spec: str) -> SyntheticSpec:
    """Parse ``synthetic:<arch>:nnz<x>:flops<y>:seed<n>[:float32|:float64]`` (dtype default float32)."""
    m = _SPEC_RE.match(spec)
    if not m:
        raise SuiteError(
            f"`--suite` entry {spec!r} is not a synthetic name; expected "
            "synthetic:<arch>:nnz<x>:flops<y>:seed<n>[:float32|:float64]")
    if m["p"] is not None:
        n, layers = int(m["p"]), int(m["layers"])
        if not 1 <= layers <= n:
            raise SuiteError(f"`--suite` entry {spec!r}: layered<p>x<L> needs 1 <= L <= p; got {n}x{layers}")
    elif m["arch"] not in SYNTHETIC_ARCHS:
        raise SuiteError(f"`--suite` entry {spec!r}: architecture must be one of "
                         f"{', '.join(SYNTHETIC_ARCHS)} or layered<p>x<L>; got {m['arch']!r}")
    try:
        nnz, flops = float(m["nnz"]), float(m["flops"])
    except ValueError:
        raise SuiteError(f"`--suite` entry {spec!r}: nnz and flops must be numbers") from None
    for label, val in (("nnz", nnz), ("flops", flops)):
        if not 0.0 <= val <= 1.0:
            raise SuiteError(f"`--suite` entry {spec!r}: {label} fraction must be in [0, 1]; got {val!r}")
    return SyntheticSpec(m["arch"], nnz, flops, int(m["seed"]), m["dtype"] or "float32")


def synthetic_available() -> bool:
    return importlib.util.find_spec("falcon_milp.synthetic") is not None


def build_synthetic(spec: SyntheticSpec) -> PruningInstance:
    """Generate the instance named by ``spec`` (deterministic in the seed)."""
    if not synthetic_available():
        raise SuiteError(f"'{spec.name}' needs falcon_milp.synthetic, which is not installed")
    from .. import synthetic  # type: ignore[attr-defined]
    m = re.fullmatch(r"layered([0-9]+)x([0-9]+)", spec.arch)
    if m:
        return synthetic.random_layered(int(m[1]), int(m[2]), seed=spec.seed,
                                        nnz_fraction=spec.nnz_fraction,
                                        flops_fraction=spec.flops_fraction,
                                        dtype=np.dtype(spec.dtype).type)
    return synthetic.arch_instance(spec.arch, nnz_fraction=spec.nnz_fraction,
                                   flops_fraction=spec.flops_fraction, seed=spec.seed,
                                   dtype=np.dtype(spec.dtype).type)


# --------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class SuiteEntry:
    """One instance of a suite: how to load it, its family and its best-known bounds."""

    name: str
    family: str
    source: str                  # absolute file path, or a synthetic spec
    best: BestKnown | None = None
    digest: str | None = None    # MANIFEST digest; bounds apply only when the loaded instance matches
    n_weights: int | None = None

    @property
    def synthetic(self) -> bool:
        return self.source.startswith("synthetic:")

    def load(self) -> PruningInstance:
        if self.synthetic:
            return build_synthetic(parse_synthetic(self.source))
        from ..io import load_instance
        return load_instance(self.source)


@dataclass(frozen=True)
class SizeLimit:
    """The largest instance a solver gets in a suite (None: no limit on that count)."""

    max_weights: int | None = None
    max_groups: int | None = None

    def refuses(self, n_weights: int, n_groups: int) -> str | None:
        """Why an instance is too large, or None when it is not."""
        if self.max_weights is not None and n_weights > self.max_weights:
            return f"at most {self.max_weights:,} weights; this one has {n_weights:,}"
        if self.max_groups is not None and n_groups > self.max_groups:
            return f"at most {self.max_groups:,} groups; this one has {n_groups:,}"
        return None

    def to_json(self) -> dict[str, int | None]:
        return {"max_weights": self.max_weights, "max_groups": self.max_groups}


@dataclass(frozen=True)
class Suite:
    """An ordered list of entries plus the run settings of a named suite."""

    name: str
    entries: tuple[SuiteEntry, ...]
    time_limit: float | None = None
    size_limits: Mapping[str, SizeLimit] = field(default_factory=dict)
    notes: tuple[str, ...] = ()   # e.g. files found that have no MANIFEST line


@dataclass(frozen=True)
class SuiteSettings:
    """Per-suite defaults: time limit per run and the largest instance each solver gets.

    A solver that is not listed runs on every instance (the registry's own size limits
    still apply and are recorded as ``skipped``).
    """

    time_limit: float
    size_limits: Mapping[str, SizeLimit]


SUITE_SETTINGS: dict[str, SuiteSettings] = {
    # quick: HiGHS only where it proves optimality in about a second (the compact MILP's
    # size grows with the number of groups).
    "quick": SuiteSettings(10.0, {"highs-ilp": SizeLimit(3_000), "highs-lp": SizeLimit(3_000),
                                  "highs-compact": SizeLimit(3_000, 300)}),
    # full: the HiGHS LP and compact MILP also on the real and ResNet20-sized instances,
    # under the time limit; the per-weight ILP up to 30k weights (on ResNet20, 268k weights,
    # it ran 477 s past a 60 s limit without a solution: docs/bench/highs-ilp-resnet20/).
    "full": SuiteSettings(60.0, {"highs-ilp": SizeLimit(30_000), "highs-lp": SizeLimit(300_000),
                                 "highs-compact": SizeLimit(300_000)}),
}
PATH_SUITE_TIME_LIMIT = 60.0


def _family_of(name: str) -> str:
    head = name.split("/", 1)[0]
    return head if head in FILE_FAMILIES else "user"


def _name_of_file(path: Path, root: Path) -> str:
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        return str(path.with_suffix(""))
    return str(rel.with_suffix("").as_posix())


def _file_entry(path: Path, root: Path, manifest: Mapping[str, ManifestEntry]) -> SuiteEntry:
    name = _name_of_file(path, root)
    m = manifest.get(name)
    if m is not None:
        return SuiteEntry(name, m.family, str(path.resolve()), m.best, m.digest, m.n_weights)
    return SuiteEntry(name, _family_of(name), str(path.resolve()))


def _synthetic_entry(spec: str, manifest: Mapping[str, ManifestEntry]) -> SuiteEntry:
    parsed = parse_synthetic(spec)
    name = parsed.name
    m = manifest.get(name)
    if m is not None:
        return SuiteEntry(name, m.family, name, m.best, m.digest, m.n_weights)
    return SuiteEntry(name, synthetic_family(parsed), name)


def synthetic_family(spec: SyntheticSpec) -> str:
    """synthetic/<arch>, or synthetic/layered for the random layered ones."""
    return "synthetic/layered" if spec.arch.startswith("layered") else f"synthetic/{spec.arch}"


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.npz") if p.is_file())


def named_suite(name: str, root: Path | None = None,
                manifest: Mapping[str, ManifestEntry] | None = None) -> Suite:
    """The ``quick`` or ``full`` suite: the MANIFEST entries tagged with it; ``full`` also takes
    every file under ``tiny/``, ``small/``, ``real/`` that has no MANIFEST line yet (no bounds)."""
    if name not in SUITE_SETTINGS:
        raise SuiteError(f"unknown suite {name!r}; named suites: {', '.join(SUITE_SETTINGS)}")
    root = root or instances_root()
    manifest = read_manifest(root / "MANIFEST") if manifest is None else manifest
    entries: list[SuiteEntry] = []
    seen: set[str] = set()
    for m in manifest.values():
        if name not in m.suites:
            continue
        if m.synthetic:
            entries.append(SuiteEntry(m.name, m.family, m.source, m.best, m.digest, m.n_weights))
        else:
            path = root / m.source
            if not path.exists():
                raise SuiteError(f"MANIFEST instance '{m.name}': file '{path}' does not exist "
                                 "(run scripts/make_suite.py)")
            entries.append(SuiteEntry(m.name, m.family, str(path.resolve()), m.best, m.digest, m.n_weights))
        seen.add(m.name)
    notes = []
    extra_dirs = () if name == "quick" else FILE_FAMILIES
    for sub in extra_dirs:
        for path in _files_under(root / sub):
            entry = _file_entry(path, root, manifest)
            if entry.name not in seen and entry.name not in manifest:
                entries.append(entry)
                seen.add(entry.name)
                notes.append(f"'{entry.name}' has no MANIFEST line: no best-known bounds")
    entries = _ordered(entries)
    settings = SUITE_SETTINGS[name]
    return Suite(name, tuple(entries), settings.time_limit, dict(settings.size_limits), tuple(notes))


def _ordered(entries: list[SuiteEntry]) -> list[SuiteEntry]:
    """tiny, small, real, user files, then synthetic; inside each by size then name."""
    rank = {"tiny": 0, "small": 1, "real": 2, "user": 3}

    def key(e: SuiteEntry) -> tuple:
        top = 4 if e.synthetic else rank.get(_family_of(e.name), 3)
        return (top, e.n_weights if e.n_weights is not None else 0, e.name)
    return sorted(entries, key=key)


def resolve_suite(items: Sequence[str], root: Path | None = None,
                  manifest_path: str | os.PathLike | None = None) -> Suite:
    """Turn ``--suite`` values into a Suite.

    One value ``quick`` or ``full`` gives that named suite. Otherwise every value is an
    ``.npz`` file, a folder (all ``.npz`` files below it) or a synthetic name; bounds come
    from the MANIFEST when the instance is listed there.
    """
    if not items:
        raise SuiteError("`--suite` needs at least one value")
    root = root or instances_root()
    manifest = read_manifest(manifest_path if manifest_path is not None else root / "MANIFEST")
    if len(items) == 1 and items[0] in SUITE_SETTINGS:
        return named_suite(items[0], root, manifest)
    entries: list[SuiteEntry] = []
    seen: set[str] = set()
    for item in items:
        if item in SUITE_SETTINGS:
            raise SuiteError(f"`--suite` {item!r} is a named suite; it cannot be mixed with paths")
        if item.startswith("synthetic:"):
            found = [_synthetic_entry(item, manifest)]
        else:
            path = Path(item)
            if not path.exists():
                raise SuiteError(f"`--suite` path '{item}' does not exist")
            if path.is_dir():
                files = _files_under(path)
                if not files:
                    raise SuiteError(f"`--suite` folder '{item}' holds no .npz instance files")
                found = [_file_entry(p, root, manifest) for p in files]
            elif path.suffix != ".npz":
                raise SuiteError(f"`--suite` path '{item}' is not an .npz instance file")
            else:
                found = [_file_entry(path, root, manifest)]
        for e in found:
            if e.name not in seen:
                entries.append(e)
                seen.add(e.name)
    label = "paths" if len(items) > 1 else items[0]
    return Suite(label, tuple(entries), PATH_SUITE_TIME_LIMIT, {})


def check_synthetic_available(suite: Suite) -> list[str]:
    """Names of synthetic entries that cannot be built here (generator module missing)."""
    if synthetic_available():
        return []
    return [e.name for e in suite.entries if e.synthetic]


__all__ = ["BestKnown", "FalconError", "ManifestEntry", "SizeLimit", "Suite", "SuiteEntry", "SuiteError",
           "SuiteSettings", "SUITE_SETTINGS", "SyntheticSpec", "build_synthetic",
           "instances_root", "named_suite", "parse_synthetic", "problem_digest", "read_manifest",
           "resolve_suite", "write_manifest"]

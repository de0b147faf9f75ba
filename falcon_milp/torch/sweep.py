"""Sweeps: a grid of pruning runs read from a TOML file, one JSONL record per run.

``falcon-milp sweep CONFIG.toml`` (:mod:`.sweep_command`) reads the config with
:func:`load_config`, plans one :class:`SweepRun` per point of the grid, runs
:func:`run_one` on each with an executor of :mod:`falcon_milp.executors` (this process, a
process pool or Dask) and writes :func:`summary_markdown` and :func:`write_pareto_plot`.
Importing this module does not import torch (:func:`run_one` does, in the worker).

The config (paths relative to the config file)::

    title = "MNIST CNN: methods x FLOP budgets"   # optional
    data = "mnist5k"        # calibration data, as `prune --data` (default mnist5k for MNIST nets)
    test_data = "mnist"     # evaluation: 'mnist' (bundled test set), a directory (MNIST t10k
                            # IDX files or CIFAR-10 test_batch), or 'none'
    n_test = 10000          # optional: a fixed subset of the evaluation data
    threads = 1             # torch (and numpy BLAS) threads per run (default 1)

    [[model]]               # one or more
    arch = "mnist_cnn"      # an architecture of `prune --arch`
    # checkpoint = "cnn.pt" (default: the bundled weights) or random_init = true; name = "..."

    [grid]                  # a value or a list of values per option; the grid is their product
    method = ["magnitude", "obs", "falcon"]
    flops_fraction = [0.1, 0.2, 0.3]
    seed = [0, 1]
    n_grads = 500           # any option of prune_model in OPTIONS, e.g. lam2_rel, stages, solver

Every run's record (:data:`FIELDS`) says what ran (``model``, ``options``), how it went
(``status`` ``ok`` or ``failed`` with a one-line ``error``; a failed run does not stop the
sweep), test accuracy (pruned and dense), kept FLOP and NNZ fractions, the phase times of
:class:`~falcon_milp.torch.prune.PruneReport`, wall time, peak memory, host and process.
``run_id`` is a digest of everything that defines the run, so a re-run of the same config
skips the runs already recorded (resume).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import statistics
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..exceptions import FalconError
from ..executors import host_name, one_line
from ..memory import PeakMemory

__all__ = ["FIELDS", "OPTIONS", "SCHEMA", "ModelSpec", "SweepConfig", "SweepConfigError", "SweepRun",
           "check_config", "latest_records", "load_config", "lost_record", "run_one", "summary_markdown",
           "write_pareto_plot"]

SCHEMA = 1
TOP_KEYS = ("title", "data", "test_data", "n_test", "threads", "model", "grid")
MODEL_KEYS = ("arch", "checkpoint", "random_init", "name")
AXES = ("method", "flops_fraction", "nnz_fraction", "seed")
"""Grid options with their own columns in the summary (``method`` is required)."""

# option -> (kind, argument): int (minimum), positive / real / fraction, bool, choice (values
# or (module, constant) of the torch side, checked lazily), solver
OPTIONS: dict[str, tuple[str, Any]] = {
    "method": ("choice", "methods"),
    "flops_fraction": ("fraction", None),
    "nnz_fraction": ("fraction", None),
    "seed": ("int", 0),
    "solver": ("solver", None),
    "n_grads": ("int", 1),
    "lam2": ("positive", None),
    "lam2_rel": ("positive", None),
    "alpha": ("real", None),
    "val_fraction": ("fraction", None),
    "fisher": ("choice", ("prune", "FISHERS")),
    "grads_per_row": ("int", 1),
    "layer_scales": ("choice", ("search", "none")),
    "support_iters": ("int", 0),
    "safeguard": ("bool", None),
    "criterion": ("choice", ("referee", "CRITERIA")),
    "bn_recalibrate": ("bool", None),
    "stages": ("int", 1),
    "schedule": ("choice", ("polynomial", "paper")),
    "schedule_start": ("fraction", None),
    "schedule_power": ("positive", None),
    "resample": ("bool", None),
    "max_iter": ("int", 1),
    "tol": ("positive", None),
    "step": ("choice", ("dfo", "STEP_RULES")),
    "metric": ("choice", ("euclidean", "fisher-diagonal")),
    "refine_iters": ("int", 0),
    "block_size": ("int", 1),
    "backsolve_iters": ("int", 0),
}
"""The grid options: the axes and the options of :func:`falcon_milp.torch.prune.prune_model`."""

FIELDS: dict[str, str] = {
    "schema": "record schema version (1)",
    "run_id": "digest of the run's definition (model, data, options): the resume key",
    "key": "index of the run in the grid's order",
    "sweep_id": "id of the sweep invocation that wrote the record",
    "model": "name, arch, checkpoint (null: bundled weights), random_init",
    "method": "pruning method",
    "options": "every grid option of the run (method, budgets, seed, ...)",
    "data": "calibration data",
    "test_data": "evaluation data (null: none)",
    "status": "ok | failed",
    "error": "one-line error of a failed run, else null",
    "test_accuracy": "top-1 accuracy of the pruned model on the evaluation data",
    "dense_test_accuracy": "top-1 accuracy of the model before pruning",
    "n_test": "evaluation examples",
    "kept_flops_fraction": "kept FLOPs (MACs) / dense, measured on the pruned model",
    "kept_nnz_fraction": "kept weights / prunable weights",
    "kept_flops": "kept FLOPs (MACs per example)",
    "kept_nnz": "kept weights",
    "within_budgets": "whether the pruned model meets its budgets",
    "val_loss_after": "validation loss of the pruned model (held-out training examples)",
    "objective_before": "Q at the FLOP-aware magnitude solution",
    "objective_after": "Q at the final weights",
    "choice": "the candidate the referee chose",
    "fallback": "'magnitude' when the safeguard replaced the result",
    "times": "seconds per phase (PruneReport.times; 'total' = prune_model)",
    "load_s": "seconds to build the model and load the data in the worker",
    "wall_s": "seconds of the whole run in the worker",
    "peak_mem_bytes": "peak resident memory during prune_model above the resident memory at its start",
    "mem_method": "how peak memory was measured (falcon_milp.memory.PeakMemory)",
    "threads": "torch (and numpy BLAS) threads of the run",
    "host": "host name of the worker",
    "worker_pid": "process id of the worker",
}


class SweepConfigError(FalconError, ValueError):
    """A sweep config that cannot be used (one line naming the file and the key)."""


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str
    checkpoint: str | None = None       # absolute path; None = bundled weights (or random init)
    random_init: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "arch": self.arch, "checkpoint": self.checkpoint,
                "random_init": self.random_init}


@dataclass(frozen=True)
class SweepRun:
    """One pruning run: everything the worker needs, picklable."""

    key: int
    run_id: str
    model: ModelSpec
    options: dict[str, Any]
    data: str | None
    test_data: str | None
    n_test: int | None
    threads: int
    sweep_id: str = ""

    @property
    def label(self) -> str:
        o = self.options
        budget = ", ".join(f"{k.split('_')[0]} {o[k]:g}" for k in ("flops_fraction", "nnz_fraction") if k in o)
        return f"{self.model.name} {o['method']} ({budget}) seed {o.get('seed', 0)}"


@dataclass
class SweepConfig:
    path: Path
    title: str
    models: list[ModelSpec]
    grid: dict[str, list[Any]]        # option -> values, in the config's order
    data: str | None
    test_data: str | None
    n_test: int | None
    threads: int
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def varying(self) -> list[str]:
        """Grid options with more than one value, other than the :data:`AXES`."""
        return [k for k, v in self.grid.items() if len(v) > 1 and k not in AXES]

    def runs(self, sweep_id: str = "") -> list[SweepRun]:
        """Every point of the grid: models x options (config order) x seeds, in a fixed order."""
        keys = [k for k in self.grid if k != "seed"] + (["seed"] if "seed" in self.grid else [])
        out = []
        for model in self.models:
            for values in itertools.product(*(self.grid[k] for k in keys)):
                options = dict(zip(keys, values))
                options.setdefault("seed", 0)
                run_id = _digest({"model": model.to_json(), "options": options, "data": self.data,
                                  "test_data": self.test_data, "n_test": self.n_test,
                                  "threads": self.threads})
                out.append(SweepRun(len(out), run_id, model, options, self.data, self.test_data,
                                    self.n_test, self.threads, sweep_id))
        return out


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: str | os.PathLike) -> SweepConfig:
    """Read and check a sweep config (module docstring); SweepConfigError names the key."""
    path = Path(path)
    where = f"config '{path}'"
    if not path.is_file():
        raise SweepConfigError(f"{where} does not exist" if not path.exists() else f"{where} is not a file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SweepConfigError(f"{where} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise SweepConfigError(f"{where} is not valid TOML: {one_line(exc).split(': ', 1)[-1]}") from None
    return check_config(raw, path)


def check_config(raw: Mapping[str, Any], path: Path) -> SweepConfig:
    where = f"config '{path}'"
    base = path.resolve().parent

    def fail(key: str, what: str) -> SweepConfigError:
        return SweepConfigError(f"{where}: `{key}` {what}")

    for k in raw:
        if k not in TOP_KEYS:
            raise fail(k, f"is not a sweep setting; use {', '.join(TOP_KEYS)}")
    title = raw.get("title", path.stem)
    if not isinstance(title, str):
        raise fail("title", f"must be a string; got {title!r}")
    threads = raw.get("threads", 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise fail("threads", f"must be an integer >= 1; got {threads!r}")
    n_test = raw.get("n_test")
    if n_test is not None and (isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 1):
        raise fail("n_test", f"must be an integer >= 1; got {n_test!r}")

    models = _check_models(raw.get("model"), base, fail)
    data = raw.get("data")
    if data is not None:
        if not isinstance(data, str) or not data:
            raise fail("data", f"must be 'mnist5k', 'random' or a directory; got {data!r}")
        if data not in ("mnist5k", "random"):
            d = (base / data).resolve()
            if not d.is_dir():
                raise fail("data", f"must be 'mnist5k', 'random' or a directory; '{data}' is neither")
            data = str(d)
    else:
        from .model_options import BUNDLED_WEIGHTS
        other = [m.arch for m in models if m.arch not in BUNDLED_WEIGHTS]
        if other:
            raise fail("data", f"is required for arch '{other[0]}' (the default mnist5k is for the MNIST networks)")
    test_data = raw.get("test_data", "mnist")
    if not isinstance(test_data, str) or not test_data:
        raise fail("test_data", f"must be 'mnist', 'none' or a directory; got {test_data!r}")
    if test_data == "none":
        test_data = None
    elif test_data != "mnist":
        d = (base / test_data).resolve()
        if not d.is_dir():
            raise fail("test_data", f"must be 'mnist', 'none' or a directory; '{test_data}' is neither")
        if not (any((d / f"t10k-images-idx3-ubyte{s}").is_file() for s in ("", ".gz"))
                or (d / "test_batch").is_file() or (d / "cifar-10-batches-py" / "test_batch").is_file()):
            raise fail("test_data", f"directory '{test_data}' holds no test set (MNIST "
                                    "t10k-images-idx3-ubyte[.gz] or CIFAR-10 test_batch)")
        test_data = str(d)

    grid = _check_grid(raw.get("grid"), fail)
    return SweepConfig(path, title, models, grid, data, test_data, n_test, threads, dict(raw))


def _check_models(value: Any, base: Path, fail: Any) -> list[ModelSpec]:
    from .model_options import ARCHS, BUNDLED_WEIGHTS
    if value is None:
        raise fail("model", "is missing: add a [[model]] table with `arch` (and `checkpoint`)")
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise fail("model", "must be one or more [[model]] tables")
    models, names = [], set()
    for i, m in enumerate(value, start=1):
        at = f"model[{i}]"
        for k in m:
            if k not in MODEL_KEYS:
                raise fail(f"{at}.{k}", f"is not a model setting; use {', '.join(MODEL_KEYS)}")
        arch = m.get("arch")
        if arch is None:
            raise fail(f"{at}.arch", f"is missing; one of {', '.join(ARCHS)}")
        if arch not in ARCHS:
            raise fail(f"{at}.arch", f"must be one of {', '.join(ARCHS)}; got {arch!r}")
        random_init = m.get("random_init", False)
        if not isinstance(random_init, bool):
            raise fail(f"{at}.random_init", f"must be true or false; got {random_init!r}")
        ckpt = m.get("checkpoint")
        if ckpt is not None:
            if random_init:
                raise fail(f"{at}.checkpoint", "and `random_init = true` exclude each other")
            if not isinstance(ckpt, str) or not ckpt:
                raise fail(f"{at}.checkpoint", f"must be a file path; got {ckpt!r}")
            p = (base / ckpt).resolve()
            if not p.is_file():
                raise fail(f"{at}.checkpoint", f"'{ckpt}' does not exist" if not p.exists() else f"'{ckpt}' is not a file")
            ckpt = str(p)
        elif not random_init and arch not in BUNDLED_WEIGHTS:
            raise fail(f"{at}.checkpoint", f"is required for arch '{arch}' (no bundled weights); "
                                           "or set random_init = true")
        name = m.get("name", arch if ckpt is None else Path(ckpt).stem)
        if not isinstance(name, str) or not name:
            raise fail(f"{at}.name", f"must be a non-empty string; got {name!r}")
        if name in names:
            raise fail(f"{at}.name", f"{name!r} is used by another model; give each model its own `name`")
        names.add(name)
        models.append(ModelSpec(name, arch, ckpt, random_init))
    return models


def _check_grid(value: Any, fail: Any) -> dict[str, list[Any]]:
    if value is None:
        raise fail("grid", "is missing: add a [grid] table with `method` and `flops_fraction` / `nnz_fraction`")
    if not isinstance(value, dict):
        raise fail("grid", "must be a table")
    grid: dict[str, list[Any]] = {}
    for k, v in value.items():
        key = f"grid.{k}"
        if k not in OPTIONS:
            raise fail(key, f"is not a grid option; use {', '.join(OPTIONS)}")
        values = v if isinstance(v, list) else [v]
        if not values:
            raise fail(key, "is an empty list; give at least one value")
        checked = []
        for j, x in enumerate(values):
            checked.append(_check_value(k, x, f"{key}" + (f"[{j}]" if isinstance(v, list) else ""), fail))
        dup = next((x for i, x in enumerate(checked) if x in checked[:i]), None)
        if dup is not None:
            raise fail(key, f"lists {dup!r} twice")
        grid[k] = checked
    if "method" not in grid:
        raise fail("grid.method", f"is missing; one or more of {', '.join(_methods())}")
    if "flops_fraction" not in grid and "nnz_fraction" not in grid:
        raise fail("grid.flops_fraction", "is missing: give `flops_fraction` and/or `nnz_fraction`")
    return grid


def _methods() -> tuple[str, ...]:
    from .prune_command import METHODS
    return METHODS


def _check_value(option: str, x: Any, key: str, fail: Any) -> Any:
    kind, arg = OPTIONS[option]
    if kind == "int":
        if isinstance(x, bool) or not isinstance(x, int) or x < arg:
            raise fail(key, f"must be an integer >= {arg}; got {x!r}")
        return x
    if kind in ("fraction", "positive", "real"):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise fail(key, f"must be a finite number; got {x!r}")
        if kind == "fraction" and not 0.0 <= x <= 1.0:
            raise fail(key, f"must be in [0, 1]; got {x!r}")
        if kind == "positive" and not x > 0:
            raise fail(key, f"must be a number > 0; got {x!r}")
        return float(x)
    if kind == "bool":
        if not isinstance(x, bool):
            raise fail(key, f"must be true or false; got {x!r}")
        return x
    if kind == "solver":
        from ..solvers.registry import solver_names
        names = solver_names()
        if x not in names:
            raise fail(key, f"must be one of {', '.join(names)}; got {x!r}")
        return x
    if arg == "methods":
        choices = _methods()
    elif len(arg) == 2 and arg[0] in ("prune", "referee", "dfo") and arg[1].isupper():
        import importlib
        choices = tuple(getattr(importlib.import_module(f".{arg[0]}", __package__), arg[1]))
    else:
        choices = arg
    if x not in choices:
        raise fail(key, f"must be one of {', '.join(choices)}; got {x!r}")
    return x


# --------------------------------------------------------------------------- the worker
_CACHE: dict[tuple, Any] = {}
_CACHE_MAX = 8


def _cached(key: tuple, make: Any) -> Any:
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = make()
    return _CACHE[key]


def _load_test(spec: str, n: int | None) -> Any:
    from .data import load_cifar10, load_mnist, subset
    root = Path(spec) if spec != "mnist" else None
    if root is None or any((root / f"t10k-images-idx3-ubyte{s}").is_file() for s in ("", ".gz")):
        x, y = load_mnist(root, "test")
    else:
        x, y = load_cifar10(root, "test")
    return subset(x, y, n, 0)


def _build(model: ModelSpec, seed: int) -> Any:
    from .architectures import build_model, load_checkpoint, pretrained_path
    net = build_model(model.arch, seed=seed)
    if model.checkpoint:
        load_checkpoint(net, model.checkpoint)
    elif not model.random_init:
        load_checkpoint(net, pretrained_path(model.arch))
    return net.eval()


def _base_record(run: SweepRun) -> dict[str, Any]:
    rec: dict[str, Any] = {k: None for k in FIELDS}
    rec.update(schema=SCHEMA, run_id=run.run_id, key=run.key, sweep_id=run.sweep_id,
               model=run.model.to_json(), method=run.options["method"], options=dict(run.options),
               data=run.data or "mnist5k", test_data=run.test_data, threads=run.threads,
               host=host_name(), worker_pid=os.getpid(), times={}, status="failed")
    return rec


def _blas_threads(n: int) -> Any:
    """numpy's BLAS limited to ``n`` threads as well (threadpoolctl, when installed), so a run
    computes the same numbers in this process as in a one-thread dask worker."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def lost_record(run: SweepRun, message: str) -> dict[str, Any]:
    """The record of a run that gave no result (its dask worker died on every try)."""
    rec = _base_record(run)
    rec.update(status="failed", error=f"no result: {message}", host=None, worker_pid=None)
    return rec


def _plain(value: Any) -> Any:
    """JSON-safe: numpy / torch scalars to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_one(run: SweepRun) -> dict[str, Any]:
    """Prune one model as ``run`` says and return its record (:data:`FIELDS`). An error of the
    run is recorded (``status`` failed, ``error`` one line), never raised (KeyboardInterrupt and
    SystemExit pass through)."""
    t0 = time.perf_counter()
    rec = _base_record(run)
    try:
        import torch
        threads = torch.get_num_threads()
        torch.set_num_threads(run.threads)
        try:
            with _blas_threads(run.threads):
                _prune(run, rec)
        finally:
            torch.set_num_threads(threads)
        rec.update(status="ok", error=None)
    except Exception as exc:  # noqa: BLE001 - a failed run is a result of the sweep
        rec.update(status="failed", error=one_line(exc))
    rec["wall_s"] = time.perf_counter() - t0
    return _plain(rec)


def _prune(run: SweepRun, rec: dict[str, Any]) -> None:
    from .prune import prune_model
    from .prune_command import load_calibration
    from .train import evaluate

    opts = dict(run.options)
    method, seed = opts.pop("method"), opts.get("seed", 0)
    t = time.perf_counter()
    net = _build(run.model, seed)
    n_grads = opts.get("n_grads", 1000)
    random = run.data == "random"          # else the whole training set: the same for every seed
    calib = _cached(("calib", run.data, run.model.arch, n_grads if random else None, seed if random else None),
                    lambda: load_calibration(run.data, run.model.arch, n_grads, seed))
    test = None
    if run.test_data is not None:
        test = _cached(("test", run.test_data, run.n_test), lambda: _load_test(run.test_data, run.n_test))
        weights = (run.model.to_json(), seed if run.model.random_init else None, run.test_data, run.n_test)
        rec["dense_test_accuracy"] = _cached(("dense", json.dumps(weights, sort_keys=True)),
                                             lambda: evaluate(net, *test))
        rec["n_test"] = int(test[0].shape[0])
    rec["load_s"] = time.perf_counter() - t
    probe = PeakMemory()
    probe.start()
    report = prune_model(net, calib, method=method, flops_fraction=opts.pop("flops_fraction", None),
                         nnz_fraction=opts.pop("nnz_fraction", None), **opts)
    rec.update(peak_mem_bytes=probe.peak(), mem_method=probe.method)
    if test is not None:
        rec["test_accuracy"] = evaluate(net, *test)
    rec.update({k: getattr(report, k) for k in (
        "kept_flops_fraction", "kept_nnz_fraction", "kept_flops", "kept_nnz", "within_budgets",
        "val_loss_after", "objective_before", "objective_after", "choice", "fallback")})
    rec["times"] = {k: float(v) for k, v in report.times.items()}


# --------------------------------------------------------------------------- records
def latest_records(records: Iterable[dict[str, Any]], runs: Sequence[SweepRun]) -> list[dict[str, Any]]:
    """The last record of each planned run (by ``run_id``), its ``key`` renumbered to the plan,
    in the plan's order; records of runs not in the plan are left out."""
    by_id = {r.run_id: r for r in runs}
    last: dict[str, dict[str, Any]] = {}
    for rec in records:
        run = by_id.get(rec.get("run_id")) if isinstance(rec, dict) else None
        if run is not None and rec.get("schema") == SCHEMA:
            last[run.run_id] = {**rec, "key": run.key}
    return sorted(last.values(), key=lambda r: r["key"])


# --------------------------------------------------------------------------- summary
def _fmt(x: Any, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def _mean_sd(xs: Sequence[float], spec: str = ".4f") -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return format(xs[0], spec)
    return f"{format(statistics.fmean(xs), spec)} ± {format(statistics.stdev(xs), spec)}"


def _budget(o: Mapping[str, Any]) -> str:
    return " ".join(f"{'F' if k == 'flops_fraction' else 'S'} {o[k]:g}" for k in ("flops_fraction", "nnz_fraction")
                    if o.get(k) is not None) or "-"


def summary_markdown(config: SweepConfig, records: Sequence[dict[str, Any]], n_planned: int,
                     meta: Mapping[str, Any], plot: str | None = None) -> str:
    """The sweep's summary: settings, mean over seeds per (model, method, budgets, options),
    failed runs with their errors, then every run."""
    varying = config.varying
    ok = [r for r in records if r["status"] == "ok"]
    failed = [r for r in records if r["status"] != "ok"]
    parts = [f"# Sweep: {config.title}\n"]
    settings = [
        ("config", f"`{config.path}`"),
        ("command", f"`{meta['command']}`" if meta.get("command") else None),
        ("runs", f"{len(records)} of {n_planned} planned recorded: {len(ok)} ok, {len(failed)} failed"
                 + (" (**interrupted**)" if meta.get("interrupted") else "")),
        ("models", ", ".join(f"{m.name} ({m.arch})" for m in config.models)),
        ("grid", "; ".join(f"{k} = {', '.join(map(str, v))}" for k, v in config.grid.items())),
        ("data", f"calibration {config.data or 'mnist5k'}, evaluation {config.test_data or 'none'}"
                 + (f" ({config.n_test} examples)" if config.n_test else "")),
        ("torch threads per run", str(config.threads)),
        ("executor", meta.get("executor_detail")),
        ("wall time of this invocation", f"{meta['wall_s']:.1f} s" if meta.get("wall_s") is not None else None),
        ("runs recorded before (resumed)", str(meta.get("resumed")) if meta.get("resumed") else None),
        ("machine", meta.get("machine")),
        ("hosts", ", ".join(sorted({r["host"] for r in records if r.get("host")})) or None),
    ]
    parts.append("\n".join(f"- {k}: {v}" for k, v in settings if v) + "\n")
    if plot:
        parts.append(f"![test accuracy vs kept FLOPs]({plot})\n")

    parts.append("## Mean over seeds\n\nTest accuracy and kept fractions are means (± sample standard "
                 "deviation) over the seeds that ran ok; time is prune_model's total.\n")
    head = ["model", "method", "budget", *varying, "runs ok", "test accuracy", "kept FLOPs", "kept NNZ", "time s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        o = r["options"]
        g = (r["model"]["name"], r["method"], _budget(o), *(json.dumps(o.get(k)) for k in varying))
        groups.setdefault(g, []).append(r)
    for g, rs in groups.items():
        good = [r for r in rs if r["status"] == "ok"]
        accs = [r["test_accuracy"] for r in good if r["test_accuracy"] is not None]
        row = [f"`{g[0]}`", g[1], g[2], *[json.loads(v) for v in g[3:]], f"{len(good)}/{len(rs)}",
               _mean_sd(accs), _mean_sd([r["kept_flops_fraction"] for r in good], ".3f"),
               _mean_sd([r["kept_nnz_fraction"] for r in good], ".3f"),
               _mean_sd([r["times"].get("total", math.nan) for r in good], ".1f")]
        lines.append("| " + " | ".join(map(str, row)) + " |")
    parts.append("\n".join(lines) + "\n")
    dense = sorted({(r["model"]["name"], r["dense_test_accuracy"]) for r in ok if r["dense_test_accuracy"] is not None})
    if dense:
        parts.append("Dense test accuracy: " + ", ".join(f"`{n}` {a:.4f}" for n, a in dense) + ".\n")

    if failed:
        parts.append("## Failed runs\n")
        parts.append("\n".join(f"- run {r['key']} ({r['model']['name']} {r['method']} {_budget(r['options'])} "
                               f"seed {r['options'].get('seed', 0)}): {r['error']}" for r in failed) + "\n")

    parts.append("## Every run\n")
    head = ["run", "model", "method", "budget", *varying, "seed", "status", "test acc", "kept FLOPs",
            "kept NNZ", "phases (s)", "wall s", "peak MiB", "host"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        o, t = r["options"], r.get("times") or {}
        phases = ", ".join(f"{k} {v:.1f}" for k, v in t.items() if k != "total" and v >= 0.05) or "-"
        mib = None if r.get("peak_mem_bytes") is None else r["peak_mem_bytes"] / 2**20
        row = [r["key"], f"`{r['model']['name']}`", r["method"], _budget(o), *(o.get(k) for k in varying),
               o.get("seed", 0), r["status"], _fmt(r["test_accuracy"]), _fmt(r["kept_flops_fraction"], ".3f"),
               _fmt(r["kept_nnz_fraction"], ".3f"), phases, _fmt(r.get("wall_s"), ".1f"), _fmt(mib, ".0f"),
               r.get("host") or "-"]
        lines.append("| " + " | ".join(map(str, row)) + " |")
    parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated points (fewer kept FLOPs, higher accuracy), by kept FLOPs."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def write_pareto_plot(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> bool:
    """Test accuracy vs kept FLOP fraction: every ok run (faint), the mean over seeds per
    method and budget (line), and the Pareto front of all runs (dashed); one panel per model.
    Returns False (and writes nothing) when no run has an accuracy."""
    ok = [r for r in records if r["status"] == "ok" and r.get("test_accuracy") is not None
          and r.get("kept_flops_fraction") is not None]
    if not ok:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"]["name"] for r in ok))
    methods = list(dict.fromkeys(r["method"] for r in ok))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        rs = [r for r in ok if r["model"]["name"] == model]
        for method in methods:
            mine = [r for r in rs if r["method"] == method]
            if not mine:
                continue
            ax.scatter([r["kept_flops_fraction"] for r in mine], [r["test_accuracy"] for r in mine],
                       color=colors[method], alpha=0.3, s=18, linewidths=0)
            by_point: dict[str, list[dict[str, Any]]] = {}
            for r in mine:
                o = {k: v for k, v in r["options"].items() if k != "seed"}
                by_point.setdefault(json.dumps(o, sort_keys=True), []).append(r)
            means = sorted((statistics.fmean(r["kept_flops_fraction"] for r in g),
                            statistics.fmean(r["test_accuracy"] for r in g)) for g in by_point.values())
            ax.plot([m[0] for m in means], [m[1] for m in means], "o-", color=colors[method], label=method,
                    markersize=5)
        front = _front([(r["kept_flops_fraction"], r["test_accuracy"]) for r in rs])
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="0.4", linestyle="--",
                linewidth=1, label="Pareto front")
        ax.set_xlabel("kept FLOPs (fraction of dense)")
        ax.set_ylabel("test accuracy")
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True

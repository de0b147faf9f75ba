"""Where independent runs execute: in this process, in a process pool, or on Dask.

Shared by ``falcon-milp bench`` and ``falcon-milp sweep``. A run is ``fn(item)`` for a
module-level ``fn`` and a picklable ``item``; :func:`execute` calls ``on_result(result)`` in
this process once per item, in completion order, as results arrive:

- ``local``: one after the other in this process;
- ``processes``: a pool of ``workers`` spawned processes on this machine (they ignore
  Ctrl-C; this process terminates them);
- ``dask``: a :mod:`dask.distributed` client, connected to ``scheduler``
  (``tcp://host:8786``) or, without one, to a ``LocalCluster`` started here (``workers``
  worker processes, default one per available core, one thread each) and closed at the end.
  A task whose worker dies is run again on another worker by the scheduler
  (``distributed.scheduler.allowed-failures`` times, then ``KilledWorker``); a task that
  raises is retried ``retries`` times (``Client.submit(retries=...)``). A few tasks per worker
  thread are submitted ahead, the next ones as results arrive; results are taken with
  ``as_completed`` and deduplicated by item, so each item gives exactly one result.

An item that produced no result (its worker died too often, or ``fn`` raised on every try)
goes to ``on_lost(item, message)``, which returns the result to record instead (a failure
record); without ``on_lost`` the error is raised. Ctrl-C (KeyboardInterrupt) cancels what is
queued or running (dask: ``Client.cancel``; a task already running on a remote worker runs to
its end, its result is dropped), closes the client and the cluster it started, and is
re-raised; every result handed to ``on_result`` before it stays handed.

Importing this module imports neither dask nor torch: dask is imported when a dask executor
starts (``pip install 'falcon-milp[dask]'``).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import logging
import multiprocessing as mp
import os
import platform
import signal
import socket
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from .exceptions import FalconError

__all__ = ["EXECUTORS", "ExecutorConfig", "ExecutorError", "add_executor_options", "available_cores",
           "execute", "executor_from_args", "host_name", "one_line", "resolve_executor"]

EXECUTORS = ("local", "processes", "dask")
DEFAULT_RETRIES = 2
"""Retries of a dask task that raised (worker deaths are retried by the scheduler)."""
CONNECT_TIMEOUT_S = 20
CLOSE_TIMEOUT_S = 30
QUEUE_PER_THREAD = 4
MIN_QUEUE = 16
"""Dask: tasks submitted ahead, per worker thread and at least; the rest are submitted as results
arrive, so the scheduler holds a few tasks, not the whole suite (Ctrl-C cancels them at once)."""


class ExecutorError(FalconError, ValueError):
    """An executor that cannot be used as asked (bad option, dask missing, scheduler unreachable)."""


def one_line(exc: BaseException) -> str:
    """``TypeName: first line of the message`` (a FalconError: its message alone)."""
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    return msg if isinstance(exc, FalconError) else f"{type(exc).__name__}: {msg}"


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def host_name() -> str:
    return socket.gethostname()


@dataclass(frozen=True)
class ExecutorConfig:
    """``kind`` in :data:`EXECUTORS`; ``workers``: pool size (processes) or LocalCluster size
    (dask without ``scheduler``; None = one per available core)."""

    kind: str = "local"
    workers: int | None = None
    scheduler: str | None = None
    retries: int = DEFAULT_RETRIES

    def describe(self) -> str:
        if self.kind == "local":
            return "local (in this process)"
        if self.kind == "processes":
            return f"processes ({self.workers} worker processes)"
        if self.scheduler:
            return f"dask (scheduler {self.scheduler})"
        n = self.workers or available_cores()
        return f"dask (LocalCluster, {n} worker processes x 1 thread)"


def resolve_executor(executor: str | None, jobs: int | None = None,
                     scheduler: str | None = None) -> ExecutorConfig:
    """The executor of ``--executor/--jobs/--scheduler``, checked (one-line ExecutorError).

    No ``executor``: ``processes`` when ``jobs`` > 1, else ``local`` (``--jobs`` as before).
    """
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ExecutorError(f"`--jobs` must be an integer >= 1; got {jobs!r}")
    if executor is None:
        executor = "dask" if scheduler else ("processes" if jobs and jobs > 1 else "local")
    if executor not in EXECUTORS:
        raise ExecutorError(f"`--executor` must be one of {', '.join(EXECUTORS)}; got {executor!r}")
    if scheduler is not None and executor != "dask":
        raise ExecutorError(f"`--scheduler` needs `--executor dask`; got `--executor {executor}`")
    if executor == "local":
        if jobs not in (None, 1):
            raise ExecutorError(f"`--jobs {jobs}` needs `--executor processes` or `dask` "
                                "(`local` runs in this process)")
        return ExecutorConfig("local", 1)
    if executor == "processes":
        return ExecutorConfig("processes", jobs or available_cores())
    if scheduler is not None:
        if not scheduler.strip() or any(c.isspace() for c in scheduler):
            raise ExecutorError(f"`--scheduler` must be an address such as tcp://host:8786; got {scheduler!r}")
        if jobs not in (None, 1):
            raise ExecutorError("`--jobs` sizes a LocalCluster; with `--scheduler` the cluster's own "
                                "workers run the tasks (leave `--jobs` out)")
        return ExecutorConfig("dask", None, scheduler)
    return ExecutorConfig("dask", jobs)


def add_executor_options(parser: argparse.ArgumentParser, jobs_default: int | None = None) -> None:
    """``--executor``, ``--jobs``, ``--scheduler`` (read back with :func:`executor_from_args`)."""
    parser.add_argument("--executor", default=None, choices=EXECUTORS,
                        help="where runs execute: local (this process), processes (a pool of --jobs "
                             "processes), dask (dask.distributed; a LocalCluster of --jobs workers, "
                             "or the cluster of --scheduler). Default: processes when --jobs > 1, else local")
    parser.add_argument("--jobs", type=int, default=jobs_default, metavar="N",
                        help="worker processes (processes; dask LocalCluster: default one per core)")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="dask scheduler address, e.g. tcp://host:8786 (implies --executor dask)")


def executor_from_args(args: argparse.Namespace) -> ExecutorConfig:
    return resolve_executor(args.executor, args.jobs, args.scheduler)


# --------------------------------------------------------------------------- running
def execute(fn: Callable[[Any], Any], items: Iterable[Any], config: ExecutorConfig,
            on_result: Callable[[Any], None], *,
            on_lost: Callable[[Any, str], Any] | None = None,
            on_start: Callable[[str], None] | None = None, name: str = "falcon") -> int:
    """Run ``fn`` on every item (module docstring); returns the number of results handed on.

    ``on_start(description)`` is called once the executor is up (e.g. the dask cluster).
    """
    items = list(items)
    if config.kind not in EXECUTORS:
        raise ExecutorError(f"unknown executor {config.kind!r}; one of {', '.join(EXECUTORS)}")
    if not items:
        return 0
    if config.kind == "local" or (config.kind == "processes" and (len(items) == 1 or (config.workers or 1) <= 1)):
        if on_start is not None:
            on_start(config.describe())
        for item in items:
            on_result(fn(item))
        return len(items)
    if config.kind == "processes":
        return _run_pool(fn, items, config, on_result, on_start)
    return _run_dask(fn, items, config, on_result, on_lost, on_start, name)


def _worker_init() -> None:
    """Pool workers ignore Ctrl-C: the parent handles it and terminates them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Indexed:
    """``(i, item) -> (i, fn(item))``: picklable for a spawned pool (``fn`` by reference)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, pair: tuple[int, Any]) -> tuple[int, Any]:
        return pair[0], self.fn(pair[1])


def _run_pool(fn: Callable[[Any], Any], items: Sequence[Any], config: ExecutorConfig,
              on_result: Callable[[Any], None], on_start: Callable[[str], None] | None) -> int:
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(processes=min(config.workers or 1, len(items)), initializer=_worker_init)
    seen: set[int] = set()
    try:
        if on_start is not None:
            on_start(config.describe())
        for i, result in pool.imap_unordered(_Indexed(fn), list(enumerate(items)), chunksize=1):
            if i not in seen:
                seen.add(i)
                on_result(result)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    return len(seen)


def _import_dask() -> Any:
    try:
        import distributed
    except ImportError:
        raise ExecutorError("`--executor dask` needs dask.distributed, which is not installed here: "
                            "pip install 'falcon-milp[dask]'") from None
    return distributed


class _SyncCancelFilter(logging.Filter):
    """Drops tornado's log of ``distributed.utils.sync``'s ``cancel`` callback failing: a
    Ctrl-C that lands before a synchronous client call has started makes that callback read
    a variable not yet bound (a NameError, logged with a traceback); nothing was running."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "sync.<locals>.cancel" not in record.getMessage()


_SYNC_CANCEL_FILTER = _SyncCancelFilter()


def _start_client(config: ExecutorConfig) -> tuple[Any, Any, bool]:
    """(client, cluster started here or None, whether it has a dashboard)."""
    distributed = _import_dask()
    if config.scheduler:
        try:
            return distributed.Client(config.scheduler, timeout=CONNECT_TIMEOUT_S), None, True
        except (OSError, TimeoutError, ValueError) as exc:
            raise ExecutorError(f"`--scheduler`: cannot connect to the dask scheduler at "
                                f"{config.scheduler!r} ({one_line(exc)})") from None
    import importlib.util

    import dask
    dashboard = importlib.util.find_spec("bokeh") is not None
    # dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536; that fixed threshold also
    # stops glibc's dynamic mmap threshold, so every large torch / numpy buffer is mapped and
    # unmapped anew: pruning runs took twice as long (six times the system time) on this
    # project's machine. The workers started here keep glibc's defaults (unless the
    # environment sets the variable, which they inherit).
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = distributed.LocalCluster(n_workers=config.workers or available_cores(), threads_per_worker=1,
                                           processes=True, dashboard_address=":0",
                                           silence_logs=logging.ERROR, preload=[__name__])
    try:
        return distributed.Client(cluster), cluster, dashboard
    except BaseException:
        cluster.close()
        raise


def _window(client: Any) -> int:
    """Tasks kept submitted: :data:`QUEUE_PER_THREAD` per worker thread, at least :data:`MIN_QUEUE`."""
    try:
        threads = sum(client.nthreads().values())
    except Exception:  # noqa: BLE001 - the scheduler is busy or gone: keep what we have
        threads = 0
    return max(MIN_QUEUE, QUEUE_PER_THREAD * threads)


def _run_dask(fn: Callable[[Any], Any], items: Sequence[Any], config: ExecutorConfig,
              on_result: Callable[[Any], None], on_lost: Callable[[Any, str], Any] | None,
              on_start: Callable[[str], None] | None, name: str) -> int:
    distributed = _import_dask()
    tornado_log = logging.getLogger("tornado.application")
    if _SYNC_CANCEL_FILTER not in tornado_log.filters:
        tornado_log.addFilter(_SYNC_CANCEL_FILTER)
    client, cluster, dashboard = _start_client(config)
    live: dict[Any, tuple[int, Any]] = {}        # key -> (item index, future), submitted, not yet taken
    try:
        if on_start is not None:
            n = len(client.scheduler_info().get("workers", {}))
            link = getattr(client, "dashboard_link", None) if dashboard else None
            on_start(f"{config.describe()}: {n} workers" + (f", dashboard {link}" if link else ""))
        token = uuid.uuid4().hex[:12]
        todo = iter(enumerate(items))
        queue = distributed.as_completed()

        def submit(n: int) -> None:
            for i, item in itertools.islice(todo, n):
                fut = client.submit(fn, item, key=f"{name}-{token}-{i}", pure=False, retries=config.retries)
                live[fut.key] = (i, fut)
                queue.add(fut)

        window = _window(client)
        submit(window)
        seen: set[int] = set()
        for fut in queue:
            i, _ = live.pop(fut.key, (None, None))
            if i is None or i in seen:     # never twice, whatever the scheduler replays
                continue
            try:
                result = fut.result()
            except Exception as exc:  # noqa: BLE001 - KilledWorker or fn raised on every try
                if on_lost is None:
                    raise
                result = on_lost(items[i], _lost_message(exc))
            seen.add(i)
            fut.release()
            on_result(result)
            if len(seen) % 32 == 0:        # a cluster may have grown
                window = _window(client)
            submit(max(0, window - len(live)))
        return len(seen)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):   # the process is ending: no client chatter on stderr
            _silence_dask()
        pending = [f for _, f in live.values() if not f.done()]
        if pending:
            try:
                client.cancel(pending, force=True)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        raise
    finally:
        _close(client, cluster)


def dask_setup(worker: Any) -> None:
    """Dask preload hook of the LocalCluster's workers (``preload=["falcon_milp.executors"]``):
    they ignore Ctrl-C, which reaches the whole process group from a terminal; this process
    cancels their tasks and closes them."""
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _lost_message(exc: BaseException) -> str:
    if type(exc).__name__ == "KilledWorker":
        return f"its worker died on every try (dask KilledWorker: {one_line(exc)})"
    return one_line(exc)


def _silence_dask() -> None:
    """After Ctrl-C: no more log lines from distributed/tornado (each logger, since dask's config
    sets levels per logger), and no "Exception ignored in Client.__del__" at interpreter exit
    (a client whose close timed out under load is closed again there)."""
    import sys
    for name in ["distributed", "tornado"] + list(logging.root.manager.loggerDict):
        if name.startswith(("distributed", "tornado")):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    sys.unraisablehook = lambda unraisable: None


def _close(client: Any, cluster: Any) -> None:
    """Close the client (and the cluster started here) without the shutdown chatter of dask
    (closed comms, cancelled handlers: nothing the user can act on) on stderr: logging is off
    in this process while it closes."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        try:
            client.close(timeout=CLOSE_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass
        if cluster is not None:
            try:
                cluster.close(timeout=CLOSE_TIMEOUT_S)
            except Exception:  # noqa: BLE001
                pass
    finally:
        logging.disable(previous)


def package_versions(packages: Sequence[str]) -> str:
    """"python X, pkg V, ..." for the installed ones of ``packages`` (run metadata)."""
    out = [f"python {platform.python_version()}"]
    for pkg in packages:
        try:
            out.append(f"{pkg} {importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(out)

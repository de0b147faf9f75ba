"""Task functions for the dask tests, importable by the LocalCluster's worker processes
(tests/ is on their sys.path: spawned workers inherit it from conftest)."""
import os
import signal
from pathlib import Path

from falcon_milp.bench.harness import run_task


def run_task_killing_once(item):
    """(marker, key, task): the task with ``key`` kills its worker process (SIGKILL) the first
    time it runs (the marker file does not exist yet; it then holds the killed pid)."""
    marker, key, task = item
    if tuple(task.key) == tuple(key) and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return run_task(task)


def always_kill(item):
    """Kills its worker on every try (dask gives up: KilledWorker)."""
    os.kill(os.getpid(), signal.SIGKILL)

"""Run one solver call in a child process that can be stopped for real.

HiGHS checks its clock and its interrupt flag only between steps, and some single steps on our
models take minutes (``highs.py``, "Time limits"); while it is inside one, neither a time limit
nor Ctrl-C reaches it. :func:`run_isolated` runs ``target(*args, report=...)`` in a forked
child (fork, not spawn: nothing is pickled on the way in and the caller's main module is never
re-run), waits for it while staying responsive to Ctrl-C, and kills it at a hard deadline.
Forking is safe here because this process never starts HiGHS's thread pool itself while
isolation is on: every HiGHS run of the package goes through this function.

While it runs the child may send *partial results* through ``report(obj)`` (for HiGHS: each
improving incumbent with the dual bound at that moment); the last one comes back when the child
had to be killed. The child ignores SIGINT: the parent decides, kills the child and re-raises
:class:`KeyboardInterrupt` within a poll interval (:data:`POLL_S`).
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from ..exceptions import SolverUnavailableError

log = logging.getLogger(__name__)

POLL_S = 0.1
"""How often the parent checks the deadline and lets Python see a pending Ctrl-C (seconds)."""


@dataclass
class IsolatedRun:
    """What came back: ``value`` (the target's return value, when it finished), ``partial``
    (the last object it reported), ``killed`` (stopped at the deadline), ``seconds``."""

    value: Any
    partial: Any
    killed: bool
    seconds: float


def can_isolate() -> bool:
    """False where no child can be forked: inside a daemonic process (e.g. a
    ``multiprocessing.Pool`` worker) or on a platform without fork."""
    return not mp.current_process().daemon and "fork" in mp.get_all_start_methods()


def _child(conn: Any, target: Callable[..., Any], args: tuple,
           child_init: Callable[[], None] | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def report(obj: Any) -> None:
        conn.send(("partial", obj))

    try:
        if child_init is not None:
            child_init()
        value = target(*args, report=report)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        conn.send(("error", (type(exc), str(exc), traceback.format_exc())))
    else:
        conn.send(("done", value))
    finally:
        conn.close()


def run_isolated(target: Callable[..., Any], args: tuple, deadline: float | None,
                 child_init: Callable[[], None] | None = None) -> IsolatedRun:
    """Run ``target(*args, report=...)`` in a child (after ``child_init()`` there); kill it at
    ``deadline`` (perf_counter seconds; None = never). Exceptions raised by the target are re-raised here with their type
    when it can be rebuilt from the message (else :class:`RuntimeError`)."""
    start = time.perf_counter()
    try:
        ctx = mp.get_context("fork")
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(send, target, args, child_init), daemon=True)
        proc.start()
    except (OSError, ValueError) as exc:
        raise SolverUnavailableError(f"cannot start a solver process: {exc}") from None
    send.close()
    partial: Any = None
    try:
        while True:
            wait = POLL_S if deadline is None else min(POLL_S, max(0.0, deadline - time.perf_counter()))
            if recv.poll(wait):
                try:
                    kind, obj = recv.recv()
                except EOFError:
                    proc.join()
                    raise RuntimeError(f"the solver process died (exit code {proc.exitcode})") from None
                if kind == "partial":
                    partial = obj
                    continue
                proc.join()
                if kind == "done":
                    return IsolatedRun(obj, partial, False, time.perf_counter() - start)
                exc_type, message, tb = obj
                log.debug("solver process failed:\n%s", tb)
                try:
                    err = exc_type(message)
                except Exception:  # noqa: BLE001 - an exception type that takes other arguments
                    err = RuntimeError(f"{exc_type.__name__}: {message}")
                raise err
            if not proc.is_alive() and not recv.poll(0):
                raise RuntimeError(f"the solver process died (exit code {proc.exitcode})")
            if deadline is not None and time.perf_counter() >= deadline:
                _kill(proc)
                while recv.poll(0):          # partial results sent just before the kill
                    try:
                        kind, obj = recv.recv()
                    except (EOFError, OSError):
                        break
                    if kind == "partial":
                        partial = obj
                    elif kind == "done":
                        return IsolatedRun(obj, partial, False, time.perf_counter() - start)
                return IsolatedRun(None, partial, True, time.perf_counter() - start)
    except BaseException:
        _kill(proc)
        raise
    finally:
        recv.close()


def _kill(proc: Any) -> None:
    """SIGKILL, without waiting for a big child to give its memory back (seconds for GBs): the
    dying process is reaped by multiprocessing later."""
    if proc.is_alive():
        proc.kill()
    proc.join(timeout=0.05)

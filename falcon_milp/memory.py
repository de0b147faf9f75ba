"""Peak resident memory of a block of work in this process (benchmark and sweep workers).

On Linux the kernel's resident-set high-water mark is reset (``/proc/self/clear_refs``) at
:meth:`PeakMemory.start` and read (``VmHWM``) at :meth:`PeakMemory.peak`, minus the resident
size at the start (``method`` = ``vmhwm-reset``); this counts native allocations (HiGHS,
torch) as well as numpy. Elsewhere the ``ru_maxrss`` growth is used (``ru_maxrss-delta``),
which only sees growth above the process's earlier peak.
"""
from __future__ import annotations

import resource
import sys

__all__ = ["PeakMemory"]


def _status_kib(name: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


class PeakMemory:
    """Peak resident memory during a block, above the resident memory at its start."""

    def __init__(self) -> None:
        self.method = "ru_maxrss-delta"
        self.base = 0

    def start(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")   # reset VmHWM to the current RSS (Linux >= 4.0)
            rss = _status_kib("VmRSS")
            if rss is None:
                raise OSError("no VmRSS")
            self.method, self.base = "vmhwm-reset", rss * 1024
        except OSError:
            self.method, self.base = "ru_maxrss-delta", _maxrss_bytes()

    def peak(self) -> int:
        if self.method == "vmhwm-reset":
            hwm = _status_kib("VmHWM")
            if hwm is not None:
                return max(0, hwm * 1024 - self.base)
        return max(0, _maxrss_bytes() - self.base)

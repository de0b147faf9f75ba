"""Peak resident memory of a block of work in this process (benchmark and sweep workers).

On Linux the kernel's resident-set high-water mark is reset (``/proc/self/clear_refs``) at
:meth:`PeakMemory.start` and read (``VmHWM``) at :meth:`PeakMemory.peak`, minus the resident
size at the start (``method`` = ``vmhwm-reset``); this counts native allocations (HiGHS,
torch) as well as numpy. Elsewhere the ``ru_maxrss`` growth is used (``ru_maxrss-delta``),
which only sees growth above the process's earlier peak.
"""
from __future__ import annotations

import os
import resource
import sys

__all__ = ["PeakMemory", "available_memory"]


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

    def peak_total(self) -> int:
        """The peak resident size itself (not above the start): since :meth:`start` with
        ``vmhwm-reset``, else the process's lifetime peak."""
        if self.method == "vmhwm-reset":
            hwm = _status_kib("VmHWM")
            if hwm is not None:
                return hwm * 1024
        return _maxrss_bytes()

    def peak(self) -> int:
        if self.method == "vmhwm-reset":
            hwm = _status_kib("VmHWM")
            if hwm is not None:
                return max(0, hwm * 1024 - self.base)
        return max(0, _maxrss_bytes() - self.base)


def available_memory() -> int:
    """Bytes the machine can give this process now without swapping (``MemAvailable`` on Linux,
    else the physical memory), capped by a cgroup memory limit when one is set."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        avail = None
    if avail is None:
        try:
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            avail = 8 * 2**30
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                text = fh.read().strip()
            if text.isdigit():
                used = 0
                for upath in ("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes"):
                    try:
                        with open(upath) as fu:
                            used = int(fu.read().strip())
                        break
                    except (OSError, ValueError):
                        continue
                avail = min(avail, max(0, int(text) - used))
            break
        except OSError:
            continue
    return int(avail)

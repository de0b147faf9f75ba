"""Process memory: the peak resident set of one call and the memory the machine has free.

Linux keeps the peak resident set size (``VmHWM``) per process and lets a process reset it
(writing ``5`` to ``/proc/self/clear_refs``), so the peak of one pruning call can be measured
even when the process ran something bigger before. Elsewhere the lifetime peak
(``ru_maxrss``) is reported instead and :func:`reset_peak` returns False.
"""
from __future__ import annotations

import os
import resource
import sys

__all__ = ["available_memory", "peak_rss", "reset_peak"]


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident set size in bytes since the last :func:`reset_peak` (else the lifetime peak)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


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

"""Process-wide settings that make CPU inference and training faster.

glibc's malloc serves every allocation above a moving threshold (128 KiB to 32 MiB) with a fresh ``mmap``
and gives it back on ``free``. A CNN forward pass allocates activations of tens of megabytes, so each one
comes back as new zero pages that the kernel must fault in: on a 2-core VM we measured more than half of an
EfficientNet-Lite0 forward pass (batch 32) as system time in page faults, and the pass ran 2.3x faster
once freed memory stayed in the heap (``benchmarks/bench_localize.py`` reports both). PyTorch's CPU
allocator has no cache of its own, so :func:`tune_cpu_allocator` raises glibc's mmap and trim thresholds,
the same thing as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` but from inside the process.

The price is that the process keeps its peak heap instead of returning it to the system between batches.
One more cost is avoided: a forked child (a DataLoader worker) would share that retained heap
copy-on-write, and the parent's next forward pass would then copy every page it reuses (we measured
localize at a third of its speed when run again in the same process). So the free part of the heap is
handed back (``malloc_trim``) just before each ``fork``.
The ``wsol`` commands that run models call this; set ``WSOL_TUNE_MALLOC=0`` to leave malloc as it is.
Library users opt in by calling it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_LARGEST = 2**31 - 1  # mallopt takes an int
_tuned = False


def tune_cpu_allocator() -> bool:
    """Keep freed memory in glibc's heap (see the module docstring). Returns True when the settings were
    applied (now or earlier in this process); False on non-glibc systems or with ``WSOL_TUNE_MALLOC=0``."""
    global _tuned
    if _tuned:
        return True
    if os.environ.get("WSOL_TUNE_MALLOC", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, _LARGEST)) and bool(mallopt(_M_TRIM_THRESHOLD, _LARGEST))
    if _tuned:
        os.register_at_fork(before=lambda: libc.malloc_trim(0))
    return _tuned


__all__ = ["tune_cpu_allocator"]

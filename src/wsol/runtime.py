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
Every ``wsol`` command calls this first; set ``WSOL_TUNE_MALLOC=0`` to leave malloc as it is.
Library users opt in by calling it.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_LARGEST = 2**31 - 1  # mallopt takes an int
_tuned: bool | None = None  # the outcome of the one attempt made in this process
_lock = threading.Lock()


def tune_cpu_allocator() -> bool:
    """Keep freed memory in glibc's heap (see the module docstring). Returns True when the settings were
    applied (now or earlier in this process); False on non-glibc systems or with ``WSOL_TUNE_MALLOC=0``.
    Only the first call with tuning enabled acts."""
    global _tuned
    with _lock:
        if _tuned is not None:
            return _tuned
        if os.environ.get("WSOL_TUNE_MALLOC", "1").strip().lower() in ("0", "false", "no", "off"):
            return False
        if not sys.platform.startswith("linux"):
            return False
        try:
            libc = ctypes.CDLL(None)  # the process's own C library; no ldconfig lookup
            mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
        except (OSError, AttributeError):  # musl and other C libraries have no mallopt
            return False
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        # glibc before 2.35 or so refuses an mmap threshold above 32 MiB (HEAP_MAX_SIZE / 2): fall back to it
        mmap_set = any(mallopt(_M_MMAP_THRESHOLD, value) for value in (_LARGEST, 32 * 1024 * 1024))
        trim_set = bool(mallopt(_M_TRIM_THRESHOLD, _LARGEST))
        if mmap_set or trim_set:
            os.register_at_fork(before=lambda: malloc_trim(0))
        _tuned = mmap_set and trim_set
        return bool(_tuned)


__all__ = ["tune_cpu_allocator"]

"""glibc heap settings for a long-running worker (issue 16, bounded memory).

Measured in the soak (bench/bench_soak.py, default bundle, batch 64, 30,000 events): with glibc's defaults the
worker's RSS swung between 650 and 950 MiB and its peak kept rising. glibc raises its mmap threshold after each
large free (up to 32 MiB), so the decode buffers and ONNX Runtime's arena chunks that follow are carved from
heaps that are never handed back, and every thread that mallocs gets its own 64 MiB arena. A fixed 1 MiB
threshold (large blocks are mmapped, and unmapped when freed) and two arenas kept it at 566-780 MiB at the
same throughput (soak30k_*.json); over 100,000 events, 553-774 MiB (bench_soak_session3.json). Those runs were
superseded and removed from bench/results/: docs/benchmarks.md, History names the commit that has them.

Set with mallopt(3) at start-up, before the worker's threads exist, so that `MEMEGUARD_MALLOC_*` are plain
settings and no launcher has to export MALLOC_* environment variables. A no-op where the C library is not glibc.
"""

import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # <malloc.h>


def _glibc() -> ctypes.CDLL | None:
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


def bound_heap(mmap_threshold_bytes: int, arena_max: int) -> bool:
    """Fix glibc's mmap threshold (0 leaves it dynamic) and cap its arenas (0: glibc's default, 8 per core).
    True when the C library took every setting asked for."""
    if _LIBC is None:
        return False
    ok = True
    if mmap_threshold_bytes:
        # The trim threshold at twice the mmap threshold: freed memory at the top of a heap goes back too.
        ok &= _LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold_bytes) == 1
        ok &= _LIBC.mallopt(_M_TRIM_THRESHOLD, 2 * mmap_threshold_bytes) == 1
    if arena_max:
        ok &= _LIBC.mallopt(_M_ARENA_MAX, arena_max) == 1
    if not ok:
        log.warning("mallopt refused a setting (mmap threshold %d, arenas %d)", mmap_threshold_bytes, arena_max)
    return ok


def _trimmer() -> Callable[[], None]:
    if _LIBC is None:
        return lambda: None
    trim = _LIBC.malloc_trim
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


trim: Callable[[], None] = _trimmer()
"""Hand freed heap memory back to the OS now (malloc_trim(0))."""

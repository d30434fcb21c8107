"""Keep large CPU tensors in the heap: glibc malloc settings for encoder inference.

With glibc's defaults, every block above the (dynamic) mmap threshold is mapped at
allocation and unmapped at free, and heap tops are trimmed back to the kernel: a CPU
forward pass that allocates and frees activation buffers of tens of MB then spends most of
its time in the kernel (page faults, zeroing). Raising the mmap and trim thresholds and the
top pad keeps those blocks in the heap and reuses them. Measured with
``bench/bench_allocator.py`` (fresh processes, variants alternating, offline default
encoder, 2 threads, 2-core machine): forward passes 2.3x as fast at batch 8 and 3.0x at batch
64, certification 2.3x / 2.9x, system CPU per image from 22-70 ms to under 6 ms
(``bench/results/allocator.json``).

The cost is memory: freed blocks stay with the process (its resident size stays near its
peak) plus up to :data:`TOP_PAD` of padding. Results do not change: only where memory comes
from. ``featsmooth`` (the command) calls :func:`tune_allocator` at start-up unless the
environment sets ``FEATSMOOTH_MALLOC_TUNING=0``; Python users may call it once, early.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

#: blocks up to this size come from the heap (glibc caps it; it accepts 1 GiB on 2.36)
MMAP_THRESHOLD = 1 << 30
#: free memory at the heap top kept before trimming
TRIM_THRESHOLD = 1 << 30
#: extra memory requested with every heap extension
TOP_PAD = 1 << 28

# mallopt parameter numbers from glibc's malloc.h
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3

#: environment variable that turns the start-up tuning of the command off ("0")
ENV_SWITCH = "FEATSMOOTH_MALLOC_TUNING"

_applied: bool | None = None


def tune_allocator() -> bool:
    """Raise glibc's mmap/trim thresholds and top pad for this process (once).

    Returns True when glibc accepted every setting, False where there is no glibc (macOS,
    Windows, musl) or it refused one; the outcome of the first call is kept and returned
    by later ones. Never raises.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_TOP_PAD, TOP_PAD),
    )
    _applied = all(mallopt(param, value) == 1 for param, value in settings)
    return _applied


def tune_at_startup() -> bool:
    """:func:`tune_allocator` unless ``FEATSMOOTH_MALLOC_TUNING=0`` (the command's start-up)."""
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return False
    return tune_allocator()


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` ran in this process and glibc accepted it."""
    return bool(_applied)

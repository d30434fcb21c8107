"""The glibc allocator tuning of featsmooth/allocator.py: it takes effect, and can be off.

Behaviour, not timing: after tuning, a 64 MB block comes from the heap instead of a fresh
mapping (glibc's mallinfo2 counts mapped bytes in ``hblkhd``). Each check runs in a fresh
process, as the tuning is per process and the first call wins.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc"
)

PROBE = r"""
import ctypes, json, sys
from featsmooth import allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
tuned = allocator.tune_at_startup() if sys.argv[1] == "startup" else False
before = libc.mallinfo2().hblkhd
block = libc.malloc(64 << 20)
mapped = libc.mallinfo2().hblkhd - before
libc.free(block)
print(json.dumps({"tuned": tuned, "mapped": mapped, "flag": allocator.allocator_tuned(),
                  "again": allocator.tune_allocator() if sys.argv[1] == "startup" else None}))
"""


def _probe(mode: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuning_keeps_large_blocks_in_the_heap():
    plain = _probe("plain")
    assert not plain["tuned"] and plain["mapped"] >= 64 << 20  # glibc's default: mmap
    tuned = _probe("startup")
    assert tuned["tuned"] and tuned["flag"] and tuned["again"]
    assert tuned["mapped"] == 0


def test_the_environment_turns_it_off():
    off = _probe("startup", {"FEATSMOOTH_MALLOC_TUNING": "0"})
    assert not off["tuned"] and not off["flag"] and off["mapped"] >= 64 << 20


def test_environment_info_records_it():
    from featsmooth.versions import environment_info

    assert isinstance(environment_info()["malloc_tuned"], bool)

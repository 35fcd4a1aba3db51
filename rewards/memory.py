"""Giving memory back: after a service has held large requests, glibc keeps the freed pages in its
arenas (one per thread that allocated), so the process's RSS stays at its peak. `malloc_trim(0)` returns
every free page of every arena to the system (measured in bench/pixel_flood.py)."""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Optional


@cache
def _libc() -> Optional[ctypes.CDLL]:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "malloc_trim") else None  # glibc only (not musl, not macOS)


def release_free_memory() -> bool:
    """Return the allocator's free pages to the system (glibc's malloc_trim); False where there is none."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True

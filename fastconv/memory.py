"""Reuse of large freed NumPy blocks (see csrc/array_cache.cpp for why).

fastconv's own CPU outputs of 1 MiB or more always come from the cache: freed, their blocks
are parked (up to `set_cache_limit`, 1 GiB unless FASTCONV_CACHE_LIMIT says otherwise) and
handed to the next output of the same byte size. Inside a block

    with fastconv.array_cache():
        for xb, yb in batches:
            ...   # every NumPy array of >= 1 MiB made here comes from the cache too

the cache serves all NumPy allocations of the current thread's context (NumPy keeps its
memory handler in a context variable), under the block's own limit.
"""

from __future__ import annotations

import contextlib
import operator
import os

import numpy as np

from . import _array_cache

DEFAULT_LIMIT_BYTES = 4 << 30
LIMIT_VARIABLE = "FASTCONV_CACHE_LIMIT"


def _byte_count(value, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        count = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if not 0 <= count < 2**64:
        raise ValueError(f"{name} must be a byte count in [0, 2**64), got {count}")
    return count


@contextlib.contextmanager
def array_cache(limit_bytes: int = DEFAULT_LIMIT_BYTES):
    """Within the block, NumPy arrays of at least 1 MiB are allocated from blocks freed
    earlier (same byte size), keeping at most `limit_bytes` parked."""
    previous = _array_cache.enter(_byte_count(limit_bytes, "limit_bytes"))
    try:
        yield
    finally:
        _array_cache.exit(*previous)


def set_cache_limit(limit_bytes: int) -> int:
    """The most bytes parked outside array_cache() blocks (0: park nothing); returns the
    previous limit. Parked blocks beyond it are freed now."""
    return _array_cache.set_limit(_byte_count(limit_bytes, "limit_bytes"))


def empty_cache() -> None:
    """Free every parked block (arrays in use are not affected)."""
    _array_cache.release()


def array_cache_stats() -> dict:
    """hits, misses, cached_bytes (parked now), limit (in force now), min_bytes, open_blocks."""
    return _array_cache.stats()


def cached_empty(shape, dtype=np.float32):
    """A new uninitialised NumPy array whose data starts on a 64-byte boundary. malloc aligns
    to 16 bytes, and then every 64-byte vector load or store of an NHWC kernel straddles two
    cache lines: 8-12 % of a memory-bound kernel's time. Its block comes through the cache
    (from 1 MiB up), so that a call repeated with the same shapes writes into pages it
    already owns instead of pages the kernel must zero first."""
    return _array_cache.empty(shape, dtype)


def _limit_from_environment() -> None:
    value = os.environ.get(LIMIT_VARIABLE)
    if value is None:
        return
    try:
        set_cache_limit(int(value))
    except ValueError as error:
        raise ValueError(f"{LIMIT_VARIABLE} must be a byte count >= 0, got {value!r}") from error


_limit_from_environment()

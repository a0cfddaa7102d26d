"""Reuse of large NumPy blocks across training steps (see csrc/array_cache.cpp for why).

    with fastconv.array_cache():
        for xb, yb in batches:
            ...   # arrays of >= 1 MiB freed here are handed back to the next equal request

The cache applies to the current thread's context only (NumPy keeps its memory handler in a
context variable) and is emptied when the outermost block ends.
"""

from __future__ import annotations

import contextlib
import operator

from . import _array_cache

DEFAULT_LIMIT_BYTES = 4 << 30


@contextlib.contextmanager
def array_cache(limit_bytes: int = DEFAULT_LIMIT_BYTES):
    """Within the block, NumPy arrays of at least 1 MiB are allocated from blocks freed
    earlier in the block (same byte size), keeping at most `limit_bytes` parked."""
    try:
        limit = operator.index(limit_bytes)
    except TypeError:
        raise TypeError(f"limit_bytes must be an int, got {type(limit_bytes).__name__}") from None
    if limit < 0:
        raise ValueError(f"limit_bytes must be >= 0, got {limit}")
    previous = _array_cache.enter(limit)
    try:
        yield
    finally:
        _array_cache.exit(*previous)


def array_cache_stats() -> dict:
    """hits, misses, cached_bytes (parked now), min_bytes, open_blocks."""
    return _array_cache.stats()

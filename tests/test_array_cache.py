"""fastconv.array_cache: large freed blocks are reused inside the block, nothing else changes."""

import threading

import numpy as np
import pytest

import fastconv

BIG = 3 << 20  # bytes: above the 1 MiB threshold
handler_name = np._core.multiarray.get_handler_name


def address(a):
    return a.__array_interface__["data"][0]


def test_freed_block_is_reused_and_zeros_are_zero():
    with fastconv.array_cache():
        a = np.full(BIG // 4, 7.0, np.float32)
        where = address(a)
        del a
        hits = fastconv.array_cache_stats()["hits"]
        b = np.zeros(BIG // 4, np.float32)
        assert address(b) == where
        assert fastconv.array_cache_stats()["hits"] == hits + 1
        assert not b.any()
        c = np.empty(BIG // 4, np.float32)  # nothing parked now: a fresh block
        assert address(c) != where


def test_handler_is_active_only_inside_and_cache_empties_on_exit():
    assert handler_name() != "fastconv_array_cache"
    with fastconv.array_cache():
        assert handler_name() == "fastconv_array_cache"
        kept = np.arange(BIG // 8, dtype=np.float64)
        dropped = np.ones(BIG // 4, np.float32)
        del dropped
        assert fastconv.array_cache_stats()["cached_bytes"] == BIG
    stats = fastconv.array_cache_stats()
    assert (stats["cached_bytes"], stats["open_blocks"]) == (0, 0)
    assert handler_name() != "fastconv_array_cache"
    np.testing.assert_array_equal(kept, np.arange(BIG // 8, dtype=np.float64))
    del kept  # freed by the handler that made it, now straight to free()
    assert fastconv.array_cache_stats()["cached_bytes"] == 0


def test_small_arrays_bypass_the_cache():
    with fastconv.array_cache():
        before = fastconv.array_cache_stats()
        for _ in range(5):
            np.ones(1000, np.float32)
        after = fastconv.array_cache_stats()
        assert (after["hits"], after["misses"], after["cached_bytes"]) == (
            before["hits"],
            before["misses"],
            0,
        )


def test_limit_bounds_the_parked_bytes():
    with fastconv.array_cache(limit_bytes=BIG):
        a, b = np.empty(BIG, np.uint8), np.empty(BIG, np.uint8)
        del a, b
        assert fastconv.array_cache_stats()["cached_bytes"] == BIG
    with fastconv.array_cache(limit_bytes=0):
        a = np.empty(BIG, np.uint8)
        del a
        assert fastconv.array_cache_stats()["cached_bytes"] == 0


def test_nested_blocks_keep_caching_until_the_outermost_ends():
    with fastconv.array_cache():
        with fastconv.array_cache():
            a = np.empty(BIG, np.uint8)
        assert handler_name() == "fastconv_array_cache"
        del a
        assert fastconv.array_cache_stats()["cached_bytes"] == BIG
    assert fastconv.array_cache_stats()["cached_bytes"] == 0


def test_resize_in_place_keeps_the_data():
    with fastconv.array_cache():
        a = np.arange(BIG // 4, dtype=np.float32)
        a.resize(BIG // 2, refcheck=False)  # realloc through the handler
        np.testing.assert_array_equal(a[: BIG // 4], np.arange(BIG // 4, dtype=np.float32))
        assert not a[BIG // 4 :].any()


def test_other_threads_keep_numpys_allocator():
    seen = []
    with fastconv.array_cache():
        thread = threading.Thread(target=lambda: seen.append(handler_name()))
        thread.start()
        thread.join()
    assert seen == [handler_name()]


def test_training_results_do_not_depend_on_the_cache():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32, 32, 16)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    plain = fastconv.conv2d(x, w, padding=1, layout="NHWC")
    with fastconv.array_cache():
        for _ in range(3):
            cached = fastconv.conv2d(x, w, padding=1, layout="NHWC")
            np.testing.assert_array_equal(cached, plain)
            del cached


@pytest.mark.parametrize("limit, error", [(1.5, TypeError), ("1", TypeError), (-1, ValueError)])
def test_bad_limit_is_rejected(limit, error):
    with pytest.raises(error, match="limit_bytes"):
        with fastconv.array_cache(limit):
            pass
    assert fastconv.array_cache_stats()["open_blocks"] == 0

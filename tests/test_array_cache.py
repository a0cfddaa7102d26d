"""fastconv's block cache: large freed blocks of its outputs, and of every NumPy array made
inside an array_cache() block, are reused by the next request of the same size."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastconv
from fastconv import ops

from op_cases import ops_with

BIG = 3 << 20  # bytes: above the 1 MiB threshold
handler_name = np._core.multiarray.get_handler_name


def address(a):
    return a.__array_interface__["data"][0]


@pytest.fixture(autouse=True)
def empty_cache_first():
    fastconv.empty_cache()
    yield
    fastconv.empty_cache()


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


def test_handler_is_active_only_inside_and_the_limit_returns_on_exit():
    outside_limit = fastconv.array_cache_stats()["limit"]
    assert handler_name() != "fastconv_array_cache"
    with fastconv.array_cache(limit_bytes=2 * BIG):
        assert handler_name() == "fastconv_array_cache"
        assert fastconv.array_cache_stats()["limit"] == 2 * BIG
        kept = np.arange(BIG // 8, dtype=np.float64)
        dropped = np.ones(BIG // 4, np.float32)
        del dropped
        assert fastconv.array_cache_stats()["cached_bytes"] == BIG
    stats = fastconv.array_cache_stats()
    assert (stats["limit"], stats["open_blocks"]) == (outside_limit, 0)
    assert handler_name() != "fastconv_array_cache"
    np.testing.assert_array_equal(kept, np.arange(BIG // 8, dtype=np.float64))
    del kept  # freed by the handler that made it: parked too
    assert fastconv.array_cache_stats()["cached_bytes"] == 2 * BIG
    fastconv.empty_cache()
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


def test_nested_blocks_restore_the_enclosing_limit():
    with fastconv.array_cache(limit_bytes=4 * BIG):
        with fastconv.array_cache(limit_bytes=0):
            a, b = np.empty(BIG, np.uint8), np.empty(BIG, np.uint8)
            del a
            assert fastconv.array_cache_stats()["cached_bytes"] == 0
        assert handler_name() == "fastconv_array_cache"
        assert fastconv.array_cache_stats()["limit"] == 4 * BIG
        del b
        assert fastconv.array_cache_stats()["cached_bytes"] == BIG
    assert handler_name() != "fastconv_array_cache"


def test_the_longest_parked_block_goes_first():
    sizes = [BIG, BIG + 4096, BIG + 8192]
    with fastconv.array_cache(limit_bytes=sizes[1] + sizes[2]):
        blocks = [np.empty(size, np.uint8) for size in sizes]
        where = [address(block) for block in blocks]
        for _ in sizes:  # parked in order: the first is dropped to make room for the last
            del blocks[0]
        assert fastconv.array_cache_stats()["cached_bytes"] == sizes[1] + sizes[2]
        hits = fastconv.array_cache_stats()["hits"]
        second, third = np.empty(sizes[1], np.uint8), np.empty(sizes[2], np.uint8)
        assert (address(second), address(third)) == (where[1], where[2])
        first = np.empty(sizes[0], np.uint8)
        assert fastconv.array_cache_stats()["hits"] == hits + 2
        assert fastconv.array_cache_stats()["cached_bytes"] == 0
        del first, second, third


def test_fastconv_outputs_reuse_their_blocks_outside_any_block():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 32, 32, 64)).astype(np.float32)  # 2 MiB in, 2 MiB out
    w = rng.standard_normal((64, 1, 3, 3)).astype(np.float32)
    expected = fastconv.reference.depthwise_conv2d(x, w, padding=1, layout="NHWC")
    first = fastconv.depthwise_conv2d(x, w, padding=1, layout="NHWC")
    where = address(first)
    assert where % 64 == 0
    del first
    hits = fastconv.array_cache_stats()["hits"]
    again = fastconv.depthwise_conv2d(x, w, padding=1, layout="NHWC")
    assert address(again) == where
    assert fastconv.array_cache_stats()["hits"] == hits + 1
    np.testing.assert_allclose(again, expected, rtol=1e-5, atol=1e-5)
    assert handler_name() != "fastconv_array_cache"


def test_argmax_outputs_come_from_the_cache_too():
    x = np.random.default_rng(2).standard_normal((16, 64, 64, 64)).astype(np.float32)
    y, argmax = fastconv.max_pool2d_with_argmax(x, 2, layout="NHWC")  # 1 MiB of bytes
    where = address(argmax)
    del y, argmax
    y, argmax = fastconv.max_pool2d_with_argmax(x, 2, layout="NHWC")
    assert address(argmax) == where
    np.testing.assert_array_equal(y, fastconv.reference.max_pool2d(x, 2, layout="NHWC"))


def test_a_zero_limit_parks_nothing():
    previous = fastconv.set_cache_limit(0)
    try:
        dropped = fastconv.max_pool2d(np.ones((16, 64, 64, 64), np.float32), 1, layout="NHWC")
        del dropped
        assert fastconv.array_cache_stats()["cached_bytes"] == 0
    finally:
        assert fastconv.set_cache_limit(previous) == 0
    assert fastconv.array_cache_stats()["limit"] == previous


def test_lowering_the_limit_frees_parked_blocks():
    previous = fastconv.set_cache_limit(4 * BIG)
    try:
        a, b = np.empty(BIG, np.uint8), np.empty(BIG, np.uint8)
        del a, b  # made by NumPy's own handler: never parked
        assert fastconv.array_cache_stats()["cached_bytes"] == 0
        with fastconv.array_cache(limit_bytes=4 * BIG):
            a, b = np.empty(BIG, np.uint8), np.empty(BIG, np.uint8)
        del a, b
        assert fastconv.array_cache_stats()["cached_bytes"] == 2 * BIG
        fastconv.set_cache_limit(BIG)
        assert fastconv.array_cache_stats()["cached_bytes"] == BIG
    finally:
        fastconv.set_cache_limit(previous)


def limit_seen_by_a_new_process(value, folder):
    """From `folder`: python -c puts the current folder first on sys.path, and in a source
    checkout's root that is the package without its compiled modules."""
    env = {**os.environ, "FASTCONV_CACHE_LIMIT": value}
    code = "import fastconv; print(fastconv.array_cache_stats()['limit'])"
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_environment_sets_the_limit(tmp_path):
    run = limit_seen_by_a_new_process("12345", tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "12345"


def test_a_bad_environment_limit_is_explained(tmp_path):
    run = limit_seen_by_a_new_process("lots", tmp_path)
    assert run.returncode != 0
    assert "FASTCONV_CACHE_LIMIT must be a byte count >= 0, got 'lots'" in run.stderr


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


@pytest.mark.parametrize(
    "limit, error",
    [(1.5, TypeError), ("1", TypeError), (True, TypeError), (-1, ValueError), (2**64, ValueError)],
)
def test_bad_limit_is_rejected(limit, error):
    with pytest.raises(error, match="limit_bytes"):
        with fastconv.array_cache(limit):
            pass
    assert fastconv.array_cache_stats()["open_blocks"] == 0
    before = fastconv.array_cache_stats()["limit"]
    with pytest.raises(error, match="limit_bytes"):
        fastconv.set_cache_limit(limit)
    assert fastconv.array_cache_stats()["limit"] == before


@pytest.mark.parametrize(
    "shape, message", [((-1,), "negative"), ((2**40, 2**30), "too big"), ((2**63 - 1,), "too big")]
)
def test_an_impossible_size_is_a_value_error(shape, message):
    with pytest.raises(ValueError, match=message):
        fastconv.memory.cached_empty(shape, np.float32)


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 5), (7,), (300, 301), (2, 1024, 1024)])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.float64])
def test_cached_empty_is_an_aligned_writable_array_of_the_shape(shape, dtype):
    a = fastconv.memory.cached_empty(shape, dtype)
    assert (a.shape, a.dtype) == (shape, np.dtype(dtype))
    assert a.flags.c_contiguous and a.flags.writeable and a.flags.owndata is False
    assert address(a) % 64 == 0
    a[...] = 7
    assert np.all(a == 7)


def outputs_of(op, case):
    forward = op.forward(case)
    outputs = list(forward.values())
    if op.backward_args is not None:
        outputs += op.backward(case, np.ones(forward["y"].shape, np.float32), forward).values()
    layer_backward = op.layer_backward and op.layer_backward(case, fastconv)
    if layer_backward:  # max pooling from its saved argmax
        outputs += layer_backward(np.ones(forward["y"].shape, np.float32)).values()
    return [a for a in outputs if a is not None]


# (k, stride, pad) of the layers: a 3x3 conv or overlapping pool, stride 2, 2x2 tiles, 1x1, 5x5
WINDOWS = [(3, 1, 1), (3, 2, 1), (2, 2, 0), (1, 1, 0), (5, 1, 2)]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", ops_with())
def test_every_output_element_is_written_into_a_reused_block(isa, op, layout):
    """Outputs reuse freed blocks as they are: a kernel that left an element unwritten
    would return what the block held. Each layer runs, its outputs are filled with NaN (255
    for argmax bytes, which no window has) and freed, and the same call again must return
    the same bits."""
    for k, stride, pad in WINDOWS:
        case = ops.layer(op.name, 4, 32, 32, 48, k, stride, pad, activation="gelu")
        case = case.in_layout(layout)
        first = outputs_of(op, case)
        expected = [a.copy() for a in first]
        for output in first:
            output.fill(255 if output.dtype == np.uint8 else np.nan)
        hits = fastconv.array_cache_stats()["hits"]
        del first, output
        again = outputs_of(op, case)
        assert fastconv.array_cache_stats()["hits"] > hits  # a poisoned block came back
        for got, want in zip(again, expected, strict=True):
            np.testing.assert_array_equal(got, want)

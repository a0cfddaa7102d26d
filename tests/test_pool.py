"""Pooling beyond the random cases of test_ops.py: known values, padding and NaN rules,
special values in wide NHWC pixels, global pooling and CIFAR-sized maps."""

import numpy as np
import pytest

import fastconv
from fastconv import reference as ref

from op_cases import POOL_WINDOWS, assert_close, rand


def test_max_pool_known_values_and_first_max_wins():
    x = np.array([[1, 5, 5, 0], [5, 2, 3, 4], [0, 0, 9, 9], [0, 0, 9, 9]], np.float32)[None, None]
    y = fastconv.max_pool2d(x, 2)
    np.testing.assert_array_equal(y[0, 0], [[5, 5], [0, 9]])
    dx = fastconv.max_pool2d_backward(np.ones_like(y), x, 2)
    expected = np.zeros((4, 4), np.float32)
    expected[0, 1] = expected[0, 2] = expected[2, 0] = expected[2, 2] = 1
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_avg_pool_divisor_with_padding():
    x = np.ones((1, 1, 3, 3), np.float32)
    np.testing.assert_allclose(
        fastconv.avg_pool2d(x, 3, stride=1, padding=1)[0, 0], np.ones((3, 3))
    )
    corner = fastconv.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True)[0, 0, 0, 0]
    assert corner == pytest.approx(4 / 9)
    assert fastconv.sum_pool2d(x, 3, stride=1, padding=1)[0, 0, 1, 1] == 9


def test_padding_never_wins_a_max():
    x = -np.ones((1, 2, 3, 3), np.float32)
    assert (fastconv.max_pool2d(x, 3, stride=1, padding=1) == -1).all()
    assert (fastconv.min_pool2d(-x, 3, stride=1, padding=1) == 1).all()


def test_nan_wins_max_and_min():
    x = np.zeros((1, 1, 2, 2), np.float32)
    x[0, 0, 1, 0] = np.nan
    for kind in ("max", "min"):
        assert np.isnan(getattr(fastconv, f"{kind}_pool2d")(x, 2)).all()
        dx = getattr(fastconv, f"{kind}_pool2d_backward")(np.ones((1, 1, 1, 1), np.float32), x, 2)
        np.testing.assert_array_equal(dx[0, 0], [[0, 0], [1, 0]])
    x[0, 0, 0, 0] = np.inf
    assert (
        fastconv.avg_pool2d(np.where(np.isnan(x), 1, x).astype(np.float32), 2)[0, 0, 0, 0] == np.inf
    )


@pytest.mark.parametrize("kind", ["max", "min"])
@pytest.mark.parametrize("kernel,stride,padding", POOL_WINDOWS)
@pytest.mark.parametrize("channels", [117, 133])
def test_nhwc_extreme_backward_special_values(isa, kind, kernel, stride, padding, channels):
    """Wide NHWC pixels (117 and 133 channels: every lane group width and the float tail,
    with AVX-512, AVX2 and SSE vectors) full of ties, signed zeros, infinities and NaNs, with
    windows apart, tiling and overlapping: the forward keeps the first extreme of a window
    (a NaN counting as extreme, and -0 and +0 told apart), and each gradient goes to it."""
    rng = np.random.default_rng(11)
    values = np.array([-np.inf, -1, -0.0, 0.0, 1, np.inf, np.nan], np.float32)
    x = rng.choice(values, size=(2, 7, 9, channels), p=[0.15, 0.2, 0.15, 0.15, 0.2, 0.1, 0.05])
    kw = dict(stride=stride, padding=padding, layout="NHWC")
    y = getattr(fastconv, f"{kind}_pool2d")(x, kernel, **kw)
    want = getattr(ref, f"{kind}_pool2d")(x, kernel, **kw)
    np.testing.assert_array_equal(y, want)  # inf, NaN
    np.testing.assert_array_equal(np.signbit(y[y == 0]), np.signbit(want[want == 0]))
    dy = rand(rng, *y.shape)
    assert_close(
        getattr(fastconv, f"{kind}_pool2d_backward")(dy, x, kernel, **kw),
        getattr(ref, f"{kind}_pool2d_backward")(dy, x, kernel, **kw),
    )


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_global_avg_pool(isa, layout):
    rng = np.random.default_rng(1)
    x = rand(rng, 3, 7, 5, 6)
    y = fastconv.global_avg_pool2d(x, layout=layout)
    assert y.shape == (3, 6 if layout == "NHWC" else 7)
    assert_close(y, ref.global_avg_pool2d(x, layout=layout))
    # planes longer than the vector partial sums, with a tail; sums and special values
    big = rand(rng, 2, 3, 13, 11)
    big[0, 1, 4, 5], big[1, 2, 0, 0] = np.nan, np.inf
    for kind in ("avg", "sum"):
        pool, pool_ref = getattr(fastconv, f"{kind}_pool2d"), getattr(ref, f"{kind}_pool2d")
        got, want = pool(big, (13, 11), layout="NCHW"), pool_ref(big, (13, 11), layout="NCHW")
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        finite = np.isfinite(want)
        assert_close(np.where(finite, got, 0).astype(np.float32), np.where(finite, want, 0))
    dy = rand(rng, *y.shape)
    assert_close(
        fastconv.global_avg_pool2d_backward(dy, x, layout=layout),
        ref.global_avg_pool2d_backward(dy, x, layout=layout),
    )


@pytest.mark.parametrize(
    "h,w", [(1, 1), (1, 7), (3, 5), (4, 4), (1, 17), (7, 7), (5, 13), (9, 9), (32, 33)]
)
def test_global_avg_pool_nchw_plane_sizes(isa, h, w):
    """An NCHW plane is summed as groups of vectors, single vectors, then single floats: every
    mix of them, on integers, whose sums are exact in any order, so the mean is known."""
    x = np.random.default_rng(h * w).integers(-50, 50, (2, 5, h, w)).astype(np.float32)
    want = (x.astype(np.float64).sum(axis=(2, 3)) / (h * w)).astype(np.float32)
    np.testing.assert_array_equal(fastconv.global_avg_pool2d(x), want)
    np.testing.assert_array_equal(fastconv.sum_pool2d(x, (h, w)).reshape(2, 5), x.sum(axis=(2, 3)))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kind,kernel,stride", [("max", 2, None), ("max", 3, 2), ("avg", 2, None)])
def test_pooling_cifar_sized(isa, layout, kind, kernel, stride):
    rng = np.random.default_rng(5)
    x = rand(rng, 4, 70, 32, 32)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    kw = dict(stride=stride, layout=layout)
    y = getattr(fastconv, f"{kind}_pool2d")(x, kernel, **kw)
    assert_close(y, getattr(ref, f"{kind}_pool2d")(x, kernel, **kw))
    dy = rand(rng, *y.shape)
    assert_close(
        getattr(fastconv, f"{kind}_pool2d_backward")(dy, x, kernel, **kw),
        getattr(ref, f"{kind}_pool2d_backward")(dy, x, kernel, **kw),
    )


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("kind,kernel,stride", [("max", 2, None), ("avg", 3, 3), ("max", 3, 2)])
def test_nhwc_row_runs_cross_images(isa, threads, kind, kernel, stride):
    """NHWC items are runs of output rows that may end mid-image (11 images of 7 rows): each
    run's rows in each image, the input rows between windows zeroed by their owner."""
    rng = np.random.default_rng(threads)
    x = rand(rng, 11, 15, 15, 20)
    kw = dict(stride=stride, layout="NHWC")
    before = fastconv.get_num_threads()
    fastconv.set_num_threads(threads)
    try:
        y = getattr(fastconv, f"{kind}_pool2d")(x, kernel, **kw)
        dy = rand(rng, *y.shape)
        dx = getattr(fastconv, f"{kind}_pool2d_backward")(dy, x, kernel, **kw)
    finally:
        fastconv.set_num_threads(before)
    assert_close(y, getattr(ref, f"{kind}_pool2d")(x, kernel, **kw))
    assert_close(dx, getattr(ref, f"{kind}_pool2d_backward")(dy, x, kernel, **kw))

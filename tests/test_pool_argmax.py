"""Max pooling that saves each window's winner (max_pool2d_with_argmax) and its backward from
those bytes (max_pool2d_backward_argmax): known values, the reference and the backward from x
on every instruction set, the CUDA kernels under the harness, bad input, and the layers that
use them in training."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _args, _backend
from fastconv import nn as fnn
from fastconv import reference as ref

from op_cases import POOL_WINDOWS, assert_close, examples, nchw_to, rand

WINDOWS = POOL_WINDOWS + [(3, 1, "same"), (16, 1, 0)]  # 16x16: the most a byte numbers


def spatial(x, layout):
    return x.shape[1:3] if layout == "NHWC" else x.shape[2:4]


def test_known_values_and_first_max_wins():
    x = np.array([[1, 5, 5, 0], [5, 2, 3, 4], [0, 0, 9, 9], [0, 0, 9, 9]], np.float32)[None, None]
    y, argmax = fastconv.max_pool2d_with_argmax(x, 2)
    np.testing.assert_array_equal(y[0, 0], [[5, 5], [0, 9]])
    assert argmax.dtype == np.uint8
    np.testing.assert_array_equal(argmax[0, 0], [[1, 0], [0, 0]])
    dx = fastconv.max_pool2d_backward_argmax(np.full_like(y, 2), argmax, (4, 4), 2)
    expected = np.zeros((4, 4), np.float32)
    expected[0, 1] = expected[0, 2] = expected[2, 0] = expected[2, 2] = 2
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_cells_count_only_the_real_input():
    """A padded corner window holds 4 real cells: its winner is numbered among them."""
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    _, argmax = fastconv.max_pool2d_with_argmax(x, 3, stride=1, padding=1)
    # top-left window: cells (0,0) (0,1) (1,0) (1,1), the largest is (1,1), cell 3
    np.testing.assert_array_equal(argmax[0, 0], [[3, 5, 3], [5, 8, 5], [3, 5, 3]])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kernel,stride,padding", WINDOWS)
@pytest.mark.parametrize("channels", [5, 133])
def test_matches_reference_and_backward_from_x(isa, layout, kernel, stride, padding, channels):
    """Ties, signed zeros, infinities and NaNs (a NaN wins; a window of -inf keeps its first
    cell), in narrow and wide pixels (every lane group width and the float tail)."""
    rng = np.random.default_rng(3)
    values = np.array([-np.inf, -1, -0.0, 0.0, 1, np.inf, np.nan], np.float32)
    probabilities = [0.3, 0.2, 0.1, 0.1, 0.2, 0.05, 0.05]
    x = nchw_to(rng.choice(values, size=(2, channels, 19, 18), p=probabilities), layout)
    kw = dict(stride=stride, padding=padding, layout=layout)
    y, argmax = fastconv.max_pool2d_with_argmax(x, kernel, **kw)
    want_y, want_argmax = ref.max_pool2d_with_argmax(x, kernel, **kw)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(y, fastconv.max_pool2d(x, kernel, **kw))
    np.testing.assert_array_equal(argmax, want_argmax)
    dy = rand(rng, *y.shape)
    dx = fastconv.max_pool2d_backward_argmax(dy, argmax, spatial(x, layout), kernel, **kw)
    assert_close(dx, ref.max_pool2d_backward(dy, x, kernel, **kw))
    np.testing.assert_array_equal(dx, fastconv.max_pool2d_backward(dy, x, kernel, **kw))


@given(
    n=st.integers(1, 3),
    c=st.integers(1, 40),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.integers(0, 2),
    layout=st.sampled_from(["NCHW", "NHWC"]),
    ties=st.booleans(),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=examples(60))
def test_random_geometries(n, c, h, w, kernel, stride, padding, layout, ties, seed):
    shape = (n, h, w, c) if layout == "NHWC" else (n, c, h, w)
    kw = dict(stride=stride, padding=padding, layout=layout)
    try:
        _args.pool_geometry(shape, kernel, kind="max", **kw)
    except ValueError:
        return  # the window does not fit: the argument tests cover the message
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=shape).astype(np.float32) if ties else rand(rng, *shape)
    y, argmax = fastconv.max_pool2d_with_argmax(x, kernel, **kw)
    want_y, want_argmax = ref.max_pool2d_with_argmax(x, kernel, **kw)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(argmax, want_argmax)
    dy = rand(rng, *y.shape)
    dx = fastconv.max_pool2d_backward_argmax(dy, argmax, (h, w), kernel, **kw)
    assert_close(dx, ref.max_pool2d_backward_argmax(dy, argmax, (h, w), kernel, **kw))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_a_winner_past_its_window_gives_no_gradient(isa, layout):
    """Bytes that no forward wrote: the kernels never write outside a window, and a number
    past the window's real cells (a padded corner has 4) gives nothing."""
    rng = np.random.default_rng(9)
    x = nchw_to(rand(rng, 2, 37, 6, 7), layout)
    kw = dict(stride=1, padding=1, layout=layout)
    y, argmax = fastconv.max_pool2d_with_argmax(x, 3, **kw)
    dy = rand(rng, *y.shape)
    for wrong in (np.full_like(argmax, 255), np.full_like(argmax, 5), argmax[::-1].copy()):
        dx = fastconv.max_pool2d_backward_argmax(dy, wrong, spatial(x, layout), 3, **kw)
        assert_close(dx, ref.max_pool2d_backward_argmax(dy, wrong, spatial(x, layout), 3, **kw))
    dx = fastconv.max_pool2d_backward_argmax(
        dy, np.full_like(argmax, 255), spatial(x, layout), 3, **kw
    )
    assert not dx.any()


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 2, 1), (9, 1, 2), (16, 3, 0)])
def test_cuda_kernels_under_the_harness(layout, kernel, stride, padding):
    """The CUDA kernels (run on the CPU by the harness) save and read the same bytes."""
    harness = pytest.importorskip("fastconv._cuda_harness")
    rng = np.random.default_rng(4)
    x = rng.integers(-2, 3, size=(2, 3, 19, 18)).astype(np.float32)
    x[0, 1, 2:5, 3:5] = np.nan
    x = nchw_to(x, layout)
    kw = dict(stride=stride, padding=padding, layout=layout)
    y, argmax = fastconv.max_pool2d_with_argmax(x, kernel, **kw)
    dy = rand(rng, *y.shape)
    dx = fastconv.max_pool2d_backward_argmax(dy, argmax, spatial(x, layout), kernel, **kw)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_backend, "CPU", _backend.Backend(harness, np))
        y_h, argmax_h = fastconv.max_pool2d_with_argmax(x, kernel, **kw)
        dx_h = fastconv.max_pool2d_backward_argmax(dy, argmax, spatial(x, layout), kernel, **kw)
    np.testing.assert_array_equal(y_h, y)
    np.testing.assert_array_equal(argmax_h, argmax)
    np.testing.assert_array_equal(dx_h, dx)


def test_bad_arguments_raise_before_any_kernel():
    x = np.zeros((2, 3, 8, 8), np.float32)
    y, argmax = fastconv.max_pool2d_with_argmax(x, 2)
    with pytest.raises(ValueError, match="256 cells"):
        fastconv.max_pool2d_with_argmax(np.zeros((1, 1, 17, 17), np.float32), 17)
    with pytest.raises(ValueError, match="256 cells"):
        fastconv.max_pool2d_backward_argmax(y[:, :, :1, :1], argmax[:, :, :1, :1], (17, 17), 17)
    with pytest.raises(TypeError, match="uint8"):
        fastconv.max_pool2d_backward_argmax(y, argmax.astype(np.int64), (8, 8), 2)
    with pytest.raises(TypeError, match="uint8"):
        fastconv.max_pool2d_backward_argmax(y, argmax.tolist(), (8, 8), 2)
    with pytest.raises(ValueError, match="argmax must have shape"):
        fastconv.max_pool2d_backward_argmax(y, argmax[:, :2], (8, 8), 2)
    with pytest.raises(ValueError, match="dy must have shape"):
        fastconv.max_pool2d_backward_argmax(y, argmax, (10, 10), 2)
    with pytest.raises(ValueError, match="input_size"):
        fastconv.max_pool2d_backward_argmax(y, argmax, (0, 8), 2)
    with pytest.raises(TypeError, match="float32"):
        fastconv.max_pool2d_with_argmax(x.astype(np.float64), 2)


def test_native_calls_check_kind_and_types():
    x = np.zeros((1, 2, 4, 4), np.float32)
    y, winners = np.empty((1, 2, 2, 2), np.float32), np.empty((1, 2, 2, 2), np.uint8)
    g = _args.pool_geometry(x.shape, 2, stride=None, padding=0, layout="NCHW", kind="avg")
    with pytest.raises(ValueError, match="max/min"):
        fastconv._cpu.pool2d_forward_winners(x, y, winners, g)
    g = _args.pool_geometry(x.shape, 2, stride=None, padding=0, layout="NCHW", kind="max")
    with pytest.raises(TypeError, match="uint8"):
        fastconv._cpu.pool2d_forward_winners(x, y, y, g)
    with pytest.raises(TypeError, match="float32"):
        fastconv._cpu.pool2d_backward_winners(winners, winners, x, g)
    with pytest.raises(ValueError, match="elements"):
        fastconv._cpu.pool2d_backward_winners(y, winners[:, :1], x, g)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_layers_keep_argmax_in_training(layout):
    """MaxPooling2D and GlobalMaxPooling2D keep the bytes, not x, after a training forward,
    and give the same gradient; over 256 cells they keep x."""
    rng = np.random.default_rng(2)
    fmt = "channels_last" if layout == "NHWC" else "channels_first"
    for layer, shape, keeps_bytes in [
        (fnn.MaxPooling2D(3, strides=2, padding="same", data_format=fmt), (2, 5, 9, 9), True),
        (fnn.GlobalMaxPooling2D(data_format=fmt), (2, 5, 7, 6), True),
        (fnn.GlobalMaxPooling2D(data_format=fmt), (2, 5, 17, 16), False),  # 272 cells
    ]:
        x = nchw_to(rand(rng, *shape), layout)
        layer.build(x.shape[1:], rng)
        y_eval = layer.forward(x, training=False)
        dy = rand(rng, *y_eval.shape)
        dx_eval = layer.backward(dy)
        y = layer.forward(x, training=True)
        assert (layer._x is None) == keeps_bytes
        np.testing.assert_array_equal(y, y_eval)
        np.testing.assert_array_equal(layer.backward(dy), dx_eval)

"""Cases and checks shared by the kernel tests, on top of the op table (fastconv.ops): each
backend's tests (CPU per instruction set, the CUDA harness, the fake-CuPy GPU path, a real
GPU) draw cases of every op with `case_of` and check them with `fastconv.ops.check`, forward
and backward against fastconv.reference. The fixed cases below reach paths that random small
shapes do not (large tiles, split reductions, wide pooling windows).
"""

import os

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

import fastconv
from fastconv import _args, ops
from fastconv import reference as ref

POOL_KINDS = ["max", "min", "avg", "sum"]


def examples(n):
    """n hypothesis examples, or a tenth of them on CI's sanitizer build (several times
    slower; it looks for memory errors, which a few cases of every op reach)."""
    return max(3, n // 10) if os.environ.get("FASTCONV_HYPOTHESIS") == "sanitize" else n


CPU_LIMITS = ops.Limits(max_batch=3, max_channels=4, max_side=13, max_kernel=7)
HARNESS_LIMITS = ops.Limits()


class HypothesisDraw(ops.Draw):
    """The op table's sampler choices, drawn (and shrunk) by hypothesis."""

    def __init__(self, data):
        self.data = data

    def integer(self, lo, hi):
        return self.data.draw(st.integers(lo, hi))

    def choice(self, options):
        return self.data.draw(st.sampled_from(options))

    def require(self, condition):
        assume(condition)


@st.composite
def case_of(draw, op_list, limits=HARNESS_LIMITS):
    """(op, case) for an op of `op_list` and a valid random case of it."""
    op = draw(st.sampled_from(list(op_list)))
    return op, op.sample(HypothesisDraw(draw(st.data())), limits)


def ops_with(predicate=lambda op: True):
    """pytest parameters: the ops of the table that satisfy `predicate`, named."""
    import pytest

    return [pytest.param(op, id=op.name) for op in ops.OPS.values() if predicate(op)]


def check_case(op, case, dev=lambda a: a, host=np.asarray):
    worst, bad = ops.check(op, case, dev=dev, host=host)
    assert bad is None, f"{bad} of {case!r}: {worst:.3g} x the tolerance"


ACTIVATIONS = [None, "relu", "gelu"]  # the activations batch norm fuses


def assert_close(actual, expected, rtol=1e-4, atol=2e-5):
    """float32 kernel vs float64-accumulating reference, with an atol scaled by max|ref|
    so that the bound stays meaningful for sums of many terms."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == np.float32, actual.dtype
    scale = 1.0 + float(np.nanmax(np.abs(expected), initial=0.0))  # NaN outputs compare equal
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale)


def conv_algorithm(
    direction, x_shape, w_shape, *, stride=1, padding=0, dilation=1, groups=1, layout="NCHW"
):
    """The algorithm fastconv._cpu runs (with the active ISA) for one conv pass:
    direction is 'forward', 'backward_input' or 'backward_weight'."""
    g = _args.conv_geometry(
        x_shape,
        w_shape,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        layout=layout,
    )
    return fastconv._cpu.conv_algorithm(g, direction)


# (kernel, stride, padding) of pooling windows apart, tiling and overlapping, square or not.
POOL_WINDOWS = [
    (2, None, 0),
    (2, 2, 1),
    (2, 3, 0),
    (3, 2, 1),
    (3, 1, 1),
    ((2, 3), 2, 0),
    ((3, 1), 2, 0),
    ((1, 3), (2, 1), 0),
]


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def same(a):
    """dev and host for the NumPy backends."""
    return a


def nchw_to(x, layout):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x


layouts = st.sampled_from(["NCHW", "NHWC"])
paddings = st.one_of(
    st.integers(0, 3),
    st.tuples(st.integers(0, 3), st.integers(0, 3)),
    st.tuples(
        st.tuples(st.integers(0, 3), st.integers(0, 3)),  # asymmetric
        st.tuples(st.integers(0, 3), st.integers(0, 3)),
    ),
    st.sampled_from(["valid", "same"]),
)


def pairs(lo, hi):
    return st.one_of(st.integers(lo, hi), st.tuples(st.integers(lo, hi), st.integers(lo, hi)))


def _fits(check):
    try:
        check()
        return True
    except ValueError:
        return False


@st.composite
def conv_cases(draw, depthwise=False, max_kernel=5, max_side=11, max_batch=2):
    """(x, w, bias, kwargs, rng) for conv2d (grouped or not) or depthwise_conv2d."""
    groups = 1 if depthwise else draw(st.sampled_from([1, 1, 2, 3]))
    cin = draw(st.integers(1, 4)) * groups
    cout = cin * draw(st.integers(1, 3)) if depthwise else draw(st.integers(1, 5)) * groups
    kh, kw = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
    n, h, w = (
        draw(st.integers(1, max_batch)),
        draw(st.integers(1, max_side)),
        draw(st.integers(1, max_side)),
    )
    layout = draw(layouts)
    kwargs = dict(
        stride=draw(pairs(1, 3)), padding=draw(paddings), dilation=draw(pairs(1, 2)), layout=layout
    )
    if not depthwise:
        kwargs["groups"] = groups
    shape = (n, h, w, cin) if layout == "NHWC" else (n, cin, h, w)
    w_shape = (cout, 1 if depthwise else cin // groups, kh, kw)
    assume(
        _fits(
            lambda: _args.conv_geometry(
                shape, w_shape, **{"groups": cin if depthwise else groups, **kwargs}
            )
        )
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rand(rng, *shape), rand(rng, *w_shape), rand(rng, cout), kwargs, rng


@st.composite
def pool_cases(draw, max_channels=9, max_side=10, max_batch=2):
    """(kind, x, kernel_size, kwargs, rng); x often holds ties so that 'first max wins' shows."""
    kind = draw(st.sampled_from(POOL_KINDS))
    layout = draw(layouts)
    n, c, h, w = (
        draw(st.integers(1, max_batch)),
        draw(st.integers(1, max_channels)),
        draw(st.integers(1, max_side)),
        draw(st.integers(1, max_side)),
    )
    kwargs = dict(
        stride=draw(st.one_of(st.none(), pairs(1, 3))), padding=draw(paddings), layout=layout
    )
    if kind == "avg":
        kwargs["count_include_pad"] = draw(st.booleans())
    kernel = draw(pairs(1, 5))
    shape = (n, h, w, c) if layout == "NHWC" else (n, c, h, w)
    assume(_fits(lambda: _args.pool_geometry(shape, kernel, kind=kind, **kwargs)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        x = rng.integers(-3, 4, size=shape).astype(np.float32)
    else:
        x = rand(rng, *shape)
    return kind, x, kernel, kwargs, rng


def check_conv(dev, host, x, w, b, kwargs, rng, op="conv2d"):
    """Forward and all gradients of conv2d / depthwise_conv2d against the reference."""
    forward, backward = getattr(fastconv, op), getattr(fastconv, f"{op}_backward")
    y = host(forward(dev(x), dev(w), dev(b), **kwargs))
    assert_close(y, getattr(ref, op)(x, w, b, **kwargs))
    dy = rand(rng, *y.shape)
    got = backward(dev(dy), dev(x), dev(w), **kwargs)
    for g, r in zip(got, getattr(ref, f"{op}_backward")(dy, x, w, **kwargs)):
        assert_close(host(g), r)


def check_pool(dev, host, kind, x, kernel, kwargs, rng):
    forward = getattr(fastconv, f"{kind}_pool2d")
    backward = getattr(fastconv, f"{kind}_pool2d_backward")
    y = host(forward(dev(x), kernel, **kwargs))
    assert_close(y, getattr(ref, f"{kind}_pool2d")(x, kernel, **kwargs))
    dy = rand(rng, *y.shape)
    dx = host(backward(dev(dy), dev(x), kernel, **kwargs))
    assert_close(dx, getattr(ref, f"{kind}_pool2d_backward")(dy, x, kernel, **kwargs))


def check_global_pool(dev, host, x, layout, rng):
    y = host(fastconv.global_avg_pool2d(dev(x), layout=layout))
    assert_close(y, ref.global_avg_pool2d(x, layout=layout))
    dy = rand(rng, *y.shape)
    dx = host(fastconv.global_avg_pool2d_backward(dev(dy), dev(x), layout=layout))
    assert_close(dx, ref.global_avg_pool2d_backward(dy, x, layout=layout))


# Shapes large enough for the 128x128 GEMM tiles in every direction, several k slices,
# backward-weight splits (> 512 output pixels) and bias splits (> 4096 pixels):
# (n, cin, cout, hw, kernel, stride, groups).
LARGE_CONV_CASES = [
    (2, 130, 136, 10, 3, 1, 1),  # 128x128 tiles for forward, backward-input, backward-weight
    (2, 16, 144, 24, 3, 1, 1),  # wide forward, 3 backward-weight splits
    (2, 24, 40, 18, 3, 2, 2),  # strided and grouped
    (2, 3, 64, 32, 3, 1, 1),  # the first CIFAR layer: k = 27 is not a whole slice
    (2, 8, 8, 48, 1, 1, 1),  # 1x1 with 4608 pixels: two bias splits
]

# Depthwise with > 2048 output pixels (several backward-weight splits) and 40 channels (two
# NHWC channel blocks): (channels, multiplier, hw, stride).
DEPTHWISE_SPLIT_CASES = [(40, 1, 33, 1), (3, 2, 40, 2)]

# Pooling on bigger planes, with ties: (kind, kernel, stride, padding).
POOL_BIGGER_CASES = [
    ("max", 2, None, 0),
    ("max", 3, 2, 1),
    ("avg", 2, None, 0),
    ("min", 3, 1, "same"),
    ("sum", (2, 3), (1, 2), ((0, 1), (1, 0))),
    # >= 64 cells: the wide-window forward kernels, windows clipped by padding
    ("max", (8, 9), 3, (4, 3)),
    ("min", (9, 8), (2, 4), "same"),
    ("avg", 8, 4, 4),
    ("sum", (16, 8), 5, 0),
]


def check_large_conv(dev, host, layout, n, cin, cout, hw, k, stride, groups):
    rng = np.random.default_rng(cin * cout + hw)
    x = nchw_to(rand(rng, n, cin, hw, hw), layout)
    w, b = rand(rng, cout, cin // groups, k, k), rand(rng, cout)
    check_conv(
        dev, host, x, w, b, dict(stride=stride, padding="same", groups=groups, layout=layout), rng
    )


def check_depthwise_splits(dev, host, layout, channels, mult, hw, stride):
    rng = np.random.default_rng(channels + hw)
    x = nchw_to(rand(rng, 2, channels, hw, hw), layout)
    w, b = rand(rng, channels * mult, 1, 3, 3), rand(rng, channels * mult)
    check_conv(
        dev,
        host,
        x,
        w,
        b,
        dict(stride=stride, padding=1, layout=layout),
        rng,
        op="depthwise_conv2d",
    )


def check_pool_bigger(dev, host, layout, kind, kernel, stride, padding):
    rng = np.random.default_rng(11)
    x = rng.integers(-2, 3, size=(2, 37, 17, 16)).astype(np.float32)
    x[0, 1, 5:9, 3:7] = np.nan  # NaN must win max and min windows, first one first
    x = nchw_to(x, layout)
    check_pool(dev, host, kind, x, kernel, dict(stride=stride, padding=padding, layout=layout), rng)


@st.composite
def batch_norm_cases(draw):
    """(shape, axis, affine, activation, seed) for check_batch_norm: ranks 2 to 4, any channel
    axis."""
    rank = draw(st.integers(2, 4))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=rank, max_size=rank)))
    axis = draw(st.sampled_from([a for a in range(-rank, rank) if a % rank != 0]))
    if np.prod(shape) // shape[axis] < 2:  # one element per channel: a variance of 0
        shape = (2,) + shape[1:]
    return (
        shape,
        axis,
        draw(st.booleans()),
        draw(st.sampled_from(ACTIVATIONS)),
        draw(st.integers(0, 2**31)),
    )


def _optional(dev, a):
    return None if a is None else dev(a)


def check_batch_norm(dev, host, shape, axis, affine, activation, seed):
    """batch_norm, batch_norm_inference and batch_norm_backward (with and without dx) against
    the float64 reference, with tolerances scaled by the float32 rounding of each term."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + rng.uniform(-3, 3)).astype(np.float32)
    c = shape[axis]
    gamma = rand(rng, c) if affine else None
    beta = rand(rng, c) if affine else None
    kw = dict(axis=axis, eps=1e-5, activation=activation)
    params = (_optional(dev, gamma), _optional(dev, beta))
    y, mean, var = fastconv.batch_norm(dev(x), *params, **kw)
    y_ref, mean_ref, var_ref = ref.batch_norm(x.astype(np.float64), gamma, beta, **kw)
    x_scale = np.abs(x).max()
    np.testing.assert_allclose(host(mean), mean_ref, rtol=1e-6, atol=1e-6 * x_scale)
    np.testing.assert_allclose(host(var), var_ref, rtol=1e-5, atol=1e-6 * x_scale**2)
    # y = a * x + b in float32: b and the float32 mean carry rounding of |x| * a
    gain = np.abs(1 if gamma is None else gamma).max() / np.sqrt(var_ref.min() + 1e-5)
    y_tol = 1e-5 * np.abs(y_ref).max() + 1e-6 + 4 * np.finfo(np.float32).eps * x_scale * gain
    np.testing.assert_allclose(host(y), y_ref, rtol=1e-5, atol=y_tol)
    moving = fastconv.batch_norm_inference(dev(x), mean, var, *params, **kw)
    np.testing.assert_allclose(host(moving), y_ref, rtol=1e-5, atol=y_tol)
    dy = rand(rng, *shape)
    grads = [
        host(g) for g in fastconv.batch_norm_backward(dev(dy), dev(x), mean, var, *params, **kw)
    ]
    grads_ref = ref.batch_norm_backward(
        dy.astype(np.float64), x.astype(np.float64), mean_ref, var_ref, gamma, beta, **kw
    )
    # float32 rounding of the terms that cancel in dx: tolerance scaled by the terms' size
    dy_scale = np.abs(dy).max()
    atols = [1e-5 * dy_scale * gain, 1e-5 * dy_scale * x.size, 1e-5 * dy_scale * x.size]
    for got, want, atol in zip(grads, grads_ref, atols):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol)
    no_dx = fastconv.batch_norm_backward(dev(dy), dev(x), mean, var, *params, need_dx=False, **kw)
    assert no_dx[0] is None
    for got, want in zip(no_dx[1:], grads[1:]):
        np.testing.assert_array_equal(host(got), want)


def check_batch_norm_nan_channel(dev, host, shape, axis):
    """A NaN in channel 1 spreads through that channel's statistics, outputs and gradients
    as in the reference, and into no other channel."""
    rng = np.random.default_rng(5)
    x = rand(rng, *shape)
    nan_at = [size - 1 for size in shape]
    nan_at[axis] = 1
    x[tuple(nan_at)] = np.nan
    c = shape[axis]
    gamma, beta, dy = rand(rng, c), rand(rng, c), rand(rng, *shape)
    x64 = x.astype(np.float64)
    for activation in ACTIVATIONS:
        kw = dict(axis=axis, activation=activation)
        y, mean, var = fastconv.batch_norm(dev(x), dev(gamma), dev(beta), **kw)
        y_ref, mean_ref, var_ref = ref.batch_norm(x64, gamma, beta, **kw)
        for got, want in zip((y, mean, var), (y_ref, mean_ref, var_ref)):
            assert_close(host(got), want)
        grads = fastconv.batch_norm_backward(
            dev(dy), dev(x), mean, var, dev(gamma), dev(beta), **kw
        )
        grads_ref = ref.batch_norm_backward(
            dy.astype(np.float64), x64, mean_ref, var_ref, gamma, beta, **kw
        )
        for got, want in zip(grads, grads_ref):
            assert_close(host(got), want)


def check_batch_norm_large_mean(dev, host, layout):
    """1000 + small noise: a variance from the sums of x^2 - mean^2 in float would be lost."""
    rng = np.random.default_rng(2)
    x = nchw_to((1000 + 0.01 * rng.standard_normal((64, 4, 8, 8))).astype(np.float32), layout)
    axis = -1 if layout == "NHWC" else 1
    _, mean, var = fastconv.batch_norm(dev(x), axis=axis)
    _, mean_ref, var_ref = ref.batch_norm(x.astype(np.float64), axis=axis)
    np.testing.assert_allclose(host(mean), mean_ref, rtol=1e-7)
    np.testing.assert_allclose(host(var), var_ref, rtol=1e-3)


# (shape, axis) with more elements per channel than one reduction split of the CUDA batch-norm
# kernels takes (256 NHWC rows, 8192 NCHW elements), the last split a shorter one: NCHW, NHWC
# with two blocks of 32 channels, rank 2, and an inner size that is not a power of two.
BATCH_NORM_SPLIT_CASES = [
    ((5, 2, 60, 60), 1),
    ((3, 20, 20, 40), -1),
    ((1000, 7), -1),
    ((4, 9, 2, 1200), 2),
]

"""Convolution beyond the random cases of test_ops.py: CIFAR-sized layers, known values,
Keras 'same' padding, views, special values, repeatability and the Winograd path."""

import numpy as np
import pytest

import fastconv
from fastconv import _args
from fastconv import reference as ref

from op_cases import assert_close, conv_algorithm, nchw_to, rand


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize(
    "cin,cout,hw,k,stride,groups",
    [
        (3, 64, 32, 3, 1, 1),  # first CIFAR layer
        (32, 48, 17, 3, 1, 1),  # channels not multiples of 8
        (64, 64, 16, 3, 2, 1),  # strided
        (16, 24, 15, 5, 1, 1),
        (24, 36, 12, 3, 1, 4),  # grouped
        (40, 40, 9, 1, 1, 1),  # 1x1 through conv2d
    ],
)
def test_conv2d_cifar_sized(isa, layout, cin, cout, hw, k, stride, groups):
    """Larger channel counts: exercises full GEMM tiles, several K blocks and many threads."""
    rng = np.random.default_rng(cin * cout)
    x = nchw_to(rand(rng, 4, cin, hw, hw), layout)
    w, b = rand(rng, cout, cin // groups, k, k), rand(rng, cout)
    kw = dict(stride=stride, padding="same", groups=groups, layout=layout)
    y = fastconv.conv2d(x, w, b, **kw)
    assert_close(y, ref.conv2d(x, w, b, **kw))
    dy = rand(rng, *y.shape)
    for got, want in zip(
        fastconv.conv2d_backward(dy, x, w, **kw), ref.conv2d_backward(dy, x, w, **kw)
    ):
        assert_close(got, want)


def test_conv2d_known_values():
    """A 3x3 box filter over a ramp, worked out by hand."""
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    w = np.ones((1, 1, 3, 3), np.float32)
    y = fastconv.conv2d(x, w, np.array([1.0], np.float32))
    np.testing.assert_array_equal(y[0, 0], [[46.0, 55.0], [82.0, 91.0]])
    y_same = fastconv.conv2d(x, w, padding="same")
    assert y_same[0, 0, 0, 0] == 0 + 1 + 4 + 5


def test_same_padding_follows_keras():
    """Even kernels / strides put the extra pixel at the bottom-right, output = ceil(in/stride)."""
    assert _args.same_padding(5, 2, 1, 1) == (0, 1)
    assert _args.same_padding(7, 3, 2, 1) == (1, 1)
    assert _args.same_padding(6, 3, 2, 1) == (0, 1)
    assert _args.same_padding(6, 3, 1, 2) == (2, 2)
    x = np.zeros((1, 2, 7, 6), np.float32)
    y = fastconv.conv2d(x, np.zeros((3, 2, 4, 2), np.float32), stride=(2, 3), padding="same")
    assert y.shape == (1, 3, 4, 2)


def test_non_contiguous_inputs(isa):
    rng = np.random.default_rng(7)
    base = rand(rng, 2, 9, 12, 10)
    x = base[:, ::2, 1:, ::-1]  # strided, offset and reversed view
    w = rand(rng, 6, 10, 4, 3)[:, :5]
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    assert_close(fastconv.conv2d(x, w, padding=1), ref.conv2d(x, w, padding=1))
    xt = rand(rng, 2, 8, 8, 6).transpose(0, 3, 1, 2)  # NHWC memory viewed as NCHW
    assert_close(fastconv.max_pool2d(xt, 2), ref.max_pool2d(xt, 2))


def test_nan_and_inf_propagate():
    x = np.ones((1, 1, 4, 4), np.float32)
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 3, 3] = np.inf
    y = fastconv.conv2d(x, np.ones((1, 1, 2, 2), np.float32))
    assert np.isnan(y[0, 0, 0, 0]) and np.isinf(y[0, 0, 2, 2])
    assert np.isfinite(y[0, 0, 1, 1])


def test_optional_gradients_are_skipped():
    rng = np.random.default_rng(2)
    x, w = rand(rng, 2, 3, 6, 6), rand(rng, 4, 3, 3, 3)
    dy = rand(rng, 2, 4, 4, 4)
    dx, dw, db = fastconv.conv2d_backward(dy, x, w, need_dx=False, need_dbias=False)
    assert dx is None and db is None
    assert_close(dw, ref.conv2d_backward(dy, x, w)[1])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_depthwise_and_pointwise_skip_dbias_on_request(layout):
    rng = np.random.default_rng(4)
    x, dy = rand(rng, 2, 6, 7, 7), rand(rng, 2, 6, 7, 7)
    wd, wp = rand(rng, 6, 1, 3, 3), rand(rng, 5, 6)
    dyp = rand(rng, 2, 5, 7, 7)
    if layout == "NHWC":
        x, dy, dyp = (a.transpose(0, 2, 3, 1).copy() for a in (x, dy, dyp))
    depthwise = fastconv.depthwise_conv2d_backward(
        dy, x, wd, padding=1, layout=layout, need_dbias=False
    )
    pointwise = fastconv.pointwise_conv2d_backward(dyp, x, wp, layout=layout, need_dbias=False)
    for got, expected in (
        (depthwise, ref.depthwise_conv2d_backward(dy, x, wd, padding=1, layout=layout)),
        (pointwise, ref.pointwise_conv2d_backward(dyp, x, wp, layout=layout)),
    ):
        assert got[2] is None
        assert_close(got[0], expected[0])
        assert_close(got[1], expected[1])


def test_empty_batch():
    y = fastconv.conv2d(np.zeros((0, 3, 5, 5), np.float32), np.ones((4, 3, 3, 3), np.float32))
    assert y.shape == (0, 4, 3, 3)
    dx, dw, db = fastconv.conv2d_backward(
        y, np.zeros((0, 3, 5, 5), np.float32), np.ones((4, 3, 3, 3), np.float32)
    )
    assert dx.shape == (0, 3, 5, 5) and not dw.any() and not db.any()


def test_repeatable_and_thread_count_only_changes_rounding():
    rng = np.random.default_rng(3)
    x, w = rand(rng, 5, 16, 12, 12), rand(rng, 24, 16, 3, 3)
    dy = rand(rng, 5, 24, 12, 12)
    threads = fastconv.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3, 3):
            fastconv.set_num_threads(n)
            results.append(fastconv.conv2d_backward(dy, x, w, padding=1))
    finally:
        fastconv.set_num_threads(threads)
    for a, b in zip(results[2], results[3]):  # same threads: bit-identical (fixed-order sums)
        np.testing.assert_array_equal(a, b)
    for other in results[1:]:
        for a, b in zip(other, results[0]):
            assert_close(a, b.astype(np.float64))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize(
    "variant,k,cin,cout,h,w,padding",
    [
        ("f4x3", 3, 16, 16, 16, 16, 1),
        ("f4x3", 3, 24, 40, 13, 18, "same"),
        ("f4x3", 3, 24, 32, 12, 11, 1),  # NCHW dw as dU^T = V dM^T
        ("f4x3", 3, 32, 17, 11, 9, ((2, 0), (1, 2))),
        ("f4x3", 3, 48, 64, 18, 18, "valid"),
        ("f3x3", 3, 16, 32, 9, 9, 1),
        ("f3x3", 3, 24, 20, 11, 11, "valid"),
        ("f3x3", 3, 17, 24, 6, 15, ((2, 0), (1, 0))),  # 6 x 14: the last tiles partial
        ("f2x5", 5, 16, 16, 8, 8, 2),
        ("f2x5", 5, 24, 40, 9, 10, "same"),
        ("f2x5", 5, 32, 17, 11, 7, ((3, 1), (0, 4))),
        ("f2x5", 5, 20, 36, 12, 12, "valid"),
    ],
)
def test_winograd_matches_direct_and_reference(isa, layout, variant, k, cin, cout, h, w, padding):
    """3x3 and 5x5 stride-1 layers with >= 16 channels run Winograd F(4x4,3x3), F(3x3,3x3)
    or F(2x2,5x5) (forward, dx through the flipped kernel, and dw); it must agree with the
    direct GEMM and the reference."""
    rng = np.random.default_rng(cin + cout)
    x = nchw_to(rand(rng, 8, cin, h, w), layout)
    wt, b = rand(rng, cout, cin, k, k), rand(rng, cout)
    kw = dict(padding=padding, layout=layout)
    x_shape = x.shape
    for direction in ("forward", "backward_weight"):
        assert conv_algorithm(direction, x_shape, wt.shape, **kw) == f"winograd_{variant}"
    y = fastconv.conv2d(x, wt, b, **kw)
    dy = rand(rng, *y.shape)
    dx, dw, _ = fastconv.conv2d_backward(dy, x, wt, **kw)
    fastconv._cpu.set_winograd(False)
    try:
        y_direct = fastconv.conv2d(x, wt, b, **kw)
        dx_direct, dw_direct, _ = fastconv.conv2d_backward(dy, x, wt, **kw)
    finally:
        fastconv._cpu.set_winograd(True)
    want_y = ref.conv2d(x, wt, b, **kw)
    want_dx, want_dw, _ = ref.conv2d_backward(dy, x, wt, **kw)
    for got, direct, want in [
        (y, y_direct, want_y),
        (dx, dx_direct, want_dx),
        (dw, dw_direct, want_dw),
    ]:
        assert_close(got, want)
        assert_close(got, direct.astype(np.float64))
    assert not np.array_equal(y, y_direct), "expected the Winograd path to have run"
    assert not np.array_equal(dw, dw_direct), "expected the Winograd path to have run"


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("n", [4, 40])
def test_winograd_weight_gradient_on_any_thread_count(isa, layout, n):
    """Each thread's first item of tiles writes its partial dU, later ones add to it, and a
    thread left without tiles contributes zeros: 64 tiles are two items (with 3 threads one
    gets none), 640 are several per thread. dw matches the reference on 1 to 3 threads."""
    rng = np.random.default_rng(n)
    kw = dict(padding=1, layout=layout)
    x, wt = nchw_to(rand(rng, n, 16, 16, 16), layout), rand(rng, 24, 16, 3, 3)
    assert conv_algorithm("backward_weight", x.shape, wt.shape, **kw) == "winograd_f4x3"
    dy = rand(rng, *fastconv.conv2d(x, wt, **kw).shape)
    want = ref.conv2d_backward(dy, x, wt, **kw)[1]
    threads = fastconv.get_num_threads()
    try:
        for count in (1, 2, 3):
            fastconv.set_num_threads(count)
            assert_close(fastconv.conv2d_backward(dy, x, wt, need_dx=False, **kw)[1], want)
    finally:
        fastconv.set_num_threads(threads)


def test_winograd_streams_large_nhwc_outputs(isa):
    """NHWC outputs of 4 MiB or more (y, and dx as a forward of dy) are written with
    streaming stores, one cache line of 16 channels per pixel, skipping the parts of the
    last tiles that fall outside the 33 x 33 map; they must match the direct GEMM."""
    rng = np.random.default_rng(5)
    x, wt, b = rand(rng, 32, 33, 33, 32), rand(rng, 48, 32, 3, 3), rand(rng, 48)
    kw = dict(padding=1, layout="NHWC")
    y = fastconv.conv2d(x, wt, b, **kw)
    dy = rand(rng, *y.shape)
    dx, _, _ = fastconv.conv2d_backward(dy, x, wt, need_dw=False, **kw)
    assert min(y.nbytes, dx.nbytes) >= 4 << 20
    fastconv._cpu.set_winograd(False)
    try:
        y_direct = fastconv.conv2d(x, wt, b, **kw)
        dx_direct, _, _ = fastconv.conv2d_backward(dy, x, wt, need_dw=False, **kw)
    finally:
        fastconv._cpu.set_winograd(True)
    assert not np.array_equal(y, y_direct), "expected the Winograd path to have run"
    assert_close(y, y_direct.astype(np.float64))
    assert_close(dx, dx_direct.astype(np.float64))


def test_maps_smaller_than_a_winograd_tile(isa):
    """A 2x2 output map would use 4 of an F(3x3, 3x3) tile's 9 outputs: the direct GEMM
    serves it. A 3x3 map is one whole tile: Winograd for every pass (64 tiles, two per
    channel, are enough for the weight gradient)."""
    rng = np.random.default_rng(7)
    wt = rand(rng, 32, 32, 3, 3)
    for side, winograd in [(2, False), (3, True)]:
        x = rand(rng, 64, 32, side, side)
        y = fastconv.conv2d(x, wt, padding=1)
        dy = rand(rng, *y.shape)
        dx, dw, _ = fastconv.conv2d_backward(dy, x, wt, padding=1)
        fastconv._cpu.set_winograd(False)
        try:
            y_direct = fastconv.conv2d(x, wt, padding=1)
            dx_direct, dw_direct, _ = fastconv.conv2d_backward(dy, x, wt, padding=1)
        finally:
            fastconv._cpu.set_winograd(True)
        for got, direct in [(y, y_direct), (dx, dx_direct), (dw, dw_direct)]:
            assert np.array_equal(got, direct) != winograd
        want_dx, want_dw, _ = ref.conv2d_backward(dy, x, wt, padding=1)
        for got, want in [(y, ref.conv2d(x, wt, padding=1)), (dx, want_dx), (dw, want_dw)]:
            assert_close(got, want)


def test_winograd_keeps_nan_local():
    """A NaN must reach only the outputs whose window covers it, as in a direct convolution."""
    x = np.ones((8, 16, 12, 12), np.float32)
    x[0, 3, 5, 5] = np.nan
    y = fastconv.conv2d(x, np.ones((16, 16, 3, 3), np.float32), padding=1)
    nan_rows, nan_cols = np.nonzero(np.isnan(y[0, 0]))
    assert set(nan_rows) == {4, 5, 6} and set(nan_cols) == {4, 5, 6}
    assert np.isfinite(y[1:]).all()


@pytest.mark.parametrize(
    "x_shape,w_shape,expected",
    [
        ((8, 16, 15, 16), (24, 16, 3, 3), "winograd_f4x3"),  # C_out ends mid-vector
        ((8, 16, 15, 24), (40, 24, 3, 3), "winograd_f4x3"),  # C_in too: its last 8 masked
        ((64, 3, 3, 32), (16, 32, 3, 3), "winograd_f3x3"),
        ((8, 8, 9, 32), (20, 32, 5, 5), "winograd_f2x5"),
    ],
)
def test_winograd_nhwc_by_channels_keeps_specials(isa, x_shape, w_shape, expected):
    """NHWC Winograd forwards with C_in a multiple of 8 and a small U work along the
    channels (AVX-512); a NaN and an Inf in x send the call to the direct GEMM, so they reach
    exactly the outputs whose windows hold them."""
    _check_conv_path(isa, "forward", expected, x_shape, w_shape, layout="NHWC", padding="same")


@pytest.mark.parametrize(
    "x_shape,w_shape,kw,expected",
    [
        # large enough to run on several threads
        ((4, 16, 16, 64), (48, 64, 1, 1), {}, "gemm_nhwc"),  # the threads split the pixels
        ((1, 16, 16, 256), (64, 256, 1, 1), {}, "gemm_nhwc"),  # few pixels: dW's columns
        ((4, 32, 32, 3), (24, 3, 3, 3), dict(padding=1), "direct_nhwc"),
        ((6, 32, 32, 3), (32, 3, 2, 2), {}, "direct_nhwc"),
    ],
)
def test_nhwc_weight_gradient_sums_dbias(isa, x_shape, w_shape, kw, expected):
    """The NHWC GEMM and direct weight gradients add up dbias from the dy they read: every
    pixel once, with 1 to 3 threads, whichever way the threads split the work, and dw as
    the weight gradient alone gives it, bit for bit; without dx (a first layer) too."""
    kw = dict(layout="NHWC", **kw)
    assert conv_algorithm("backward_weight", x_shape, w_shape, **kw) == expected
    rng = np.random.default_rng(w_shape[0])
    x, w = rand(rng, *x_shape), rand(rng, *w_shape)
    dy = rand(rng, *fastconv.conv2d(x, w, **kw).shape)
    threads = fastconv.get_num_threads()
    try:
        for n in (1, 2, 3):
            fastconv.set_num_threads(n)
            _, dw, db = fastconv.conv2d_backward(dy, x, w, **kw)
            assert_close(db, dy.astype(np.float64).sum(axis=(0, 1, 2)))
            dw_alone = fastconv.conv2d_backward(dy, x, w, need_dx=False, need_dbias=False, **kw)[1]
            np.testing.assert_array_equal(dw, dw_alone)
            no_dx, dw_first, db_first = fastconv.conv2d_backward(dy, x, w, need_dx=False, **kw)
            assert no_dx is None
            np.testing.assert_array_equal(dw_first, dw)
            np.testing.assert_array_equal(db_first, db)
    finally:
        fastconv.set_num_threads(threads)


@pytest.mark.parametrize("channels", [1, 3, 8, 17, 24, 40, 100])
def test_nhwc_dbias_alone_sums_every_channel(isa, channels):
    """dbias without dw: channel counts that are no whole number of vectors on any ISA, down
    to pixels narrower than one vector, whose sums read past a pixel's channels."""
    rng = np.random.default_rng(channels)
    x, w = rand(rng, 3, 9, 7, 5), rand(rng, channels, 5, 3, 3)
    dy = rand(rng, 3, 7, 5, channels)
    dx, dw, db = fastconv.conv2d_backward(dy, x, w, need_dw=False, layout="NHWC")
    assert dw is None
    assert_close(db, dy.astype(np.float64).sum(axis=(0, 1, 2)))
    assert_close(dx, ref.conv2d_backward(dy, x, w, layout="NHWC")[0])


@pytest.mark.parametrize(
    "x_shape,w_shape,kw",
    [
        ((16, 16, 16, 48), (48, 48, 1, 1), {}),  # C_out 48: a sliver of NR=32 and one of 16
        ((8, 15, 15, 48), (40, 48, 3, 3), dict(padding=1, stride=2)),  # 32 + 8
        ((8, 15, 15, 64), (17, 64, 3, 3), dict(padding=1, stride=2)),  # 16 + 1
    ],
)
def test_nhwc_gemm_with_a_last_sliver_of_half_width_or_less(isa, x_shape, w_shape, kw):
    """A last sliver of output channels that fits in half of the register tile's columns runs
    a half-width tile (AVX-512: 16 of 32, AVX2: 8 of 16), as does a last block of input
    channels in the weight gradient; every pass matches the reference, NaN and Inf included."""
    _check_conv_path(isa, "forward", "gemm_nhwc", x_shape, w_shape, layout="NHWC", **kw)


def test_nhwc_gemm_with_weights_larger_than_l2(isa):
    """Weights of 1.2 MB (3x3, 128 -> 288 channels) exceed half of any L2 seen: the forward
    runs its items sliver by sliver (a last sliver of 288 - 256 = 32 channels, or 16 + 16);
    every pass matches the reference."""
    _check_conv_path(
        isa,
        "forward",
        "gemm_nhwc",
        (3, 9, 9, 128),
        (288, 128, 3, 3),
        layout="NHWC",
        padding=1,
        stride=2,
    )


def _check_conv_path(isa, direction, expected, x_shape, w_shape, seed=0, **kw):
    """Asserts that the selector runs `expected` for this pass on `isa`, then checks every
    output of forward and backward against the reference, with a NaN and an Inf in x (they
    must reach exactly the outputs the direct sum puts them in)."""
    assert conv_algorithm(direction, x_shape, w_shape, **kw) == expected
    rng = np.random.default_rng(seed)
    x, w, b = rand(rng, *x_shape), rand(rng, *w_shape), rand(rng, w_shape[0])
    x.flat[rng.integers(x.size)] = np.nan
    x.flat[rng.integers(x.size)] = np.inf
    y = fastconv.conv2d(x, w, b, **kw)
    _assert_close_with_specials(y, ref.conv2d(x, w, b, **kw))
    dy = rand(rng, *y.shape)
    for got, want in zip(
        fastconv.conv2d_backward(dy, x, w, **kw), ref.conv2d_backward(dy, x, w, **kw)
    ):
        _assert_close_with_specials(got, want)


def _assert_close_with_specials(got, want):
    """NaN, +Inf and -Inf exactly where the reference has them, the rest close."""
    for special in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(special(got), special(want))
    finite = np.isfinite(want)
    assert_close(np.where(finite, got, 0).astype(np.float32), np.where(finite, want, 0))


@pytest.mark.parametrize(
    "x_shape,w_shape,kw",
    [
        ((3, 17, 15, 24), (40, 24, 3, 3), dict(stride=2, padding=1)),  # odd map, 40 outputs
        ((1, 13, 11, 32), (64, 32, 5, 5), dict(padding=2)),  # 5x5, 143 pixels
        ((2, 12, 12, 16), (24, 8, 3, 3), dict(padding="same", groups=2, dilation=2)),
        ((3, 9, 9, 48), (33, 48, 1, 1), dict()),  # pointwise
        ((4, 5, 6, 20), (16, 20, 3, 2), dict(stride=(2, 1), padding=((2, 0), (1, 1)))),
        ((2, 9, 10, 16), (8, 16, 3, 4), dict(stride=(1, 2), padding="same", dilation=(2, 1))),
        ((2, 8, 9, 6), (12, 2, 3, 3), dict(padding=1, groups=3)),  # few channels per group
    ],
)
def test_nhwc_forward_reads_rows_in_place(isa, x_shape, w_shape, kw):
    """NHWC forward as an implicit GEMM (micro_tile_rows): pixel blocks that end mid-way,
    output channels that end mid-sliver, padding on every side, strides, dilation, groups."""
    _check_conv_path(isa, "forward", "gemm_nhwc", x_shape, w_shape, layout="NHWC", **kw)


def test_nhwc_forward_streams_large_outputs(isa):
    """An NHWC output of 4 MiB or more whose channels fill whole tiles is written with
    streaming stores; 31713 pixels end in a partial block, stored plainly."""
    rng = np.random.default_rng(11)
    x, w, b = rand(rng, 33, 31, 31, 48), rand(rng, 64, 48, 1, 1), rand(rng, 64)
    assert conv_algorithm("forward", x.shape, w.shape, layout="NHWC") == "gemm_nhwc"
    y = fastconv.conv2d(x, w, b, layout="NHWC")
    assert y.nbytes >= 4 << 20
    want = x.astype(np.float64) @ w[:, :, 0, 0].T.astype(np.float64) + b
    assert_close(y, want)


def test_direct_forward_streams_large_outputs(isa):
    """A direct NHWC forward (3 input channels) with an output of 4 MiB or more and 32
    channels, two whole cache lines per pixel, is written with streaming stores; the 63 x 65
    map ends rows mid-tile. Checked against the float64 reference, padding included."""
    rng = np.random.default_rng(12)
    x, w, b = rand(rng, 9, 63, 65, 3), rand(rng, 32, 3, 3, 3), rand(rng, 32)
    kw = dict(padding=1, layout="NHWC")
    assert conv_algorithm("forward", x.shape, w.shape, **kw) == "direct_nhwc"
    y = fastconv.conv2d(x, w, b, **kw)
    assert y.nbytes >= 4 << 20
    assert_close(y, ref.conv2d(x, w, b, **kw))


@pytest.mark.parametrize(
    "x_shape,w_shape,kw",
    [
        ((3, 16, 15, 3), (24, 3, 2, 2), dict()),  # the CIFAR stem: 24 outputs, 1.5 AVX-512 vectors
        ((2, 11, 12, 3), (64, 3, 3, 3), dict(padding=1)),  # padded: windows read a copy
        ((2, 9, 10, 5), (8, 5, 3, 4), dict(stride=(1, 2), padding="same", dilation=(2, 1))),
        ((4, 5, 6, 2), (17, 2, 3, 2), dict(stride=(2, 1), padding=((2, 0), (1, 1)))),
        ((2, 10, 11, 3), (16, 3, 2, 3), dict(padding=2, dilation=(1, 2))),
        ((1, 7, 7, 1), (40, 1, 5, 5), dict(padding=2)),
        ((2, 13, 13, 15), (100, 15, 3, 3), dict(stride=2, padding=1)),  # several column blocks
        ((1, 23, 23, 3), (64, 3, 7, 7), dict(stride=2, padding=3)),  # an ImageNet stem
        ((2, 12, 12, 4), (36, 4, 1, 1), dict()),  # pointwise
        ((2, 9, 40, 3), (24, 3, 3, 2), dict(padding=((2, 1), (0, 1)))),  # dx rows of 3 vectors
        ((1, 6, 5, 7), (9, 7, 2, 3), dict(padding=((0, 3), (4, 0)), dilation=2)),  # pad > kernel
    ],
)
def test_nhwc_few_input_channels_run_direct(isa, x_shape, w_shape, kw):
    """NHWC layers with fewer than 16 input channels, every pass by the direct kernels:
    pixel rows that end mid-tile, output channels that end mid-vector (the weight gradient
    reads the last pixels of dy through a copy), tap counts that end mid-tile, padding on
    every side (the windows then read a zero-padded copy), strides and dilation."""
    for direction in ("backward_input", "backward_weight"):
        assert conv_algorithm(direction, x_shape, w_shape, layout="NHWC", **kw) == "direct_nhwc"
    _check_conv_path(isa, "forward", "direct_nhwc", x_shape, w_shape, layout="NHWC", **kw)


@pytest.mark.parametrize(
    "x_shape,k,kw",
    [
        ((2, 9, 10, 48), (7, 7), dict(padding=3)),  # a 7x7 on a small map
        ((2, 11, 9, 33), (5, 5), dict(stride=2, padding=2)),  # channels end mid-vector
        ((1, 6, 7, 200), (3, 3), dict(padding="same", dilation=2)),  # several channel blocks
        ((3, 7, 7, 16), (3, 2), dict(stride=(2, 1), padding=((2, 0), (1, 1)))),
        ((2, 8, 9, 24), (3, 3), dict(padding=((3, 0), (0, 3)))),  # more padding than reach
        ((2, 10, 10, 5), (3, 3), dict()),  # no padding: the tiles read x itself
    ],
)
def test_depthwise_nhwc_tiles(isa, x_shape, k, kw):
    """NHWC depthwise with one filter per channel: the forward, and at stride 1 dx as the
    forward of dy with flipped filters, by register tiles of pixels x channels over a
    zero-padded frame (pixel rows and channel blocks that end mid-tile, strides, dilation,
    padding on every side); with more padding than the kernel reaches, dx by gathering."""
    c = x_shape[3]
    _check_conv_path(
        isa, "forward", "depthwise_nhwc", x_shape, (c, 1, *k), groups=c, layout="NHWC", **kw
    )


@pytest.mark.parametrize(
    "x_shape,k,kw",
    [
        ((2, 9, 10, 48), (7, 7), dict(padding=3)),
        ((2, 11, 9, 33), (5, 5), dict(padding=2)),  # channels end mid-vector
        ((1, 6, 7, 200), (3, 3), dict(padding="same", dilation=2)),  # several channel blocks
        ((2, 8, 9, 24), (3, 2), dict(padding=((2, 0), (1, 0)))),  # padded on one side only
        ((2, 10, 10, 5), (3, 3), dict()),  # no padding: dy is smaller than x
        ((3, 1, 17, 16), (1, 3), dict(padding=(0, 1))),  # one row, one vector of channels
    ],
)
def test_depthwise_nhwc_one_pass_backward(isa, x_shape, k, kw):
    """dx, dw and dbias of a stride-1 NHWC depthwise layer in one pass over dy and x: the
    reference's values, and dx bit for bit that of the dx-only pass (the same sums)."""
    rng = np.random.default_rng(x_shape[3])
    c = x_shape[3]
    x, w = rand(rng, *x_shape), rand(rng, c, 1, *k)
    kw = dict(layout="NHWC", **kw)
    dy = rand(rng, *fastconv.depthwise_conv2d(x, w, **kw).shape)
    got = fastconv.depthwise_conv2d_backward(dy, x, w, **kw)
    for g, want in zip(got, ref.depthwise_conv2d_backward(dy, x, w, **kw)):
        assert_close(g, want)
    dx_only = fastconv.depthwise_conv2d_backward(dy, x, w, need_dw=False, need_dbias=False, **kw)
    np.testing.assert_array_equal(got[0], dx_only[0])


def test_depthwise_nhwc_one_pass_backward_with_infinite_border_pixels(isa):
    """The one pass pairs x's border pixels with the zeros that pad dy, inf * 0 = NaN where
    dw's sum has no such term; dw is then summed again without them."""
    rng = np.random.default_rng(5)
    x, w = rand(rng, 2, 6, 7, 16), rand(rng, 16, 1, 3, 3)
    x[0, 0, 0, 3] = np.inf
    x[1, 5, 6, 9] = -np.inf
    kw = dict(padding=1, layout="NHWC")
    dy = rand(rng, 2, 6, 7, 16)
    got = fastconv.depthwise_conv2d_backward(dy, x, w, **kw)
    want = ref.depthwise_conv2d_backward(dy, x, w, **kw)
    assert np.isfinite(want[1][3]).sum() == 5  # the taps that pair the pixel with padding
    for g, expected in zip(got, want):
        _assert_close_with_specials(g, expected)


@pytest.mark.parametrize(
    "x_shape,mult,k,kw",
    [
        ((2, 9, 10, 24), 2, 3, dict(padding=1)),
        ((2, 11, 9, 5), 3, 5, dict(stride=2, padding=2)),  # 15 output channels
        ((1, 8, 8, 16), 4, 7, dict(padding=3)),
    ],
)
def test_depthwise_nhwc_multiplier(isa, x_shape, mult, k, kw):
    """NHWC depthwise with M filters per channel runs as the M = 1 layer over x with each
    channel repeated M times; dx sums each channel's M gradients."""
    c = x_shape[3]
    _check_conv_path(
        isa,
        "forward",
        "depthwise_nhwc",
        x_shape,
        (c * mult, 1, k, k),
        groups=c,
        layout="NHWC",
        **kw,
    )


def test_depthwise_nhwc_input_gradient_with_an_infinite_weight(isa):
    """dx as a forward of zero-padded dy would multiply an infinite weight by the padding's
    zeros; dx is then gathered, NaN only where the sum has inf * 0 or inf - inf."""
    rng = np.random.default_rng(3)
    x, w = rand(rng, 2, 6, 7, 16), rand(rng, 16, 1, 3, 3)
    w[5, 0, 0, 0] = np.inf
    kw = dict(padding=1, groups=16, layout="NHWC")
    dy = rand(rng, 2, 6, 7, 16)
    got = fastconv.conv2d_backward(dy, x, w, **kw)[0]
    _assert_close_with_specials(got, ref.conv2d_backward(dy, x, w, **kw)[0])


@pytest.mark.parametrize(
    "x_shape,w_shape,kw,expected",
    [
        ((3, 17, 15, 64), (40, 64, 3, 3), dict(stride=2, padding=1), "gemm_nhwc"),
        ((1, 13, 11, 32), (64, 32, 5, 5), dict(padding=2), "gemm_nhwc"),  # 143 pixels
        ((2, 12, 12, 64), (24, 32, 3, 3), dict(padding="same", groups=2, dilation=2), "gemm_nhwc"),
        ((3, 9, 9, 96), (33, 96, 1, 1), dict(), "gemm_nhwc"),
        ((2, 12, 12, 36), (40, 36, 3, 3), dict(stride=2, padding=1), "gemm_nhwc_packed"),
        ((2, 10, 9, 20), (8, 20, 3, 3), dict(padding=1), "gemm_nhwc_packed"),
        # a tap's last block of input channels is half of NR: in place, half-width tiles
        ((2, 12, 12, 48), (40, 48, 3, 3), dict(stride=2, padding=1), "gemm_nhwc"),  # AVX-512
        ((2, 12, 12, 24), (40, 24, 3, 3), dict(stride=2, padding=1), "half of NR"),  # AVX2
        ((16, 16, 16, 48), (48, 48, 1, 1), dict(), "gemm_nhwc"),
        # x's pixels 1 KiB apart and 128 output channels: x's rows copied side by side first
        ((2, 9, 9, 256), (128, 256, 1, 1), dict(), "gemm_nhwc"),
        ((2, 9, 9, 256), (136, 256, 3, 3), dict(stride=2, padding=1), "gemm_nhwc"),
        ((1, 4, 4, 768), (2048, 48, 1, 1), dict(groups=16), "gemm_nhwc"),  # AVX-512: 32 + 16
        (
            (2, 11, 12, 6),
            (15, 2, 2, 2),
            dict(stride=2, padding="same", groups=3),
            "gemm_nhwc_packed",
        ),
    ],
)
def test_nhwc_weight_gradient(isa, x_shape, w_shape, kw, expected):
    """NHWC dW in place (micro_tile_cols: dy read in place where C_out is whole micro-tile rows,
    else from a padded chunk copy; x at each pixel's tap row, or from a copy of a column
    block's rows) where C_g is a multiple of the build's NR or half of NR past one, packed
    otherwise."""
    if expected == "half of NR":  # in place where C_g % NR is NR / 2 (AVX2: 24 = 16 + 8)
        nr = {"avx512": 32}.get(isa, 16)
        expected = "gemm_nhwc" if x_shape[-1] % nr == nr // 2 else "gemm_nhwc_packed"
    _check_conv_path(isa, "backward_weight", expected, x_shape, w_shape, layout="NHWC", **kw)


@pytest.mark.parametrize(
    "x_shape,w_shape,pad,kw",
    [
        ((2, 7, 7, 96), (40, 96, 1, 1), 0, dict()),  # dx's 96 channels: whole and half slivers
        ((2, 7, 6, 40), (72, 40, 3, 3), 1, dict()),
        ((2, 9, 8, 48), (96, 24, 3, 3), 1, dict(groups=2)),
        ((1, 9, 9, 33), (17, 33, 5, 5), 2, dict()),
        ((2, 8, 9, 40), (12, 20, 3, 2), 1, dict(groups=2, dilation=(2, 1))),
    ],
)
def test_nhwc_input_gradient_packs_the_flipped_kernel_from_w(isa, x_shape, w_shape, pad, kw):
    """Stride-1 NHWC dx is the forward of dy with the kernel flipped and its channels swapped;
    where that forward is the NHWC GEMM, its operand is packed from w as it is (taps in
    reverse order, channels crossed within each group), not from a flipped copy."""
    n, h, w_, _ = x_shape
    c_out, _, kh, kw_ = w_shape
    groups = kw.get("groups", 1)
    dil = kw.get("dilation", 1)
    dil_h, dil_w = (dil, dil) if isinstance(dil, int) else dil
    oh, ow = h + 2 * pad - dil_h * (kh - 1), w_ + 2 * pad - dil_w * (kw_ - 1)
    flipped_w = (x_shape[-1], c_out // groups, kh, kw_)
    flipped_pad = ((dil_h * (kh - 1) - pad,) * 2, (dil_w * (kw_ - 1) - pad,) * 2)
    flipped = dict(kw, padding=flipped_pad, layout="NHWC")
    assert conv_algorithm("forward", (n, oh, ow, c_out), flipped_w, **flipped) == "gemm_nhwc"
    _check_conv_path(
        isa,
        "backward_input",
        "backward_input_as_forward",
        x_shape,
        w_shape,
        padding=pad,
        layout="NHWC",
        **kw,
    )

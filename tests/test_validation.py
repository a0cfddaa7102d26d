"""Bad arguments raise TypeError/ValueError with a message that says what to fix, before any
native code runs; nothing crashes the process."""

import numpy as np
import pytest

import fastconv

X = np.zeros((2, 4, 8, 8), np.float32)
W = np.zeros((6, 4, 3, 3), np.float32)
DW = np.zeros((8, 1, 3, 3), np.float32)
PW = np.zeros((5, 4), np.float32)
POOLS = ["max", "min", "avg", "sum"]


def raises(exc, match, fn, *args, **kw):
    with pytest.raises(exc, match=match):
        fn(*args, **kw)


@pytest.mark.parametrize("bad", [X.astype(np.float64), X.astype(np.float16), X.astype(np.int32)])
def test_wrong_dtype_names_the_fix(bad):
    raises(TypeError, r"astype\(np\.float32\)", fastconv.conv2d, bad, W)
    raises(TypeError, r"astype\(np\.float32\)", fastconv.max_pool2d, bad, 2)
    raises(TypeError, r"astype\(np\.float32\)", fastconv.conv2d, X, W.astype(np.float64))


def test_not_an_array():
    raises(TypeError, "float32 array", fastconv.conv2d, X.tolist(), W)
    raises(TypeError, "float32 array", fastconv.avg_pool2d, None, 2)
    raises(TypeError, "float32 array", fastconv.global_avg_pool2d, "x")


def test_wrong_rank():
    raises(ValueError, "4 dimensions", fastconv.conv2d, X[0], W)
    raises(ValueError, "4 dimensions", fastconv.conv2d, X, W[0])
    raises(ValueError, "4 dimensions", fastconv.max_pool2d, X[0], 2)
    raises(ValueError, "w must have 2 dimensions", fastconv.pointwise_conv2d, X, W)


def test_channel_and_group_mismatch():
    raises(ValueError, "input channels", fastconv.conv2d, X, np.zeros((6, 3, 3, 3), np.float32))
    raises(ValueError, "groups=3 must divide", fastconv.conv2d, X, W, groups=3)
    raises(ValueError, "groups", fastconv.conv2d, X, np.zeros((6, 2, 3, 3), np.float32), groups=0)
    raises(ValueError, "layout", fastconv.conv2d, X.transpose(0, 2, 3, 1).copy(), W, layout="NCHW")
    raises(
        ValueError,
        "depthwise weights",
        fastconv.depthwise_conv2d,
        X,
        np.zeros((6, 1, 3, 3), np.float32),
    )
    raises(ValueError, "depthwise weights", fastconv.depthwise_conv2d, X, W)
    raises(ValueError, "input channels", fastconv.pointwise_conv2d, X, np.zeros((5, 3), np.float32))
    raises(
        ValueError, "input channels", fastconv.separable_conv2d, X, DW, np.zeros((5, 7), np.float32)
    )


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        (dict(stride=0), ValueError, "stride must be >= 1"),
        (dict(stride=-2), ValueError, "stride"),
        (dict(stride=(1, 0)), ValueError, "stride"),
        (dict(stride=1.5), TypeError, "stride"),
        (dict(stride=True), TypeError, "stride"),
        (dict(stride=(1, 2, 3)), TypeError, "stride"),
        (dict(dilation=0), ValueError, "dilation"),
        (dict(padding=-1), ValueError, "padding"),
        (dict(padding=((1, -1), (0, 0))), ValueError, "padding"),
        (dict(padding="full"), ValueError, "padding"),
        (dict(padding=1.0), TypeError, "padding"),
        (dict(layout="NHCW"), ValueError, "layout"),
        (dict(groups=1.0), TypeError, "groups"),
    ],
)
def test_bad_conv_parameters(kw, exc, match):
    raises(exc, match, fastconv.conv2d, X, W, **kw)
    raises(exc, match, fastconv.conv2d_backward, np.zeros((2, 6, 6, 6), np.float32), X, W, **kw)


def test_kernel_larger_than_padded_input():
    raises(ValueError, "kernel spans", fastconv.conv2d, X, np.zeros((6, 4, 9, 3), np.float32))
    raises(ValueError, "kernel spans", fastconv.conv2d, X, W, dilation=4)
    raises(ValueError, "kernel spans", fastconv.max_pool2d, X, 9)


def test_bias_and_gradient_shapes():
    raises(ValueError, "bias must have shape", fastconv.conv2d, X, W, np.zeros(5, np.float32))
    raises(ValueError, "1 dimensions", fastconv.conv2d, X, W, np.zeros((6, 1), np.float32))
    raises(
        ValueError,
        "dy must have shape",
        fastconv.conv2d_backward,
        np.zeros((2, 6, 5, 6), np.float32),
        X,
        W,
    )
    raises(
        ValueError,
        "dy must have shape",
        fastconv.max_pool2d_backward,
        np.zeros((2, 4, 3, 4), np.float32),
        X,
        2,
    )
    raises(
        ValueError,
        "dy must have shape",
        fastconv.global_avg_pool2d_backward,
        np.zeros((3, 4), np.float32),
        X,
    )
    raises(  # the depthwise output of X and DW is (2, 8, 6, 6)
        ValueError,
        "mid must have shape",
        fastconv.separable_conv2d_backward_from_mid,
        np.zeros((2, 5, 6, 6), np.float32),
        X,
        np.zeros((2, 8, 8, 8), np.float32),
        DW,
        np.zeros((5, 8), np.float32),
    )


@pytest.mark.parametrize("kind", POOLS)
def test_bad_pool_parameters(kind):
    fn = getattr(fastconv, f"{kind}_pool2d")
    raises(ValueError, "more than half the kernel", fn, X, 2, padding=2)
    raises(ValueError, "kernel_size", fn, X, 0)
    raises(TypeError, "kernel_size", fn, X, None)
    raises(ValueError, "stride", fn, X, 2, stride=0)
    raises(ValueError, "layout", fn, X, 2, layout="HWC")


def test_count_include_pad_must_be_bool():
    raises(
        TypeError,
        "count_include_pad",
        fastconv.avg_pool2d,
        X,
        3,
        padding=1,
        count_include_pad="yes",
    )


@pytest.mark.parametrize(
    "good, bad, exc",
    [
        (dict(stride=1), dict(stride=True), TypeError),
        (dict(stride=2), dict(stride=2.0), TypeError),
        (dict(stride=(2, 1)), dict(stride=(2, 1.0)), TypeError),
        (dict(padding=((1, 1), (0, 0))), dict(padding=((1, 1), (0, False))), TypeError),
        (dict(groups=1), dict(groups=1.0), TypeError),
        (dict(groups=1), dict(groups=np.True_), TypeError),
    ],
)
def test_a_remembered_geometry_never_answers_an_equal_value_of_another_type(good, bad, exc):
    """Geometries are remembered by their arguments, and True == 1 == 1.0: the bad call
    after an equal good one must still be refused."""
    expected = fastconv.reference.conv2d(X, W, **good)
    for _ in range(2):
        np.testing.assert_allclose(fastconv.conv2d(X, W, **good), expected, atol=1e-5)
        raises(exc, next(iter(bad)), fastconv.conv2d, X, W, **bad)


def test_geometry_is_remembered_and_lists_still_work():
    from fastconv import _args

    build = dict(stride=2, padding=1, layout="NHWC", kind="max", count_include_pad=False)
    first = _args.pool_geometry((2, 8, 8, 4), 3, **build)
    assert _args.pool_geometry((2, 8, 8, 4), 3, **build) is first
    from_list = _args.pool_geometry((2, 8, 8, 4), [3, 3], **{**build, "stride": [2, 2]})
    assert from_list == first and from_list is not first
    assert _args.pool_geometry((2, 9, 8, 4), 3, **build).oh == 5
    assert first.oh == 4
    raises(
        TypeError,
        "count_include_pad",
        _args.pool_geometry,
        (2, 8, 8, 4),
        3,
        **{**build, "count_include_pad": 0},
    )


def test_native_layer_rejects_mismatched_buffers():
    """Direct calls into the extension with a wrong buffer raise instead of reading past it."""
    from dataclasses import replace

    from fastconv import _args

    g = _args.conv_geometry(
        X.shape, W.shape, stride=1, padding=0, dilation=1, groups=1, layout="NCHW"
    )
    y = np.empty(g.y_shape, np.float32)
    with pytest.raises(ValueError, match="elements"):
        fastconv._cpu.conv2d_forward(X[:1], W, None, y, g)
    with pytest.raises(TypeError, match="float32"):
        fastconv._cpu.conv2d_forward(X.astype(np.float64), W, None, y, g)
    with pytest.raises(ValueError, match="C-contiguous"):
        fastconv._cpu.conv2d_forward(X, W, None, np.empty(g.y_shape[::-1], np.float32).T, g)
    with pytest.raises(ValueError, match="read-only"):
        readonly = np.empty(g.y_shape, np.float32)
        readonly.flags.writeable = False
        fastconv._cpu.conv2d_forward(X, W, None, readonly, g)
    with pytest.raises(TypeError, match="must be an array"):
        fastconv._cpu.conv2d_forward(X, None, None, y, g)
    with pytest.raises(ValueError, match="geometry"):
        fastconv._cpu.conv2d_forward(X, W, None, y, replace(g, stride_h=0))
    with pytest.raises(TypeError, match="no field 'c_in'"):
        fastconv._cpu.conv2d_forward(
            X,
            W,
            None,
            y,
            _args.pool_geometry(X.shape, 2, stride=None, padding=0, layout="NCHW", kind="max"),
        )


@pytest.mark.parametrize(
    "make, read",
    [
        (lambda: _geometries()[0], "read_conv_geometry"),
        (lambda: _geometries()[1], "read_pool_geometry"),
        (lambda: _geometries()[2], "read_norm_geometry"),
    ],
)
def test_geometry_round_trips_through_every_native_module(make, read):
    """Each native module reads every field of the Python geometry by name, unchanged."""
    import dataclasses

    from fastconv import _cuda_harness

    g = make()
    for module in (fastconv._cpu, _cuda_harness):
        if read == "read_norm_geometry" and not hasattr(module, read):
            continue
        assert getattr(module, read)(g) == dataclasses.asdict(g)


def _geometries():
    from fastconv import _args

    return (
        _args.conv_geometry(
            (2, 9, 8, 3),
            (4, 3, 3, 2),
            stride=(2, 1),
            padding=((1, 0), (2, 1)),
            dilation=(1, 2),
            groups=1,
            layout="NHWC",
        ),
        _args.pool_geometry(
            (2, 3, 9, 8),
            (3, 2),
            stride=(2, 1),
            padding=1,
            layout="NCHW",
            kind="avg",
            count_include_pad=True,
        ),
        _args.norm_geometry((2, 3, 9, 8), 1, 1e-5, "gelu", "test"),
    )


ODD_VALUES = [
    None,
    "same",
    "x",
    0,
    -1,
    1,
    2,
    2**62,
    1.5,
    float("nan"),
    True,
    (),
    (1,),
    (1, 2, 3),
    ((1, 2), (3,)),
    [1, -1],
    np.int64(2),
    np.zeros(3, np.float32),
    object(),
]
ODD_ARRAYS = [
    np.zeros((0, 4, 8, 8), np.float32),
    np.zeros((2, 0, 8, 8), np.float32),
    np.zeros((2, 4, 0, 8), np.float32),
    np.zeros((1, 1, 1, 1), np.float32),
    np.zeros((2, 4, 8), np.float32),
    np.zeros((2, 4, 8, 8, 1), np.float32),
    np.zeros((2, 4, 8, 8), ">f4"),
    np.float32(1.0),
    X.astype(np.complex64),
    np.ones((2, 4, 8, 8), np.float32)[:, :, ::3, ::-2],
]


def call_must_not_crash(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except (TypeError, ValueError, MemoryError):
        pass  # a clear Python exception is the right answer to a malformed call


@pytest.mark.parametrize("name", sorted(n for n in fastconv.__all__ if "pool" in n or "conv" in n))
def test_malformed_calls_raise_instead_of_crashing(name):
    """Every function, every argument slot, a zoo of odd values: only Python exceptions."""
    fn = getattr(fastconv, name)
    backward = name.endswith("_backward")
    if name.endswith("_from_mid"):  # dy, x, mid, depthwise_w, pointwise_w
        mid, pointwise = np.zeros((2, 8, 6, 6), np.float32), np.zeros((5, 8), np.float32)
        base = [np.zeros((2, 5, 6, 6), np.float32), X, mid, DW, pointwise]
    elif "separable" in name:
        base = [X, DW, np.zeros((5, 8), np.float32)]
    elif "pointwise" in name:
        base = [X, PW]
    elif "depthwise" in name:
        base = [X, DW]
    elif "conv" in name:
        base = [X, W]
    elif "global" in name:
        base = [X]
    else:
        base = [X, 2]
    if backward:
        base = [np.zeros((2, 4, 4, 4), np.float32)] + base
    keywords = ["stride", "padding", "dilation", "groups", "layout", "count_include_pad"]
    for slot in range(len(base)):
        for value in ODD_VALUES + ODD_ARRAYS:
            args = list(base)
            args[slot] = value
            call_must_not_crash(fn, *args)
    for key in keywords:
        for value in ODD_VALUES:
            call_must_not_crash(fn, *base, **{key: value})

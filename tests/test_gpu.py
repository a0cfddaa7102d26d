"""The CUDA kernels on a real GPU, through the functional API with CuPy arrays, against the
NumPy reference: the same cases as tests/test_cuda_harness.py plus what only a GPU shows
(devices, streams, PyTorch tensors, run-to-run determinism). Skipped without a GPU."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _args

from op_cases import (
    ACTIVATIONS,
    BATCH_NORM_SPLIT_CASES,
    CPU_LIMITS,
    DEPTHWISE_SPLIT_CASES,
    LARGE_CONV_CASES,
    POOL_BIGGER_CASES,
    HypothesisDraw,
    check_batch_norm,
    check_batch_norm_large_mean,
    check_batch_norm_nan_channel,
    check_case,
    check_depthwise_splits,
    check_large_conv,
    check_pool,
    check_pool_bigger,
    nchw_to,
    ops_with,
    rand,
)

with warnings.catch_warnings():  # CuPy's import-time notes about the environment are not failures
    warnings.simplefilter("ignore")
    ok, why = fastconv.cuda_available()
if not ok:
    pytest.skip(
        f"GPU tests need a CUDA GPU with CuPy and fastconv._cuda: {why}", allow_module_level=True
    )
cp = pytest.importorskip("cupy")
harness = pytest.importorskip("fastconv._cuda_harness")

examples = settings(max_examples=40, deadline=None, derandomize=True)
dev, host = cp.asarray, cp.asnumpy


@pytest.mark.parametrize("op", ops_with())
@examples
@given(data=st.data())
def test_op_matches_reference(op, data):
    check_case(op, op.sample(HypothesisDraw(data), CPU_LIMITS), dev, host)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("n,cin,cout,hw,k,stride,groups", LARGE_CONV_CASES)
def test_conv2d_large_tiles(layout, n, cin, cout, hw, k, stride, groups):
    check_large_conv(dev, host, layout, n, cin, cout, hw, k, stride, groups)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize(
    "n,cin,cout,hw,k,stride,groups",
    [
        (8, 64, 128, 32, 3, 1, 1),
        (16, 256, 512, 8, 3, 1, 1),
        (8, 128, 256, 16, 1, 1, 1),
        (8, 64, 128, 32, 3, 2, 1),
        (8, 32, 64, 32, 5, 1, 1),
    ],
)
def test_conv2d_cifar_sized(layout, n, cin, cout, hw, k, stride, groups):
    check_large_conv(dev, host, layout, n, cin, cout, hw, k, stride, groups)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("channels,mult,hw,stride", DEPTHWISE_SPLIT_CASES)
def test_depthwise_weight_splits(layout, channels, mult, hw, stride):
    check_depthwise_splits(dev, host, layout, channels, mult, hw, stride)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kind,kernel,stride,padding", POOL_BIGGER_CASES)
def test_pooling_bigger(layout, kind, kernel, stride, padding):
    check_pool_bigger(dev, host, layout, kind, kernel, stride, padding)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kind,kernel,stride", [("max", 2, None), ("max", 3, 2), ("avg", 2, None)])
def test_pooling_cifar_sized(layout, kind, kernel, stride):
    rng = np.random.default_rng(5)
    x = nchw_to(rand(rng, 4, 70, 32, 32), layout)
    check_pool(dev, host, kind, x, kernel, dict(stride=stride, layout=layout), rng)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize(
    "shape,axis", BATCH_NORM_SPLIT_CASES + [((128, 16, 16, 64), -1), ((128, 64, 16, 16), 1)]
)  # CIFAR-sized: many splits
def test_batch_norm_splits(shape, axis, activation):
    check_batch_norm(dev, host, shape, axis, activation != "relu", activation, len(shape))


@pytest.mark.parametrize("shape,axis", BATCH_NORM_SPLIT_CASES)
def test_batch_norm_nan_stays_in_its_channel(shape, axis):
    check_batch_norm_nan_channel(dev, host, shape, axis)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_batch_norm_variance_survives_a_large_mean(layout):
    check_batch_norm_large_mean(dev, host, layout)


def test_batch_norm_bit_identical_runs():
    rng = np.random.default_rng(4)
    x, dy = dev(rand(rng, 64, 16, 16, 32)), dev(rand(rng, 64, 16, 16, 32))
    runs = []
    for _ in range(2):
        y, mean, var = fastconv.batch_norm(x, activation="gelu")
        runs.append(
            (y, mean, var) + fastconv.batch_norm_backward(dy, x, mean, var, activation="gelu")
        )
    for a, b in zip(*runs):
        assert cp.array_equal(a, b)


def test_results_are_cupy_on_the_input_device():
    x, w = cp.ones((1, 2, 5, 5), cp.float32), cp.ones((3, 2, 3, 3), cp.float32)
    y = fastconv.conv2d(x, w)
    assert isinstance(y, cp.ndarray) and y.device.id == x.device.id
    assert float(y[0, 0, 0, 0]) == 18.0


def test_bit_identical_runs():
    """No atomics: the same inputs give the same bits, gradients included."""
    rng = np.random.default_rng(3)
    x, w, dy = (
        dev(rand(rng, 16, 32, 16, 16)),
        dev(rand(rng, 48, 32, 3, 3)),
        dev(rand(rng, 16, 48, 16, 16)),
    )
    first = fastconv.conv2d_backward(dy, x, w, padding=1)
    second = fastconv.conv2d_backward(dy, x, w, padding=1)
    for a, b in zip(first, second):
        assert cp.array_equal(a, b)


def test_runs_on_the_current_stream():
    """Inputs written on a busy non-blocking stream after a long job, the op queued there, and
    only that stream synchronised: a kernel on any other stream would read x before it is
    written."""
    rng = np.random.default_rng(6)
    x_host = rand(rng, 64, 32, 32, 32)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        busy = cp.ones((4096, 4096), cp.float32)
        for _ in range(8):
            busy = busy @ busy / 4096
        x = cp.zeros(x_host.shape, cp.float32)
        x.set(x_host, stream=stream)
        y = fastconv.max_pool2d(x, 2)
        w = dev(rand(rng, 16, 32, 3, 3))
        z = fastconv.conv2d(x, w, padding=1)
    stream.synchronize()
    np.testing.assert_array_equal(host(y), fastconv.max_pool2d(x_host, 2))
    np.testing.assert_allclose(
        host(z), fastconv.conv2d(x_host, host(w), padding=1), rtol=1e-4, atol=1e-3
    )


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kind,kernel,stride,padding", POOL_BIGGER_CASES)
def test_pooling_bits_equal_the_harness(layout, kind, kernel, stride, padding):
    """The GPU adds in the harness's order: max/min pick the same cells and sums and their
    gradients give the same bits. (Convolutions are not compared bit for bit: nvcc contracts
    their multiply-adds into FMAs, g++ under the harness does not.)"""
    rng = np.random.default_rng(12)
    x = nchw_to(rng.integers(-2, 3, size=(2, 37, 17, 16)).astype(np.float32), layout)
    kw = dict(stride=stride, padding=padding, layout=layout)
    y = getattr(fastconv, f"{kind}_pool2d")(dev(x), kernel, **kw)
    dy = rand(rng, *y.shape)
    dx = getattr(fastconv, f"{kind}_pool2d_backward")(dev(dy), dev(x), kernel, **kw)
    g = _args.pool_geometry(x.shape, kernel, kind=kind, **kw)
    y_h, dx_h = np.empty(g.y_shape, np.float32), np.empty_like(x)
    harness.pool2d_forward(x, y_h, g)
    harness.pool2d_backward(dy, x, dx_h, g)
    np.testing.assert_array_equal(host(y), y_h)
    np.testing.assert_array_equal(host(dx), dx_h)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 2, 1), (16, 3, 0)])
def test_max_pool_argmax_bits_equal_the_harness(layout, kernel, stride, padding):
    """The saved winners and the backward from them: the same bytes and bits as the harness."""
    rng = np.random.default_rng(13)
    x = nchw_to(rng.integers(-2, 3, size=(2, 37, 19, 18)).astype(np.float32), layout)
    kw = dict(stride=stride, padding=padding, layout=layout)
    y, argmax = fastconv.max_pool2d_with_argmax(dev(x), kernel, **kw)
    dy = rand(rng, *y.shape)
    size = x.shape[1:3] if layout == "NHWC" else x.shape[2:4]
    dx = fastconv.max_pool2d_backward_argmax(dev(dy), argmax, size, kernel, **kw)
    g = _args.pool_geometry(x.shape, kernel, kind="max", **kw)
    y_h, argmax_h, dx_h = (
        np.empty(g.y_shape, np.float32),
        np.empty(g.y_shape, np.uint8),
        np.empty_like(x),
    )
    harness.pool2d_forward_winners(x, y_h, argmax_h, g)
    harness.pool2d_backward_winners(dy, argmax_h, dx_h, g)
    np.testing.assert_array_equal(host(y), y_h)
    np.testing.assert_array_equal(host(argmax), argmax_h)
    np.testing.assert_array_equal(host(dx), dx_h)


def test_torch_cuda_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here")
    rng = np.random.default_rng(8)
    x, w = rand(rng, 2, 3, 7, 7), rand(rng, 4, 3, 3, 3)
    y = fastconv.conv2d(torch.from_numpy(x).cuda(), torch.from_numpy(w).cuda(), padding=1)
    assert isinstance(y, cp.ndarray)
    np.testing.assert_allclose(host(y), fastconv.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)


def test_mixing_numpy_and_cupy_raises():
    with pytest.raises(TypeError, match="same device"):
        fastconv.conv2d(np.ones((1, 1, 3, 3), np.float32), cp.ones((1, 1, 1, 1), cp.float32))


def test_empty_batch():
    x, w = cp.zeros((0, 3, 5, 5), cp.float32), cp.ones((4, 3, 3, 3), cp.float32)
    y = fastconv.conv2d(x, w)
    dx, dw, db = fastconv.conv2d_backward(y, x, w)
    assert y.shape == (0, 4, 3, 3) and dx.shape == x.shape
    assert not bool(dw.any()) and not bool(db.any())


def test_wrong_dtype_is_rejected_before_the_kernel():
    with pytest.raises(TypeError, match="float32"):
        fastconv.max_pool2d(cp.ones((1, 1, 4, 4), cp.float64), 2)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_an_infinite_weight_reaches_only_its_real_terms_in_dx(layout):
    x = nchw_to(np.ones((1, 16, 6, 6), np.float32), layout)
    w = np.ones((4, 16, 3, 3), np.float32)
    w[1, 0, 0, 0] = np.inf
    dy = nchw_to(np.ones((1, 4, 6, 6), np.float32), layout)
    dx = host(fastconv.conv2d_backward(dev(dy), dev(x), dev(w), padding=1, layout=layout)[0])
    want = fastconv.reference.conv2d_backward(dy, x, w, padding=1, layout=layout)[0]
    assert not np.isnan(dx).any()
    np.testing.assert_array_equal(np.isinf(dx), np.isinf(want))

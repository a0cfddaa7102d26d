"""Every CUDA kernel, run on the CPU by the execution harness (csrc/cuda/harness.h), against
the NumPy reference.

fastconv._cuda_harness is the .cu sources compiled with g++: blocks run one after another,
each block's threads are fibers with a real __syncthreads barrier. The `harness` fixture
routes the functional API's NumPy calls to it, so these tests drive the CUDA kernels through
the same public entry points and argument handling as users do. This checks indexing, tile
mapping, bounds, split reductions and barrier placement; not timing or the GPU memory model.
"""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _args, _backend
from fastconv import reference as ref

from op_cases import (
    ACTIVATIONS,
    BATCH_NORM_SPLIT_CASES,
    DEPTHWISE_SPLIT_CASES,
    HARNESS_LIMITS,
    LARGE_CONV_CASES,
    POOL_BIGGER_CASES,
    POOL_KINDS,
    HypothesisDraw,
    check_batch_norm,
    check_batch_norm_large_mean,
    check_batch_norm_nan_channel,
    check_case,
    check_depthwise_splits,
    check_large_conv,
    check_pool_bigger,
    examples,
    nchw_to,
    ops_with,
    rand,
    same,
)

harness_module = pytest.importorskip("fastconv._cuda_harness")
harness_examples = settings(max_examples=examples(30))


@pytest.fixture(scope="module")
def harness():
    """NumPy calls of the functional API run the CUDA kernels under the harness."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_backend, "CPU", _backend.Backend(harness_module, np))
        yield


@pytest.mark.parametrize("op", ops_with())
@harness_examples
@given(data=st.data())
def test_op_matches_reference(harness, op, data):
    check_case(op, op.sample(HypothesisDraw(data), HARNESS_LIMITS))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("n,cin,cout,hw,k,stride,groups", LARGE_CONV_CASES)
def test_conv2d_large_tiles(harness, layout, n, cin, cout, hw, k, stride, groups):
    check_large_conv(same, same, layout, n, cin, cout, hw, k, stride, groups)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("channels,mult,hw,stride", DEPTHWISE_SPLIT_CASES)
def test_depthwise_weight_splits(harness, layout, channels, mult, hw, stride):
    check_depthwise_splits(same, same, layout, channels, mult, hw, stride)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kind,kernel,stride,padding", POOL_BIGGER_CASES)
def test_pooling_bigger(harness, layout, kind, kernel, stride, padding):
    check_pool_bigger(same, same, layout, kind, kernel, stride, padding)


# NHWC averages are left out: the CPU multiplies by the reciprocal there, the GPU divides.
BIT_EXACT_POOLS = (
    [(kind, 3, "NCHW") for kind in POOL_KINDS]
    + [(kind, 3, "NHWC") for kind in ("max", "min", "sum")]
    + [("max", (8, 9), "NCHW"), ("min", (9, 8), "NHWC")]
)  # wide windows


@pytest.mark.parametrize("kind,kernel,layout", BIT_EXACT_POOLS)
def test_pooling_bit_exact_with_cpu_kernels(kind, kernel, layout):
    """Same windows and the same first-extreme / NaN rules as fastconv._cpu: bit for bit for
    max/min, to rounding for the sums."""
    rng = np.random.default_rng(4)
    x = rng.integers(-2, 3, size=(2, 3, 19, 18)).astype(np.float32)
    x[0, 0, 2:5, 3:5] = np.nan
    x = nchw_to(x, layout)
    g = _args.pool_geometry(x.shape, kernel, stride=2, padding=1, layout=layout, kind=kind)
    dy = rand(rng, *g.y_shape)
    results = []
    for module in (fastconv._cpu, harness_module):
        y, dx = np.empty(g.y_shape, np.float32), np.empty_like(x)
        module.pool2d_forward(x, y, g)
        module.pool2d_backward(dy, x, dx, g)
        results.append((y, dx))
    for got, want in zip(*results):
        if kind in ("max", "min"):  # the same winner: equal bits
            np.testing.assert_array_equal(got, want)
        else:  # sums in another order may differ in the last bit
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape,axis", BATCH_NORM_SPLIT_CASES)
def test_batch_norm_splits(harness, shape, axis, activation):
    check_batch_norm(same, same, shape, axis, activation != "relu", activation, seed=len(shape))


@pytest.mark.parametrize("shape,axis", BATCH_NORM_SPLIT_CASES)
def test_batch_norm_nan_stays_in_its_channel(harness, shape, axis):
    check_batch_norm_nan_channel(same, same, shape, axis)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_batch_norm_variance_survives_a_large_mean(harness, layout):
    check_batch_norm_large_mean(same, same, layout)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape,axis", BATCH_NORM_SPLIT_CASES[:2])
def test_batch_norm_agrees_with_cpu_kernels(shape, axis, activation):
    """The formulas are the CPU kernels' (batch_norm_math.h): only the order of the sums
    differs, so the results agree to a few float32 roundings, far closer than to the
    float64 reference."""
    rng = np.random.default_rng(6)
    x = (rand(rng, *shape) + 3).astype(np.float32)
    c = shape[axis]
    gamma, beta, dy = rand(rng, c), rand(rng, c), rand(rng, *shape)
    g = _args.norm_geometry(shape, axis, 1e-3, activation, "batch_norm")
    results = []
    for module in (fastconv._cpu, harness_module):
        y, mean, var = np.empty_like(x), np.empty(c, np.float32), np.empty(c, np.float32)
        module.batch_norm_forward(x, gamma, beta, y, mean, var, g)
        dx, dgamma, dbeta = np.empty_like(x), np.empty(c, np.float32), np.empty(c, np.float32)
        module.batch_norm_backward(dy, x, mean, var, gamma, beta, dx, dgamma, dbeta, g)
        results.append((y, mean, var, dx, dgamma, dbeta))
    eps = np.finfo(np.float32).eps
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=0, atol=16 * eps * np.abs(want).max())


def test_max_pool_first_max_wins_and_nan(harness):
    x = np.array([[1, 5, 5, 0], [5, 2, 3, 4], [0, 0, 9, 9], [0, np.nan, 9, 9]], np.float32)[
        None, None
    ]
    y = fastconv.max_pool2d(x, 2)
    np.testing.assert_array_equal(y[0, 0], [[5, 5], [np.nan, 9]])
    dx = fastconv.max_pool2d_backward(np.ones_like(y), x, 2)
    expected = np.zeros((4, 4), np.float32)
    expected[0, 1] = expected[0, 2] = expected[3, 1] = expected[2, 2] = 1
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_empty_batch(harness):
    x, w = np.zeros((0, 3, 5, 5), np.float32), np.ones((4, 3, 3, 3), np.float32)
    y = fastconv.conv2d(x, w)
    dx, dw, db = fastconv.conv2d_backward(y, x, w)
    assert y.shape == (0, 4, 3, 3) and dx.shape == x.shape and not dw.any() and not db.any()
    assert not fastconv.conv2d_backward(y, x, w, need_dbias=False)[1].any()


def test_harness_rejects_bad_buffers():
    """The harness module re-checks buffers like fastconv._cpu does."""
    x, w = np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 1, 3, 3), np.float32)
    g = _args.conv_geometry(
        x.shape, w.shape, stride=1, padding=0, dilation=1, groups=1, layout="NCHW"
    )
    with pytest.raises(ValueError, match="elements"):
        harness_module.conv2d_forward(x, w, None, np.zeros((1, 1, 3, 3), np.float32), g)
    with pytest.raises(TypeError, match="float32"):
        harness_module.conv2d_forward(
            x.astype(np.float64), w, None, np.zeros((1, 1, 2, 2), np.float32), g
        )
    x = np.zeros((4, 3), np.float32)
    norm = _args.norm_geometry(x.shape, -1, 1e-3, None, "test")
    with pytest.raises(ValueError, match="mean has 2 elements"):
        harness_module.batch_norm_forward(
            x, None, None, np.zeros_like(x), np.zeros(2, np.float32), np.zeros(3, np.float32), norm
        )
    with pytest.raises(ValueError, match="geometry"):
        harness_module.batch_norm_inference(
            x, x[0], x[0], None, None, np.zeros_like(x), replace(norm, channels=0)
        )


def test_fixture_routes_to_the_harness(harness):
    """Guards the other tests: NumPy calls really reach the harness module."""
    rng = np.random.default_rng(0)
    x, w = rand(rng, 1, 2, 6, 6), rand(rng, 3, 2, 3, 3)
    assert _backend.resolve(x).kernels is harness_module
    y = fastconv.conv2d(x, w, padding=1)
    np.testing.assert_allclose(y, ref.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-5)


def test_harness_barrier_is_real():
    """With __syncthreads every thread sees its neighbour's value; without it, the harness
    lets a thread run ahead and read a stale slot, so a missing barrier fails tests."""
    blocks, threads = 3, 64
    expected = [b * threads + (t + 1) % threads for b in range(blocks) for t in range(threads)]
    assert harness_module.selftest_neighbour_exchange(blocks, True) == expected
    assert harness_module.selftest_neighbour_exchange(blocks, False) != expected


def test_harness_reports_barrier_divergence():
    with pytest.raises(RuntimeError, match="barrier divergence"):
        harness_module.selftest_divergent_barrier()


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_an_infinite_weight_reaches_only_its_real_terms_in_dx(harness, layout):
    """The implicit GEMM multiplies the zeros it gathers outside dy by every weight; with an
    infinite weight the direct fallback must give the true sum (Inf where a real term has
    it, no NaN), as the reference computes it."""
    x = nchw_to(np.ones((1, 16, 6, 6), np.float32), layout)
    w = np.ones((4, 16, 3, 3), np.float32)
    w[1, 0, 0, 0] = np.inf
    dy = nchw_to(np.ones((1, 4, 6, 6), np.float32), layout)
    dx = fastconv.conv2d_backward(dy, x, w, padding=1, layout=layout)[0]
    want = ref.conv2d_backward(dy, x, w, padding=1, layout=layout)[0]
    assert not np.isnan(dx).any()
    np.testing.assert_array_equal(np.isinf(dx), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(dx[finite], want[finite], rtol=1e-5)

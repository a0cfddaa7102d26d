"""NHWC outputs of 4 MiB and more (depthwise forward and dx, non-overlapping pooling) are
written with streaming stores, which bypass the caches. They must hold what plain stores
write: the same op over slices of the batch, each output below that size, gives the same
bits, with every instruction set."""

import numpy as np
import pytest

import fastconv.functional as F

STREAM_BYTES = 4 << 20
BATCH, SIDE, CHANNELS = 8, 32, 144  # 4.7 MiB per activation; 144 = 9 AVX-512 vectors


def _activation(seed, shape=(BATCH, SIDE, SIDE, CHANNELS)):
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    assert x.nbytes >= STREAM_BYTES and x.nbytes // BATCH < STREAM_BYTES
    return x


def _per_image(fn, *batched):
    return np.concatenate([fn(*(a[i : i + 1] for a in batched)) for i in range(BATCH)])


def test_depthwise_forward_and_input_gradient(isa):
    x, dy = _activation(0), _activation(1)
    w = np.random.default_rng(2).standard_normal((CHANNELS, 1, 3, 3), dtype=np.float32)

    def forward(x):
        return F.depthwise_conv2d(x, w, padding=1, layout="NHWC")

    def input_gradient(dy, x):
        return F.depthwise_conv2d_backward(dy, x, w, padding=1, layout="NHWC", need_dw=False)[0]

    np.testing.assert_array_equal(forward(x), _per_image(forward, x))
    np.testing.assert_array_equal(input_gradient(dy, x), _per_image(input_gradient, dy, x))


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling_forward_and_backward(isa, kind):
    # 2x2 stride 2 (windows that do not overlap) on a 4x size so that y is 4 MiB too
    x = _activation(3, (BATCH, 2 * SIDE, 2 * SIDE, CHANNELS))
    x[0, :2, :2] = 1.0  # ties: the first of equal values takes the gradient
    pool = getattr(F, f"{kind}_pool2d")
    pool_backward = getattr(F, f"{kind}_pool2d_backward")
    dy = np.random.default_rng(4).standard_normal(pool(x, 2, layout="NHWC").shape, np.float32)

    def forward(x):
        return pool(x, 2, layout="NHWC")

    def backward(dy, x):
        return pool_backward(dy, x, 2, layout="NHWC")

    np.testing.assert_array_equal(forward(x), _per_image(forward, x))
    np.testing.assert_array_equal(backward(dy, x), _per_image(backward, dy, x))

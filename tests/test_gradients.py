"""Finite-difference checks of every backward: the reference in float64 (tight), and the
native kernels in float32 through directional derivatives (the ops are linear or
piecewise linear, so central differences are exact up to rounding)."""

import numpy as np
import pytest

import fastconv
from fastconv import reference as ref

CONV = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2))


def directional(f, args, i, v, eps):
    """d/dt f(args with args[i] + t v) at t = 0, by central differences."""
    plus = list(args)
    minus = list(args)
    plus[i] = args[i] + eps * v
    minus[i] = args[i] - eps * v
    return (f(*plus) - f(*minus)) / (2 * eps)


def check(module, dtype, forward, backward, args, n_params, layout, eps, tol, **kw):
    """Compare <grad_i, v> with the directional derivative of L = sum(forward(args) * r)."""
    rng = np.random.default_rng(0)
    args = [a.astype(dtype) for a in args]
    y = getattr(module, forward)(*args, layout=layout, **kw)
    r = rng.standard_normal(y.shape).astype(dtype)
    grads = getattr(module, backward)(r, *args[:n_params], layout=layout, **kw)
    grads = grads if isinstance(grads, tuple) else (grads,)

    def loss(*a):
        return float(
            np.sum(getattr(module, forward)(*a, layout=layout, **kw).astype(np.float64) * r)
        )

    for i, grad in enumerate(grads):
        index = i if i < n_params else len(args) - 1
        target = args[index]
        v = rng.standard_normal(target.shape).astype(dtype)
        numeric = directional(loss, args, index, v, eps)
        analytic = float(np.sum(grad.astype(np.float64) * v))
        assert abs(numeric - analytic) <= tol * (1 + abs(analytic)), (forward, i, numeric, analytic)


def inputs(layout, cin=4, cout=6, groups=2, k=(3, 2), m=None):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 7, cin) if layout == "NHWC" else (2, cin, 5, 7))
    w = rng.standard_normal((cout, cin // groups, *k))
    return x, w, rng.standard_normal(cout)


CASES = [
    ("conv2d", "conv2d_backward", lambda layout: inputs(layout), 2, dict(CONV, groups=2)),
    # a stem: few input channels, one group (the direct kernels in NHWC)
    ("conv2d", "conv2d_backward", lambda layout: inputs(layout, 3, 5, 1), 2, CONV),
    (
        "depthwise_conv2d",
        "depthwise_conv2d_backward",
        lambda layout: inputs(layout, 4, 8, 4),
        2,
        CONV,
    ),
    (
        "pointwise_conv2d",
        "pointwise_conv2d_backward",
        lambda layout: (
            inputs(layout)[0],
            np.random.default_rng(2).standard_normal((3, 4)),
            np.ones(3),
        ),
        2,
        {},
    ),
]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("forward,backward,make,n_params,kw", CASES)
@pytest.mark.parametrize(
    "module,dtype,eps,tol", [(ref, np.float64, 1e-6, 1e-7), (fastconv, np.float32, 1e-2, 1e-3)]
)
def test_conv_gradients(module, dtype, eps, tol, layout, forward, backward, make, n_params, kw):
    check(module, dtype, forward, backward, list(make(layout)), n_params, layout, eps, tol, **kw)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize(
    "module,dtype,eps,tol", [(ref, np.float64, 1e-6, 1e-7), (fastconv, np.float32, 1e-2, 1e-3)]
)
def test_separable_gradients(module, dtype, eps, tol, layout):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 6, 3) if layout == "NHWC" else (2, 3, 6, 6))
    dw, pw, b = (
        rng.standard_normal((6, 1, 3, 3)),
        rng.standard_normal((5, 6)),
        rng.standard_normal(5),
    )
    check(
        module,
        dtype,
        "separable_conv2d",
        "separable_conv2d_backward",
        [x, dw, pw, b],
        3,
        layout,
        eps,
        tol,
        stride=2,
        padding="same",
    )


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kind", ["max", "min", "avg", "sum"])
@pytest.mark.parametrize(
    "module,dtype,eps,tol", [(ref, np.float64, 1e-6, 1e-7), (fastconv, np.float32, 1e-3, 1e-3)]
)
def test_pool_gradients(module, dtype, eps, tol, layout, kind):
    x = np.random.default_rng(5).standard_normal((2, 3, 7, 6))
    check(
        module,
        dtype,
        f"{kind}_pool2d",
        f"{kind}_pool2d_backward",
        [x],
        1,
        layout,
        eps,
        tol,
        kernel_size=3,
        stride=2,
        padding=1,
    )


@pytest.mark.parametrize(
    "module,dtype,eps,tol", [(ref, np.float64, 1e-6, 1e-7), (fastconv, np.float32, 1e-2, 1e-3)]
)
def test_global_avg_pool_gradient(module, dtype, eps, tol):
    x = np.random.default_rng(6).standard_normal((2, 3, 4, 5))
    check(
        module, dtype, "global_avg_pool2d", "global_avg_pool2d_backward", [x], 1, "NCHW", eps, tol
    )

"""fastconv.batch_norm / batch_norm_backward against the float64 reference, gradient checks,
numerics and argument validation."""

import numpy as np
import pytest

import fastconv
from fastconv import reference as ref

from op_cases import (
    ACTIVATIONS,
    BATCH_NORM_SPLIT_CASES,
    check_batch_norm_large_mean,
    check_batch_norm_nan_channel,
    same,
)
from test_validation import ODD_ARRAYS, ODD_VALUES, call_must_not_crash


def relative_error(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("shape,axis", BATCH_NORM_SPLIT_CASES)
def test_nan_stays_in_its_channel(isa, shape, axis):
    check_batch_norm_nan_channel(same, same, shape, axis)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_large_training_batch_nhwc(isa, activation):
    """The training shape (many NHWC rows, several threads' partial sums)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((96, 15, 15, 32)).astype(np.float32)
    beta = rng.standard_normal(32).astype(np.float32)
    y, mean, var = fastconv.batch_norm(x, beta=beta, activation=activation)
    y_ref, mean_ref, var_ref = ref.batch_norm(
        x.astype(np.float64), beta=beta, activation=activation
    )
    assert relative_error(y, y_ref) < 1e-5 and relative_error(var, var_ref) < 1e-5
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx, dgamma, dbeta = fastconv.batch_norm_backward(
        dy, x, mean, var, beta=beta, activation=activation
    )
    dx_ref, dgamma_ref, dbeta_ref = ref.batch_norm_backward(
        dy.astype(np.float64), x, mean_ref, var_ref, beta=beta, activation=activation
    )
    assert relative_error(dx, dx_ref) < 1e-4
    assert relative_error(dgamma, dgamma_ref) < 1e-4 and relative_error(dbeta, dbeta_ref) < 1e-4


def test_gelu_known_values():
    """GELU(z) = z * Phi(z): Phi(1) = 0.8413447, Phi(-2) = 0.0227501, Phi(6) = 1 - 9.9e-10."""
    z = np.array([[0.0, 1.0, -2.0, 6.0, -6.0, -40.0]], np.float32).repeat(2, axis=0)
    y = fastconv.batch_norm_inference(
        z, np.zeros(6, np.float32), np.ones(6, np.float32), eps=0.0, activation="gelu"
    )
    np.testing.assert_allclose(
        y[0], [0.0, 0.8413447, -2 * 0.0227501, 6.0, -6 * 9.866e-10, 0.0], rtol=2e-6, atol=1e-7
    )
    _, slope = ref._activate(z[0].astype(np.float64), "gelu")  # Phi(z) + z phi(z)
    np.testing.assert_allclose(
        slope[:3], [0.5, 0.8413447461 + 0.2419707245, 0.0227501319 - 2 * 0.0539909665], rtol=1e-8
    )


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_variance_survives_a_large_mean(isa, layout):
    check_batch_norm_large_mean(same, same, layout)


def test_known_values_and_relu_mask():
    x = np.array([[1.0, -2.0], [3.0, 2.0]], np.float32)  # channel 0: mean 2, var 1
    y, mean, var = fastconv.batch_norm(x, eps=0.0, activation="relu")
    np.testing.assert_array_equal(mean, [2.0, 0.0])
    np.testing.assert_array_equal(var, [1.0, 4.0])
    np.testing.assert_array_equal(y, [[0.0, 0.0], [1.0, 1.0]])
    dx, dgamma, dbeta = fastconv.batch_norm_backward(
        np.ones_like(x), x, mean, var, eps=0.0, activation="relu"
    )
    np.testing.assert_array_equal(dbeta, [1.0, 1.0])  # only the unmasked row counts
    np.testing.assert_array_equal(dgamma, [1.0, 1.0])
    np.testing.assert_allclose(dx, [[0.0, 0.0], [0.0, 0.0]], atol=1e-7)
    inf_where_off = np.array([[np.inf, np.inf], [1.0, 1.0]], np.float32)
    dx, _, dbeta = fastconv.batch_norm_backward(
        inf_where_off, x, mean, var, eps=0.0, activation="relu"
    )
    assert np.isfinite(dx).all() and np.array_equal(dbeta, [1.0, 1.0])


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_reference_gradients_by_finite_differences(activation):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3, 4))
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    r = rng.standard_normal(x.shape)

    def loss(x_, gamma_, beta_):
        return float(
            (ref.batch_norm(x_, gamma_, beta_, eps=1e-3, activation=activation)[0] * r).sum()
        )

    y, mean, var = ref.batch_norm(x, gamma, beta, eps=1e-3, activation=activation)
    grads = ref.batch_norm_backward(r, x, mean, var, gamma, beta, eps=1e-3, activation=activation)
    args = [x, gamma, beta]
    for i, grad in enumerate(grads):
        v = rng.standard_normal(args[i].shape)
        plus, minus = list(args), list(args)
        plus[i], minus[i] = args[i] + 1e-6 * v, args[i] - 1e-6 * v
        numeric = (loss(*plus) - loss(*minus)) / 2e-6
        assert abs(numeric - float((grad * v).sum())) < 1e-6 * (1 + abs(numeric))


def test_need_dx_false_skips_dx():
    x = np.random.default_rng(4).standard_normal((4, 3)).astype(np.float32)
    _, mean, var = fastconv.batch_norm(x)
    dx, dgamma, dbeta = fastconv.batch_norm_backward(x, x, mean, var, need_dx=False)
    assert dx is None and dgamma.shape == dbeta.shape == (3,)


X = np.ones((2, 3, 4, 5), np.float32)
C = np.ones(5, np.float32)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: fastconv.batch_norm(X.astype(np.float64)), TypeError, "float32"),
        (lambda: fastconv.batch_norm(X, axis=0), ValueError, "channel axis"),
        (lambda: fastconv.batch_norm(X, axis=4), ValueError, "channel axis"),
        (lambda: fastconv.batch_norm(X, axis=1.0), TypeError, "axis"),
        (lambda: fastconv.batch_norm(X[0, 0, 0]), ValueError, "channel axis"),
        (lambda: fastconv.batch_norm(X[:, :, :, :0]), ValueError, "empty"),
        (lambda: fastconv.batch_norm(X, np.ones(4, np.float32)), ValueError, "gamma"),
        (lambda: fastconv.batch_norm(X, C, C[:, None]), ValueError, "beta"),
        (lambda: fastconv.batch_norm(X, eps=-1.0), ValueError, "eps"),
        (lambda: fastconv.batch_norm(X, eps=float("nan")), ValueError, "eps"),
        (lambda: fastconv.batch_norm(X, eps="1e-3"), TypeError, "eps"),
        (lambda: fastconv.batch_norm(X, activation=1), TypeError, "activation"),
        (lambda: fastconv.batch_norm(X, activation="tanh"), ValueError, "activation"),
        (lambda: fastconv.batch_norm_inference(X, None, C), TypeError, "mean and var"),
        (lambda: fastconv.batch_norm_inference(X, C, C[:4]), ValueError, "var"),
        (lambda: fastconv.batch_norm_backward(X[:1], X, C, C), ValueError, "dy"),
        (lambda: fastconv.batch_norm_backward(X, X, C, C, beta=C[:3]), ValueError, "beta"),
        (
            lambda: fastconv.batch_norm_backward(X, X, C, C, activation="GELU"),
            ValueError,
            "activation",
        ),
        (lambda: fastconv.batch_norm_backward(X, X, C[:2], C), ValueError, "mean"),
        (lambda: fastconv.batch_norm_backward(X, X, C, C, axis=1), ValueError, "mean"),
    ],
)
def test_bad_arguments_raise(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize(
    "fn, base",
    [
        (fastconv.batch_norm, [X]),
        (fastconv.batch_norm_inference, [X, C, C]),
        (fastconv.batch_norm_backward, [X, X, C, C]),
    ],
)
def test_malformed_calls_raise_instead_of_crashing(fn, base):
    for slot in range(len(base)):
        for value in ODD_VALUES + ODD_ARRAYS:
            args = list(base)
            args[slot] = value
            call_must_not_crash(fn, *args)
    for key in ["axis", "eps", "activation", "gamma", "beta"]:
        for value in ODD_VALUES + ODD_ARRAYS:
            call_must_not_crash(fn, *base, **{key: value})


def test_native_layer_rejects_mismatched_buffers():
    from dataclasses import replace

    from fastconv._args import norm_geometry

    mean, var = np.empty(5, np.float32), np.empty(5, np.float32)
    g = norm_geometry(X.shape, -1, 1e-3, None, "test")
    assert (g.outer, g.channels, g.inner) == (24, 5, 1)
    with pytest.raises(ValueError, match="elements"):
        fastconv._cpu.batch_norm_forward(X, None, None, np.empty(3, np.float32), mean, var, g)
    with pytest.raises(ValueError, match="geometry"):
        fastconv._cpu.batch_norm_forward(
            X, None, None, np.empty_like(X), mean, var, replace(g, outer=0)
        )
    with pytest.raises(ValueError, match="activation"):
        fastconv._cpu.batch_norm_inference(
            X, mean, var, None, None, np.empty_like(X), replace(g, activation=3)
        )

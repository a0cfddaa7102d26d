"""fastconv.batch_norm / batch_norm_backward against the float64 reference, gradient checks,
numerics and argument validation."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastconv
from fastconv import reference as ref

from test_validation import ODD_ARRAYS, ODD_VALUES, call_must_not_crash


def relative_error(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


@st.composite
def cases(draw):
    rank = draw(st.integers(2, 4))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=rank, max_size=rank)))
    axis = draw(st.sampled_from([a for a in range(-rank, rank) if a % rank != 0]))
    if np.prod(shape) // shape[axis] < 2:  # one element per channel: a variance of 0
        shape = (2,) + shape[1:]
    return shape, axis, draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 2**31))


@given(cases())
def test_matches_reference(isa, case):
    shape, axis, affine, relu, seed = case
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + rng.uniform(-3, 3)).astype(np.float32)
    c = shape[axis]
    gamma = rng.standard_normal(c).astype(np.float32) if affine else None
    beta = rng.standard_normal(c).astype(np.float32) if affine else None
    y, mean, var = fastconv.batch_norm(x, gamma, beta, axis=axis, eps=1e-5, relu=relu)
    y_ref, mean_ref, var_ref = ref.batch_norm(x.astype(np.float64), gamma, beta, axis=axis,
                                              eps=1e-5, relu=relu)
    x_scale = np.abs(x).max()
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-6, atol=1e-6 * x_scale)
    np.testing.assert_allclose(var, var_ref, rtol=1e-5, atol=1e-6 * x_scale ** 2)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5 * np.abs(y_ref).max())
    dy = rng.standard_normal(shape).astype(np.float32)
    grads = fastconv.batch_norm_backward(dy, x, mean, var, gamma, y=y if relu else None,
                                         axis=axis, eps=1e-5)
    grads_ref = ref.batch_norm_backward(dy.astype(np.float64), x.astype(np.float64), mean_ref,
                                        var_ref, gamma, y=y_ref if relu else None, axis=axis,
                                        eps=1e-5)
    # float32 rounding of the terms that cancel in dx: tolerance scaled by the terms' size
    dy_scale = np.abs(dy).max()
    gain = np.abs(1 if gamma is None else gamma).max() / np.sqrt(var_ref.min() + 1e-5)
    atols = [1e-5 * dy_scale * gain, 1e-5 * dy_scale * x.size, 1e-5 * dy_scale * x.size]
    for got, want, atol in zip(grads, grads_ref, atols):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol)


def test_large_training_batch_nhwc(isa):
    """The training shape (many NHWC rows, several threads' partial sums)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((96, 15, 15, 32)).astype(np.float32)
    y, mean, var = fastconv.batch_norm(x, relu=True)
    y_ref, mean_ref, var_ref = ref.batch_norm(x.astype(np.float64), relu=True)
    assert relative_error(y, y_ref) < 1e-5 and relative_error(var, var_ref) < 1e-5
    dx, dgamma, dbeta = fastconv.batch_norm_backward(x, x, mean, var, y=y)
    dx_ref, dgamma_ref, dbeta_ref = ref.batch_norm_backward(x.astype(np.float64), x, mean_ref,
                                                            var_ref, y=y_ref)
    assert relative_error(dx, dx_ref) < 1e-4
    assert relative_error(dgamma, dgamma_ref) < 1e-4 and relative_error(dbeta, dbeta_ref) < 1e-4


def test_variance_survives_a_large_mean():
    """1000 + small noise: a one-pass sum of squares in float would lose the variance."""
    rng = np.random.default_rng(2)
    noise = rng.standard_normal((64, 8, 8, 4))
    x = (1000 + 0.01 * noise).astype(np.float32)
    _, mean, var = fastconv.batch_norm(x)
    _, mean_ref, var_ref = ref.batch_norm(x.astype(np.float64))
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-7)
    np.testing.assert_allclose(var, var_ref, rtol=1e-3)


def test_known_values_and_relu_mask():
    x = np.array([[1.0, -2.0], [3.0, 2.0]], np.float32)  # channel 0: mean 2, var 1
    y, mean, var = fastconv.batch_norm(x, eps=0.0, relu=True)
    np.testing.assert_array_equal(mean, [2.0, 0.0])
    np.testing.assert_array_equal(var, [1.0, 4.0])
    np.testing.assert_array_equal(y, [[0.0, 0.0], [1.0, 1.0]])
    dx, dgamma, dbeta = fastconv.batch_norm_backward(np.ones_like(x), x, mean, var, y=y, eps=0.0)
    np.testing.assert_array_equal(dbeta, [1.0, 1.0])  # only the unmasked row counts
    np.testing.assert_array_equal(dgamma, [1.0, 1.0])
    np.testing.assert_allclose(dx, [[0.0, 0.0], [0.0, 0.0]], atol=1e-7)


def test_reference_gradients_by_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3, 4))
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    r = rng.standard_normal(x.shape)

    def loss(x_, gamma_, beta_):
        return float((ref.batch_norm(x_, gamma_, beta_, eps=1e-3, relu=True)[0] * r).sum())

    y, mean, var = ref.batch_norm(x, gamma, beta, eps=1e-3, relu=True)
    grads = ref.batch_norm_backward(r, x, mean, var, gamma, y=y, eps=1e-3)
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


@pytest.mark.parametrize("call, exc, match", [
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
    (lambda: fastconv.batch_norm(X, relu=1), TypeError, "relu"),
    (lambda: fastconv.batch_norm_backward(X[:1], X, C, C), ValueError, "dy"),
    (lambda: fastconv.batch_norm_backward(X, X, C, C, y=X[..., :1]), ValueError, "y"),
    (lambda: fastconv.batch_norm_backward(X, X, C[:2], C), ValueError, "mean"),
    (lambda: fastconv.batch_norm_backward(X, X, C, C, axis=1), ValueError, "mean"),
])
def test_bad_arguments_raise(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("fn, base", [
    (fastconv.batch_norm, [X]),
    (fastconv.batch_norm_backward, [X, X, C, C]),
])
def test_malformed_calls_raise_instead_of_crashing(fn, base):
    for slot in range(len(base)):
        for value in ODD_VALUES + ODD_ARRAYS:
            args = list(base)
            args[slot] = value
            call_must_not_crash(fn, *args)
    for key in ["axis", "eps", "relu", "gamma", "beta"] + (["y"] if len(base) > 1 else []):
        if fn is fastconv.batch_norm_backward and key == "beta":
            continue
        for value in ODD_VALUES + ODD_ARRAYS:
            call_must_not_crash(fn, *base, **{key: value})


def test_native_layer_rejects_mismatched_buffers():
    mean, var = np.empty(5, np.float32), np.empty(5, np.float32)
    with pytest.raises(ValueError, match="elements"):
        fastconv._cpu.batch_norm_forward(X, None, None, 1e-3, False, np.empty(3, np.float32),
                                         mean, var, (24, 5, 1))
    with pytest.raises(ValueError, match="geometry"):
        fastconv._cpu.batch_norm_forward(X, None, None, 1e-3, False, np.empty_like(X), mean,
                                         var, (0, 5, 1))

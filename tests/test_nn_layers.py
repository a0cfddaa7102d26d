"""Layer gradients by central finite differences, Keras shape rules and parameter counts."""

import math

import numpy as np
import pytest

from fastconv import nn
from fastconv.nn.activations import get_activation


def _build(layer, input_shape, seed=0):
    layer.name = layer.name or "layer"
    layer.build(input_shape, np.random.default_rng(seed))
    return layer


def _numeric(f, a, idx, eps):
    old = a[idx]
    a[idx] = old + eps
    plus = f()
    a[idx] = old - eps
    minus = f()
    a[idx] = old
    return (plus - minus) / (2 * eps)


def check_gradients(layer, x, *, eps, rtol, atol, points=12, seed=1):
    """Compare backward() with central differences of L = sum(forward(x) * r)."""
    rng = np.random.default_rng(seed)
    layer.need_input_grad = True
    y = layer.forward(x, training=True)
    r = rng.standard_normal(y.shape).astype(x.dtype)
    dx = layer.backward(r.copy())
    grads = dict(layer.grads)

    def loss():
        return float((layer.forward(x, training=True) * r).sum(dtype=np.float64))

    assert set(grads) == (set(layer.params) if layer.trainable else set())
    targets = [("x", x, dx)] + [(k, layer.params[k], grads[k]) for k in grads]
    for name, array, analytic in targets:
        flat_idx = rng.choice(array.size, size=min(points, array.size), replace=False)
        for i in flat_idx:
            idx = np.unravel_index(i, array.shape)
            numeric = _numeric(loss, array, idx, eps)
            assert math.isclose(analytic[idx], numeric, rel_tol=rtol, abs_tol=atol), (
                f"{name}{idx}: analytic {analytic[idx]} vs numeric {numeric}"
            )


KERNEL_LAYERS = [
    (lambda: nn.Conv2D(4, 3, padding="same"), (7, 6, 3)),
    (lambda: nn.Conv2D(4, (3, 2), strides=2, padding="valid", dilation_rate=1), (8, 7, 3)),
    (
        lambda: nn.Conv2D(4, 3, padding="same", dilation_rate=2, data_format="channels_first"),
        (3, 7, 7),
    ),
    (lambda: nn.Conv2D(4, 3, groups=2, padding="same", use_bias=False), (6, 6, 4)),
    (lambda: nn.DepthwiseConv2D(3, depth_multiplier=2, padding="same"), (6, 6, 3)),
    (lambda: nn.SeparableConv2D(5, 3, depth_multiplier=2, strides=2, padding="same"), (7, 7, 3)),
    (lambda: nn.MaxPooling2D(2), (6, 6, 3)),
    (lambda: nn.MaxPooling2D(3, strides=2, padding="same"), (7, 7, 2)),
    (lambda: nn.AveragePooling2D(2, data_format="channels_first"), (2, 6, 6)),
    (lambda: nn.GlobalAveragePooling2D(), (5, 4, 3)),
    (lambda: nn.BatchNormalization(), (3, 4, 5)),
    (lambda: nn.BatchNormalization(axis=1, scale=False), (3, 4, 5)),
    (lambda: nn.BatchNormalization(activation="relu"), (3, 4, 5)),
    (lambda: nn.BatchNormalization(axis=1, activation="relu", trainable=False), (3, 4, 5)),
    (lambda: nn.BatchNormalization(activation="gelu"), (3, 4, 5)),
    (lambda: nn.BatchNormalization(activation="gelu", trainable=False), (3, 4, 5)),
]


def test_separable_backward_from_the_kept_or_a_recomputed_depthwise_output():
    """A training forward keeps the depthwise output for the backward; after an inference
    forward the backward computes it again. The gradients are the same numbers."""
    layer = _build(nn.SeparableConv2D(5, 3, padding="same"), (7, 7, 3))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 7, 7, 3)).astype(np.float32)
    dy = rng.standard_normal((2, 7, 7, 5)).astype(np.float32)
    results = []
    for training in (True, False):
        layer.forward(x, training=training)
        results.append((layer.backward(dy), dict(layer.grads)))
    (dx_kept, kept), (dx_again, again) = results
    np.testing.assert_array_equal(dx_kept, dx_again)
    assert kept.keys() == again.keys() == {"depthwise_kernel", "pointwise_kernel", "bias"}
    for name in kept:
        np.testing.assert_array_equal(kept[name], again[name])


@pytest.mark.parametrize("make, shape", KERNEL_LAYERS)
def test_kernel_layer_gradients(make, shape):
    layer = _build(make(), shape)
    x = np.random.default_rng(2).standard_normal((2, *shape)).astype(np.float32)
    # float32 kernels: eps 1e-2 keeps rounding noise (~1e-7 * |L| / eps) far below tolerance
    check_gradients(layer, x, eps=1e-2, rtol=2e-2, atol=2e-3)


NUMPY_LAYERS = [
    (lambda: nn.Dense(5), (7,)),
    (lambda: nn.Flatten(), (2, 3, 4)),
    (lambda: nn.Scale(0.25), (6,)),
] + [
    (lambda a=a: nn.Activation(a), (3, 5))
    for a in ("relu", "gelu", "gelu_tanh", "sigmoid", "tanh", "softmax")
]


@pytest.mark.parametrize("make, shape", NUMPY_LAYERS)
def test_numpy_layer_gradients_float64(make, shape):
    layer = _build(make(), shape)
    layer.params = {k: v.astype(np.float64) for k, v in layer.params.items()}
    x = np.random.default_rng(3).standard_normal((4, *shape))
    check_gradients(layer, x, eps=1e-6, rtol=1e-5, atol=1e-7)


def test_dropout_gradient_uses_the_forward_mask():
    layer = _build(nn.Dropout(0.5, seed=4), (50,))
    x = np.ones((4, 50), np.float32)
    y = layer.forward(x, training=True)
    assert set(np.unique(y)) == {0.0, 2.0}
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), y)
    np.testing.assert_array_equal(layer.forward(x, training=False), x)


def test_gelu_matches_math_erf():
    x = np.linspace(-6, 6, 101)
    exact = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(get_activation("gelu").forward(x), exact, atol=3e-7)


def test_batchnorm_inference_uses_moving_statistics():
    layer = _build(nn.BatchNormalization(momentum=0.5, epsilon=0.0), (3,))
    x = np.array([[1.0, 2.0, 3.0], [3.0, 6.0, 9.0]], np.float32)
    layer.forward(x, training=True)
    np.testing.assert_allclose(layer.state["moving_mean"], [1.0, 2.0, 3.0])  # 0.5*0 + 0.5*mean
    np.testing.assert_allclose(layer.state["moving_variance"], [1.5, 4.5, 9.5])  # unbiased var
    y = layer.forward(x, training=False)
    np.testing.assert_allclose(y, (x - [1, 2, 3]) / np.sqrt([1.5, 4.5, 9.5]), rtol=1e-6, atol=1e-7)


def test_frozen_batchnorm_runs_in_inference_mode():
    layer = _build(nn.BatchNormalization(trainable=False), (3,))
    layer.state["moving_mean"][:] = [1, 2, 3]
    layer.state["moving_variance"][:] = [4, 4, 4]
    x = np.random.default_rng(5).standard_normal((6, 3)).astype(np.float32)
    np.testing.assert_allclose(
        layer.forward(x, training=True), (x - [1, 2, 3]) / np.sqrt(4.001), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(layer.state["moving_mean"], [1, 2, 3])
    check_gradients(layer, x, eps=1e-2, rtol=2e-3, atol=1e-5)  # linear: no curvature error


def test_keras_output_shapes_and_parameter_counts():
    model = nn.Sequential(
        [
            nn.Conv2D(16, 3, strides=2, padding="same", input_shape=(15, 15, 8)),
            nn.SeparableConv2D(16, 3, padding="same"),
            nn.DepthwiseConv2D(3, depth_multiplier=2),
            nn.GlobalAveragePooling2D(),
            nn.Dense(10, activation="softmax"),
        ]
    ).build()
    shapes = [layer.output_shape for layer in model.layers]
    assert shapes == [(8, 8, 16), (8, 8, 16), (6, 6, 32), (32,), (10,)]
    counts = [layer.count_params() for layer in model.layers]
    # Keras: conv 3*3*8*16+16; separable 3*3*16 + 16*16 + 16; depthwise 3*3*16*2 + 32
    assert counts == [1168, 416, 320, 0, 330]
    text = model.summary(print_fn=lambda s: None)
    assert "Total params: 2,234" in text and "separable_conv2d (SeparableConv2D)" in text


def test_bad_layer_input_is_explained():
    with pytest.raises(ValueError, match="Flatten"):
        nn.Sequential([nn.Dense(3, input_shape=(4, 4, 3))]).build()
    with pytest.raises(ValueError, match="data_format"):
        nn.Conv2D(3, 3, data_format="NHWC")
    with pytest.raises(ValueError, match="unknown activation"):
        nn.Dense(3, activation="swishy")


FROZEN_LAYERS = [
    (lambda t: nn.Conv2D(4, 3, padding="same", trainable=t), (6, 6, 3)),
    (lambda t: nn.DepthwiseConv2D(3, trainable=t), (6, 6, 3)),
    (lambda t: nn.SeparableConv2D(4, 3, trainable=t), (6, 6, 3)),
    (lambda t: nn.Dense(4, trainable=t), (5,)),
]


@pytest.mark.parametrize("make, shape", FROZEN_LAYERS)
def test_frozen_layer_computes_dx_but_no_weight_gradient(make, shape, monkeypatch):
    """A frozen layer between trainable ones passes dx down at the same value and never runs
    the weight-gradient kernel (its cost is skipped, not just its result dropped)."""
    x = np.random.default_rng(6).standard_normal((2, *shape)).astype(np.float32)
    live, frozen = _build(make(True), shape, seed=1), _build(make(False), shape, seed=1)
    dy = np.random.default_rng(7).standard_normal((2, *live.output_shape)).astype(np.float32)
    live.forward(x, training=True)
    dx_live = live.backward(dy)
    assert set(live.grads) == set(live.params)
    from fastconv import _cpu

    def no_weight_gradient(*_args):
        raise AssertionError("a frozen layer ran the weight-gradient kernel")

    monkeypatch.setattr(_cpu, "conv2d_backward_weight", no_weight_gradient)
    frozen.forward(x, training=True)
    np.testing.assert_array_equal(frozen.backward(dy), dx_live)
    assert frozen.grads == {}

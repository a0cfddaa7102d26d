"""Element-wise activations with their derivatives, in the array's own module (NumPy/CuPy).

Each has forward(x) and backward(dy, x, y), given both the input and the output so the
cheaper of the two can be used. 'gelu' is the exact erf form (Keras' default); NumPy has no
erf, so it uses Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, below float32 resolution of
the result). 'gelu_tanh' is the tanh approximation.
"""

from __future__ import annotations

import math

from .._backend import array_module

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _erf(xp, z):
    """erf(z) by Abramowitz & Stegun 7.1.26."""
    a = xp.abs(z)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return xp.sign(z) * (1.0 - poly * xp.exp(-a * a))


class Linear:
    name = "linear"

    def forward(self, x):
        return x

    def backward(self, dy, x, y):
        return dy


class ReLU:
    name = "relu"

    def forward(self, x):
        return array_module(x).maximum(x, 0)

    def backward(self, dy, x, y):
        return dy * (y > 0)


class Sigmoid:
    name = "sigmoid"

    def forward(self, x):
        xp = array_module(x)
        return (0.5 * (xp.tanh(0.5 * x) + 1)).astype(x.dtype, copy=False)

    def backward(self, dy, x, y):
        return dy * y * (1 - y)


class Tanh:
    name = "tanh"

    def forward(self, x):
        return array_module(x).tanh(x)

    def backward(self, dy, x, y):
        return dy * (1 - y * y)


class GELU:
    """x * Phi(x), Phi the standard normal CDF."""

    name = "gelu"

    def forward(self, x):
        xp = array_module(x)
        return (0.5 * x * (1.0 + _erf(xp, x * _INV_SQRT_2))).astype(x.dtype, copy=False)

    def backward(self, dy, x, y):
        xp = array_module(x)
        cdf = 0.5 * (1.0 + _erf(xp, x * _INV_SQRT_2))
        pdf = _INV_SQRT_2PI * xp.exp(-0.5 * x * x)
        return (dy * (cdf + x * pdf)).astype(x.dtype, copy=False)


class GELUTanh:
    name = "gelu_tanh"

    def forward(self, x):
        xp = array_module(x)
        return 0.5 * x * (1.0 + xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))

    def backward(self, dy, x, y):
        xp = array_module(x)
        th = xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))
        inner = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
        return dy * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * inner)


class Softmax:
    """Softmax over the last axis. Sequential hands the loss its input (the logits) instead
    when the loss is cross-entropy, which is both cheaper and exact."""

    name = "softmax"

    def forward(self, x):
        xp = array_module(x)
        e = xp.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def backward(self, dy, x, y):
        return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


ACTIVATIONS = {cls.name: cls for cls in (Linear, ReLU, Sigmoid, Tanh, GELU, GELUTanh, Softmax)}


def get_activation(name):
    """An activation object from a Keras name (or None for None / an object passed through)."""
    if name is None:
        return None
    if not isinstance(name, str):
        return name
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()

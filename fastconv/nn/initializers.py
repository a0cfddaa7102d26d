"""Keras weight initialisers, by the same names and with the same fan rules.

Fans follow Keras: for a conv kernel fan_in = C_in/groups * KH * KW and fan_out = C_out * KH * KW;
for a Dense kernel (in, out) they are in and out. The `*_normal` variance-scaling initialisers
draw from a normal truncated at two standard deviations, rescaled as Keras does.
"""

from __future__ import annotations

import numpy as np

_TRUNCATED_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]


def _fans(shape, kind):
    if kind == "dense":
        return shape[0], shape[1]
    receptive = int(np.prod(shape[2:]))
    return shape[1] * receptive, shape[0] * receptive


def _truncated_normal(rng, shape, std):
    values = rng.standard_normal(shape)
    bad = np.abs(values) > 2
    while bad.any():
        values[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(values) > 2
    return values * std


def _variance_scaling(scale, mode, distribution):
    def init(shape, rng, kind):
        fan_in, fan_out = _fans(shape, kind)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / max(1.0, fan)
        if distribution == "uniform":
            limit = np.sqrt(3.0 * variance)
            return rng.uniform(-limit, limit, shape)
        return _truncated_normal(rng, shape, np.sqrt(variance) / _TRUNCATED_STD)

    return init


INITIALIZERS = {
    "glorot_uniform": _variance_scaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": _variance_scaling(1.0, "fan_avg", "normal"),
    "he_uniform": _variance_scaling(2.0, "fan_in", "uniform"),
    "he_normal": _variance_scaling(2.0, "fan_in", "normal"),
    "lecun_uniform": _variance_scaling(1.0, "fan_in", "uniform"),
    "lecun_normal": _variance_scaling(1.0, "fan_in", "normal"),
    "zeros": lambda shape, _rng, _kind: np.zeros(shape),
    "ones": lambda shape, _rng, _kind: np.ones(shape),
}


def initialize(name, shape, rng, kind="conv"):
    """A float32 array of `shape` drawn by the Keras initialiser `name` (or a callable
    (shape, rng, kind) -> array)."""
    init = name if callable(name) else INITIALIZERS.get(name)
    if init is None:
        raise ValueError(
            f"unknown initializer {name!r}; choose one of {sorted(INITIALIZERS)} "
            f"or pass a callable (shape, rng, kind) -> array"
        )
    return np.asarray(init(tuple(shape), rng, kind), dtype=np.float32)

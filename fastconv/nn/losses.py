"""Softmax cross-entropy on integer labels, with optional label smoothing.

`value_and_grad(logits, labels)` returns the mean loss and its gradient w.r.t. the logits.
Sequential feeds it the logits (the input of a final softmax), which is exact and cheap.
"""

from __future__ import annotations

from .._backend import array_module


class SparseCategoricalCrossentropy:
    """Loss = mean over the batch of -sum_k t_k log softmax(z)_k, where t is the one-hot label
    mixed with the uniform distribution: t = (1 - s) * onehot + s / K."""

    from_logits_only = True

    def __init__(self, label_smoothing=0.0):
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def value_and_grad(self, logits, labels):
        xp = array_module(logits)
        n, k = logits.shape
        labels = xp.asarray(labels).astype(xp.int64, copy=False)
        if labels.shape != (n,) or (n and (labels.min() < 0 or labels.max() >= k)):
            raise ValueError(
                f"labels must be {n} integers in [0, {k}), got shape {tuple(labels.shape)}"
            )
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_sum = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        log_p = shifted - log_sum
        s = self.label_smoothing
        target = xp.full((n, k), s / k, dtype=logits.dtype)
        target[xp.arange(n), labels] += 1 - s
        loss = float(-(target * log_p).sum() / n)
        grad = (xp.exp(log_p) - target) / n
        return loss, grad.astype(logits.dtype, copy=False)

    __call__ = value_and_grad


LOSSES = {
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "categorical_crossentropy": SparseCategoricalCrossentropy,
}


def get(loss):
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(
                f"unknown loss {loss!r}; choose one of {sorted(LOSSES)} or pass "
                f"SparseCategoricalCrossentropy(label_smoothing=...)"
            )
        return LOSSES[loss]()
    return loss

"""Optimisers (SGD with momentum / Nesterov / weight decay, Adam), Lookahead and learning-rate
schedules for fastconv.nn models.

An optimiser updates every trainable weight of a model in place from the gradients its layers
stored during backward: `optimizer.step(model)`. Per-weight options come from the layer's
`lr_scale` dict ({param name: factor}); the weight decay of such a weight is divided by the
same factor, so lr * weight_decay (the decay per step) is unchanged (airbench's BN-bias trick).
All state is a flat {name: array} dict (`state_dict` / `load_state_dict`) for checkpoints.
"""

from __future__ import annotations

import math

import numpy as np

from ._backend import array_module, to_numpy

# ---------------------------------------------------------------------------------------
# Schedules: multipliers of the base learning rate as a function of the step (0-based)


class Constant:
    def __call__(self, _step):
        return 1.0


class OneCycle:
    """Linear warm-up from `start` to 1 over the first `warmup` fraction of `total_steps`,
    then linear decay to `end`."""

    def __init__(self, total_steps, warmup=0.2, start=0.1, end=0.0):
        self.total, self.warmup_steps = max(1, total_steps), max(1, int(warmup * total_steps))
        self.start, self.end = start, end

    def __call__(self, step):
        if step < self.warmup_steps:
            return self.start + (1 - self.start) * step / self.warmup_steps
        frac = min(1.0, (step - self.warmup_steps) / max(1, self.total - self.warmup_steps))
        return 1 + (self.end - 1) * frac


class WarmupCosine:
    """Linear warm-up over `warmup_steps`, then cosine decay to `end` at `total_steps`."""

    def __init__(self, total_steps, warmup_steps=0, end=0.0):
        self.total, self.warmup, self.end = max(1, total_steps), warmup_steps, end

    def __call__(self, step):
        if step < self.warmup:
            return (step + 1) / self.warmup
        frac = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.end + (1 - self.end) * 0.5 * (1 + math.cos(math.pi * frac))


# ---------------------------------------------------------------------------------------


class Optimizer:
    def __init__(self, learning_rate, weight_decay=0.0, schedule=None):
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.schedule = schedule or Constant()
        self.iterations = 0
        self.slots: dict = {}

    @property
    def current_lr(self):
        return self.learning_rate * self.schedule(self.iterations)

    def step(self, model):
        lr = self.current_lr
        for layer, name, value in model.trainable_parameters():
            grad = layer.grads.get(name)
            if grad is None:
                continue
            scale = layer.lr_scale.get(name, 1.0)
            self._update(f"{layer.name}/{name}", value, grad, lr * scale, self.weight_decay / scale)
        self.iterations += 1

    def _slot(self, key, like):
        if key not in self.slots:
            self.slots[key] = array_module(like).zeros_like(like)
        return self.slots[key]

    def state_dict(self):
        state = {f"slot/{k}": to_numpy(v) for k, v in self.slots.items()}
        state["iterations"] = np.array(self.iterations)
        return state

    def load_state_dict(self, state):
        self.iterations = int(state["iterations"])
        self.slots = {k[5:]: np.array(v) for k, v in state.items() if k.startswith("slot/")}


class SGD(Optimizer):
    """PyTorch's SGD: g = grad + wd * w; buf = momentum * buf + g;
    w -= lr * (g + momentum * buf if nesterov else buf)."""

    def __init__(
        self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, schedule=None
    ):
        super().__init__(learning_rate, weight_decay, schedule)
        if nesterov and momentum <= 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.momentum, self.nesterov = momentum, nesterov

    def _update(self, key, w, grad, lr, wd):
        g = grad + wd * w if wd else grad
        if self.momentum:
            buf = self._slot(f"momentum/{key}", w)
            buf *= self.momentum
            buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        w -= lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; weight_decay is L2 added to the gradient,
    or decoupled (AdamW) when decoupled=True."""

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        weight_decay=0.0,
        decoupled=False,
        schedule=None,
    ):
        super().__init__(learning_rate, weight_decay, schedule)
        self.beta_1, self.beta_2, self.epsilon, self.decoupled = beta_1, beta_2, epsilon, decoupled

    def _update(self, key, w, grad, lr, wd):
        if wd and not self.decoupled:
            grad = grad + wd * w
        m = self._slot(f"m/{key}", w)
        v = self._slot(f"v/{key}", w)
        m *= self.beta_1
        m += (1 - self.beta_1) * grad
        v *= self.beta_2
        v += (1 - self.beta_2) * grad * grad
        t = self.iterations + 1
        step = lr * math.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)
        if wd and self.decoupled:
            w -= lr * wd * w
        w -= step * m / (array_module(w).sqrt(v) + self.epsilon)


class Lookahead:
    """Lookahead (Zhang et al. 2019): every k steps the slow weights move `alpha` of the way
    to the fast ones and the fast weights restart from there. `alpha` may be a function of
    the step count, e.g. airbench_alpha(total_steps). With include_state=True the trainable
    layers' state (BatchNormalization's moving statistics) is averaged alike, as airbench
    does, so that the statistics match the averaged weights they normalise."""

    def __init__(self, optimizer, k=5, alpha=0.5, include_state=False):
        self.optimizer, self.k, self.alpha = optimizer, k, alpha
        self.include_state = include_state
        self.slow: dict = {}

    def __getattr__(self, name):  # learning_rate, schedule, current_lr, iterations...
        return getattr(self.__dict__["optimizer"], name)

    def _averaged(self, model):
        for layer, name, value in model.trainable_parameters():
            yield f"{layer.name}/{name}", value
        if self.include_state:
            for layer in model.running_layers():
                if layer.trainable:
                    for name, value in layer.state.items():
                        yield f"{layer.name}/state/{name}", value

    def step(self, model):
        if not self.slow:
            self.slow = {key: value.copy() for key, value in self._averaged(model)}
        self.optimizer.step(model)
        if self.optimizer.iterations % self.k == 0:
            step = self.optimizer.iterations
            alpha = self.alpha(step) if callable(self.alpha) else self.alpha
            for key, value in self._averaged(model):
                slow = self.slow[key]
                slow += alpha * (value - slow)
                value[...] = slow

    def state_dict(self):
        return {
            **self.optimizer.state_dict(),
            **{f"slow/{k}": to_numpy(v) for k, v in self.slow.items()},
        }

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state)
        self.slow = {k[5:]: np.array(v) for k, v in state.items() if k.startswith("slow/")}


def airbench_alpha(total_steps):
    """airbench's schedule for Lookahead: the fast weights count fully early on (alpha 1,
    no averaging) and ever less towards the end (alpha 1 - 0.95^5 (step/total)^3), so the
    final weights average the last, low-learning-rate stretch."""
    return lambda step: 1 - 0.95**5 * min(step / max(total_steps, 1), 1.0) ** 3


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def get(optimizer):
    if isinstance(optimizer, str):
        if optimizer.lower() not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {optimizer!r}; choose 'sgd' or 'adam' or pass "
                f"an instance such as SGD(0.1, momentum=0.9, nesterov=True)"
            )
        return OPTIMIZERS[optimizer.lower()]()
    return optimizer

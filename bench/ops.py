"""Callables that run one Case through fastconv, the NumPy reference or PyTorch.

Inputs are drawn once in NCHW and converted per layout outside the timed call. Every runner
returns its outputs as a list of NCHW NumPy arrays in one order (forward: y; backward: dx,
then the parameter gradients in argument order), so any two implementations can be compared.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cases import Case

_FUNCTION = {"conv": "conv2d", "pointwise": "pointwise_conv2d", "depthwise": "depthwise_conv2d",
             "separable": "separable_conv2d", "maxpool": "max_pool2d", "avgpool": "avg_pool2d",
             "globalavgpool": "global_avg_pool2d"}


@dataclass
class Inputs:
    """NCHW activations and the layout-free parameters (weights, then bias) of one case."""
    x: np.ndarray
    params: list
    dy: np.ndarray


def _param_shapes(case: Case):
    c_in, c_out, k = case.c_in, case.c_out, case.k
    return {"conv": [(c_out, c_in, k, k), (c_out,)],
            "pointwise": [(c_out, c_in), (c_out,)],
            "depthwise": [(c_out, 1, k, k), (c_out,)],
            "separable": [(c_in, 1, k, k), (c_out, c_in), (c_out,)]}.get(case.kind, [])


def y_shape(case: Case):
    if case.kind == "globalavgpool":
        return (case.n, case.c_out)
    return (case.n, case.c_out, case.out_size, case.out_size)


def make_inputs(case: Case, seed: int = 0) -> Inputs:
    rng = np.random.default_rng(seed)
    draw = lambda shape: rng.standard_normal(shape, dtype=np.float32)
    return Inputs(draw((case.n, case.c_in, case.size, case.size)),
                  [draw(shape) for shape in _param_shapes(case)], draw(y_shape(case)))


def to_layout(a, layout):
    """NCHW -> layout for 4-D activations; anything else is returned as is."""
    if layout == "NHWC" and a is not None and a.ndim == 4:
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1))
    return a


def to_nchw(a, layout):
    return a.transpose(0, 3, 1, 2) if layout == "NHWC" and a.ndim == 4 else a


def _numpy_call(lib, case: Case, pass_: str, inputs: Inputs, layout: str):
    """(function, args, kwargs) of `lib` (fastconv or fastconv.reference) for one case."""
    name = _FUNCTION[case.kind] + ("_backward" if pass_ == "bwd" else "")
    x, dy = to_layout(inputs.x, layout), to_layout(inputs.dy, layout)
    weights = inputs.params[:-1]  # all but the bias
    if pass_ == "fwd":
        args = [x, *inputs.params]
    else:
        args = [dy, x, *weights] if weights else [dy, x]
    kwargs = {"layout": layout}
    if case.kind in ("conv", "depthwise", "separable"):
        kwargs.update(stride=case.stride, padding=case.pad)
    elif case.kind in ("maxpool", "avgpool"):
        args.append(case.k)
        kwargs.update(stride=case.stride, padding=case.pad)
    return getattr(lib, name), args, kwargs


def numpy_runner(lib, case: Case, pass_: str, inputs: Inputs, layout: str):
    """A no-argument callable running the op, and a function turning its result into the
    comparable NCHW outputs."""
    fn, args, kwargs = _numpy_call(lib, case, pass_, inputs, layout)

    def outputs(result):
        first, *params = result if isinstance(result, tuple) else (result,)
        return [np.asarray(to_nchw(first, layout)), *params]  # y or dx, then parameters
    return (lambda: fn(*args, **kwargs)), outputs


def _torch_forward(case: Case, F):
    """f(x, *params) in PyTorch; pointwise weights come in as (out, in, 1, 1)."""
    if case.kind in ("conv", "pointwise"):
        return lambda x, w, b: F.conv2d(x, w, b, case.stride, case.pad)
    if case.kind == "depthwise":
        return lambda x, w, b: F.conv2d(x, w, b, case.stride, case.pad, groups=case.c_in)
    if case.kind == "separable":
        return lambda x, dw, pw, b: F.conv2d(
            F.conv2d(x, dw, None, case.stride, case.pad, groups=case.c_in), pw, b)
    if case.kind == "maxpool":
        return lambda x: F.max_pool2d(x, case.k, case.stride, case.pad)
    if case.kind == "avgpool":
        return lambda x: F.avg_pool2d(x, case.k, case.stride, case.pad)
    return lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1)


def torch_runner(case: Case, pass_: str, inputs: Inputs, channels_last: bool):
    """Like numpy_runner, for PyTorch in NCHW or channels_last. The backward is autograd of
    the op over a graph built once outside the timed call, so only the backward is timed."""
    import torch
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def tensor(a):
        t = torch.from_numpy(a)
        if t.ndim == 2 and case.kind in ("pointwise", "separable"):
            t = t[:, :, None, None]  # (out, in) pointwise weights
        return t.clone(memory_format=memory_format) if t.ndim == 4 else t.clone()

    forward = _torch_forward(case, torch.nn.functional)
    leaves = [tensor(inputs.x)] + [tensor(p) for p in inputs.params]
    if pass_ == "fwd":
        def run():
            with torch.no_grad():
                return (forward(*leaves),)
    else:
        for leaf in leaves:
            leaf.requires_grad_(True)
        y = forward(*leaves)
        dy = tensor(inputs.dy)
        run = lambda: torch.autograd.grad(y, leaves, dy, retain_graph=True)

    def outputs(result):
        shapes = [inputs.x.shape] + [p.shape for p in inputs.params]
        if pass_ == "fwd":
            shapes = [y_shape(case)]
        return [r.detach().contiguous().numpy().reshape(s) for r, s in zip(result, shapes)]
    return run, outputs


def max_relative_error(actual, expected) -> float:
    """Largest |a - e| over all outputs, each relative to the largest |e| of its tensor."""
    if len(actual) != len(expected):
        raise ValueError(f"{len(actual)} outputs against {len(expected)}")
    worst = 0.0
    for a, e in zip(actual, expected):
        if a.shape != e.shape:
            raise ValueError(f"output shapes differ: {a.shape} vs {e.shape}")
        scale = max(float(np.max(np.abs(e), initial=0.0)), np.finfo(np.float32).tiny)
        worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - e), initial=0.0)) / scale)
    return worst

"""Callables that run one case of the op table (fastconv.ops) through fastconv (any backend or
instruction set), the NumPy reference, PyTorch, or fastconv's kernels from PyTorch tensors
(fastconv.torch), timed by bench/measure.py.

Each runner returns (run, outputs): `run()` does the timed work and `outputs(result)` turns its
result into NCHW NumPy arrays in the op table's order (forward: y; backward: the gradients
in `op.grads` order), so that any two contenders can be compared. Everything the timed call
does not need (inputs, dy, the forward pass before a backward, PyTorch's graph) is prepared
outside it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

import fastconv

_NCHW = (0, 3, 1, 2)


def _nchw(a, layout):
    a = np.asarray(a)
    return a.transpose(_NCHW) if layout == "NHWC" and a.ndim == 4 else a


def dy_for(case, seed=1):
    """A gradient for the forward output of `case`, the same numbers in either layout."""
    nchw = case.in_layout("NCHW")
    y = nchw.op.forward(nchw, lib=fastconv.reference)["y"]
    dy = np.random.default_rng(seed).standard_normal(y.shape).astype(np.float32)
    if case.layout == "NHWC" and dy.ndim == 4:
        return np.ascontiguousarray(dy.transpose(0, 2, 3, 1))
    return dy


def fastconv_runner(case, direction, lib=fastconv, dev=lambda a: a, host=np.asarray):
    """`case` through `lib` (fastconv or fastconv.reference) on the backend `dev` moves the
    arrays to (once, before any timing). The backward is the one fastconv's layers run
    (`Op.layer_backward`, e.g. max pooling from its saved argmax) where it has one."""
    op, layout = case.op, case.layout
    moved = replace(case, inputs={k: None if v is None else dev(v) for k, v in case.inputs.items()})
    if direction == "forward":
        run = lambda: op.forward(moved, lib=lib)
        return run, lambda out: [_nchw(host(out["y"]), layout)]
    dy = dev(dy_for(case))
    layer_backward = op.layer_backward and op.layer_backward(moved, lib)
    if layer_backward:  # the backward fastconv's layers run
        run = lambda: layer_backward(dy)
    else:
        forward = op.forward(moved, lib=lib)
        run = lambda: op.backward(moved, dy, forward, lib=lib)
    return run, lambda out: [
        _nchw(host(out[name]), layout) if name == "x" else host(out[name]) for name in op.grads
    ]


def torch_runner(case, direction, channels_last, device="cpu"):
    """`case` through PyTorch's own kernels (the op table's equivalent), in NCHW or
    channels_last memory. The backward is torch.autograd.grad over a graph built outside the
    timed call; the forward runs under no_grad."""
    import torch

    case = case.in_layout("NCHW")
    fn = case.op.torch(torch.nn.functional, case)
    if fn is None:
        return None
    memory = torch.channels_last if channels_last else torch.contiguous_format
    leaves = [_tensor(case.inputs[n], memory, device) for n in _tensor_names(case)]
    return _autograd_runner(fn, leaves, _tensor(dy_for(case), memory, device), direction)


def fastconv_torch_runner(case, direction):
    """`case` through fastconv.torch, the custom operators, from PyTorch tensors: x (and dy)
    in channels_last memory for an NHWC case, else contiguous; weights contiguous (as
    torch.nn keeps them). Timed like torch_runner, so that the two routes into fastconv's
    kernels differ by the cost of the operator route alone."""
    import torch

    import fastconv.torch as ft

    nchw = case.in_layout("NCHW")
    memory = torch.channels_last if case.layout == "NHWC" else torch.contiguous_format
    keywords = {k: v for k, v in nchw.params.items() if k != "layout"}
    leaves = [
        _tensor(nchw.inputs[n], memory if n == "x" else torch.contiguous_format)
        for n in _tensor_names(nchw)
    ]
    op = getattr(ft, case.op.name)
    return _autograd_runner(
        lambda *tensors: op(*tensors, **keywords), leaves, _tensor(dy_for(nchw), memory), direction
    )


def _tensor_names(case):
    op = case.op
    return [n for n in (*op.forward_args, *op.keyword_inputs) if case.inputs.get(n) is not None]


def _tensor(a, memory, device="cpu"):
    import torch

    t = torch.from_numpy(np.ascontiguousarray(a)).to(device)
    return t.contiguous(memory_format=memory) if t.ndim == 4 else t


def _first(out):
    """y of an op that returns (y, statistics...)."""
    return out[0] if isinstance(out, tuple) else out


def _autograd_runner(fn, leaves, dy, direction):
    """(run, outputs) of fn(*leaves): the forward under no_grad, or torch.autograd.grad of
    its y over a graph built beforehand."""
    import torch

    sync = torch.cuda.synchronize if dy.is_cuda else (lambda: None)
    if direction == "forward":

        def run():
            with torch.no_grad():
                return _first(fn(*leaves))

        return run, lambda out: [out.detach().cpu().contiguous().numpy()]
    for leaf in leaves:
        leaf.requires_grad_(True)
    y = _first(fn(*leaves))
    sync()
    run = lambda: torch.autograd.grad(y, leaves, dy, retain_graph=True)
    return run, lambda grads: [g.detach().cpu().contiguous().numpy() for g in grads]


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

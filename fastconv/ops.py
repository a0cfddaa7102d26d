"""The op table: one entry per public op, the single list that the tests (every backend),
`fastconv check`, both benchmarks and `fastconv.torch` are driven by.

An `Op` names its fast function (`fastconv.functional`), its reference (`fastconv.reference`,
same name), the call shapes of its forward and backward, the shapes of its outputs, a
sampler of valid random cases, its PyTorch equivalent and its FLOP and byte counts. A `Case`
is one concrete call: named input arrays and keyword arguments. Samplers draw through a
`Draw`, so the same code serves NumPy's generator (`RandomDraw`, for `fastconv check`) and
hypothesis (tests/op_cases.py).

Adding an op: its kernels, one binding line, its functional and reference functions, and one
`Op(...)` below.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from . import _args, functional, reference

# ---------------------------------------------------------------------------------------
# Drawing random cases


class Draw:
    """Source of choices for a sampler: integer(lo, hi) inclusive, choice(options),
    require(condition) rejects the case being drawn."""

    def integer(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def choice(self, options):
        return options[self.integer(0, len(options) - 1)]

    def require(self, condition: bool) -> None:
        raise NotImplementedError


class Rejected(Exception):
    """A drawn case was invalid; RandomDraw's caller draws again."""


class RandomDraw(Draw):
    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def integer(self, lo, hi):
        return int(self.rng.integers(lo, hi + 1))

    def require(self, condition):
        if not condition:
            raise Rejected


@dataclass(frozen=True)
class Limits:
    """Size bounds of sampled cases (the CPU kernels take larger ones than the CUDA harness)."""

    max_batch: int = 2
    max_channels: int = 4
    max_side: int = 11
    max_kernel: int = 5


def _pair(draw, lo, hi):
    if draw.integer(0, 1):
        return draw.integer(lo, hi)
    return (draw.integer(lo, hi), draw.integer(lo, hi))


def _padding(draw):
    form = draw.integer(0, 3)
    if form == 0:
        return draw.integer(0, 3)
    if form == 1:
        return (draw.integer(0, 3), draw.integer(0, 3))
    if form == 2:  # asymmetric
        return tuple((draw.integer(0, 3), draw.integer(0, 3)) for _ in range(2))
    return draw.choice(["valid", "same"])


def _fits(check) -> bool:
    try:
        check()
        return True
    except ValueError:
        return False


def _activation_shape(n, c, h, w, layout):
    return (n, h, w, c) if layout == "NHWC" else (n, c, h, w)


def _normal(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Cases and ops


@dataclass
class Case:
    """One call of `op`: inputs in forward-call order (None: an optional array left out)
    and the keyword arguments of both directions."""

    op: "Op"
    inputs: dict
    params: dict
    seed: int = 0

    def __repr__(self):
        shapes = {k: None if v is None else tuple(v.shape) for k, v in self.inputs.items()}
        return f"{self.op.name}({shapes}, {self.params})"

    @property
    def x(self):
        return self.inputs["x"]

    @property
    def layout(self) -> str:
        """ "NCHW" or "NHWC" (batch norm: channel axis 1 or -1 of a rank-4 x)."""
        if "layout" in self.params:
            return self.params["layout"]
        return "NHWC" if self.params["axis"] % self.x.ndim == self.x.ndim - 1 else "NCHW"

    def in_layout(self, layout: str) -> "Case":
        """The same case with its activations in `layout` (a rank-4 x)."""
        if layout == self.layout:
            return self
        order = (0, 2, 3, 1) if layout == "NHWC" else (0, 3, 1, 2)
        params = dict(self.params)
        if "layout" in params:
            params["layout"] = layout
        else:
            params["axis"] = -1 if layout == "NHWC" else 1
        inputs = dict(self.inputs, x=np.ascontiguousarray(self.x.transpose(order)))
        return replace(self, inputs=inputs, params=params)


@dataclass(frozen=True)
class Op:
    """An op of the public API. `forward_args` name the positional inputs of the forward
    call; `bias` (or any name in `keyword_inputs`) passes by keyword. `backward_args` name
    what the backward takes, from the case's inputs, the forward's named `outputs` and "dy";
    `grads` name what it returns."""

    name: str
    family: str  # conv, pool, global_pool, norm: the torch/bench grouping
    forward_args: tuple
    backward_args: tuple | None
    grads: tuple
    sample: Callable  # (draw, limits) -> Case
    flops: Callable  # (case, direction) -> multiply-adds x 2 (or element ops)
    bytes: Callable  # (case, direction) -> minimum float32 bytes moved
    shapes: Callable  # (case) -> {output name: shape} of the forward
    outputs: tuple = ("y",)
    keyword_inputs: tuple = ("bias",)
    tolerance: tuple = (1e-4, 2e-5)  # rtol, atol per unit of the reference's largest value
    torch: Callable | None = None  # (torch.nn.functional, case) -> f(*forward tensors, NCHW)
    # (case, lib) -> f(dy) -> {gradient name: array}, or None: the backward fastconv's layers
    # run where it differs from `backward`, from what their training forward saved (run
    # beforehand); None from it where lib has no such path for the case.
    layer_backward: Callable | None = None

    @property
    def fast(self):
        return getattr(functional, self.name)

    @property
    def fast_backward(self):
        return getattr(functional, f"{self.name}_backward", None)

    @property
    def reference(self):
        return getattr(reference, self.name)

    def forward(self, case: Case, lib=functional, dev=lambda a: a) -> dict:
        """{output name: array} of the forward call of `lib` (functional or reference);
        `dev` moves each input array to the backend under test."""
        positional = [
            dev(case.inputs[name]) if case.inputs[name] is not None else None
            for name in self.forward_args
        ]
        keywords = {
            name: dev(case.inputs[name])
            for name in self.keyword_inputs
            if case.inputs.get(name) is not None
        }
        result = getattr(lib, self.name)(*positional, **keywords, **case.params)
        return dict(zip(self.outputs, result if isinstance(result, tuple) else (result,)))

    def backward(self, case: Case, dy, forward: dict, lib=functional, dev=lambda a: a) -> dict:
        """{gradient name: array} of the backward call, given the forward's outputs."""
        known = {**case.inputs, **forward, "dy": dy}
        args = [
            dev(known[name]) if known[name] is not None else None for name in self.backward_args
        ]
        result = getattr(lib, f"{self.name}_backward")(*args, **case.params)
        return dict(zip(self.grads, result if isinstance(result, tuple) else (result,)))

    def draw_case(self, rng: np.random.Generator, limits: Limits = Limits()) -> Case:
        """A random valid case (redrawn until valid)."""
        while True:
            try:
                return self.sample(RandomDraw(rng), limits)
            except Rejected:
                continue


def close(actual, expected, rtol=1e-4, atol=2e-5) -> tuple[bool, float]:
    """(agrees, worst error in units of the tolerance) for a float32 result against a
    float64-accumulating reference; atol scales with the reference's largest value so that
    the bound stays meaningful for sums of many terms, and NaN must meet NaN."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return False, float("inf")
    scale = 1.0 + float(np.nanmax(np.abs(expected), initial=0.0))
    bound = atol * scale + rtol * np.abs(expected)
    both_nan = np.isnan(actual) & np.isnan(expected)
    with np.errstate(invalid="ignore"):
        excess = np.where(both_nan | (actual == expected), 0.0, np.abs(actual - expected) / bound)
    excess = np.where(np.isnan(excess), np.inf, excess)
    worst = float(excess.max(initial=0.0))
    return worst <= 1.0, worst


# ---------------------------------------------------------------------------------------
# Convolutions


def conv_geometry(case: Case):
    x, w = case.x, case.inputs.get("w", case.inputs.get("depthwise_w"))
    p = case.params
    groups = p.get("groups", 1)
    if case.op.name in ("depthwise_conv2d", "separable_conv2d"):
        # int(): a symbolic channel count (torch.compile's fake tensors, fastconv.torch)
        # becomes the one it is traced with; groups must be an int
        groups = int(_args.split_activation(x.shape, _args.channels_last(p["layout"]))[1])
    if w.ndim == 2:
        w = w[:, :, None, None]
    return _args.conv_geometry(
        x.shape,
        w.shape,
        stride=p.get("stride", 1),
        padding=p.get("padding", 0),
        dilation=p.get("dilation", 1),
        groups=groups,
        layout=p["layout"],
    )


def _conv_macs(g) -> int:
    return g.n * g.c_out * g.oh * g.ow * (g.c_in // g.groups) * g.kh * g.kw


def _conv_flops(case, direction):
    g = conv_geometry(case)
    macs = _conv_macs(g)
    if case.op.name == "separable_conv2d":
        macs += g.n * g.oh * g.ow * g.c_out * case.inputs["pointwise_w"].shape[0]
    return 2 * macs * (1 if direction == "forward" else 2)


def _params_size(case):
    return sum(a.size for k, a in case.inputs.items() if k != "x" and a is not None)


def _conv_output_shapes(case):
    g = conv_geometry(case)
    c_out = case.inputs["pointwise_w"].shape[0] if "pointwise_w" in case.inputs else g.c_out
    return {"y": g.activation_shape(c_out, g.oh, g.ow)}


def _conv_bytes(case, direction):
    """fwd reads x and the parameters and writes y; bwd reads dy, x and the parameters and
    writes dx and the parameter gradients."""
    x, y, params = case.x.size, int(np.prod(_conv_output_shapes(case)["y"])), _params_size(case)
    elements = x + params + y if direction == "forward" else y + 2 * x + 2 * params
    return 4 * elements


def _conv_shapes(draw, limits, kind):
    """(x shape, weight shape, params) of a valid dense / grouped / depthwise conv."""
    groups = 1 if kind == "depthwise" else draw.choice([1, 1, 2, 3])
    c_in = draw.integer(1, limits.max_channels) * groups
    c_out = (
        c_in * draw.integer(1, 3)
        if kind == "depthwise"
        else draw.integer(1, limits.max_channels + 1) * groups
    )
    kh, kw = draw.integer(1, limits.max_kernel), draw.integer(1, limits.max_kernel)
    n = draw.integer(1, limits.max_batch)
    h, w = draw.integer(1, limits.max_side), draw.integer(1, limits.max_side)
    layout = draw.choice(["NCHW", "NHWC"])
    params = dict(
        stride=_pair(draw, 1, 3), padding=_padding(draw), dilation=_pair(draw, 1, 2), layout=layout
    )
    if kind == "dense":
        params["groups"] = groups
    x_shape = _activation_shape(n, c_in, h, w, layout)
    w_shape = (c_out, 1 if kind == "depthwise" else c_in // groups, kh, kw)
    draw.require(
        _fits(
            lambda: _args.conv_geometry(
                x_shape, w_shape, **{"groups": c_in if kind == "depthwise" else groups, **params}
            )
        )
    )
    return x_shape, w_shape, params


def _seed(draw):
    return draw.integer(0, 2**32 - 1)


def _sample_conv(kind):
    def sample(draw, limits):
        x_shape, w_shape, params = _conv_shapes(draw, limits, kind)
        seed = _seed(draw)
        rng = np.random.default_rng(seed)
        op = CONV2D if kind == "dense" else DEPTHWISE_CONV2D
        return Case(
            op,
            dict(x=_normal(rng, x_shape), w=_normal(rng, w_shape), bias=_normal(rng, w_shape[:1])),
            params,
            seed,
        )

    return sample


def _sample_pointwise(draw, limits):
    layout = draw.choice(["NCHW", "NHWC"])
    n, h, w = (
        draw.integer(1, limits.max_batch + 1),
        draw.integer(1, limits.max_side - 2),
        draw.integer(1, limits.max_side - 2),
    )
    c_in, c_out = (
        draw.integer(1, 10 * limits.max_channels),
        draw.integer(1, 10 * limits.max_channels),
    )
    seed = _seed(draw)
    rng = np.random.default_rng(seed)
    return Case(
        POINTWISE_CONV2D,
        dict(
            x=_normal(rng, _activation_shape(n, c_in, h, w, layout)),
            w=_normal(rng, (c_out, c_in)),
            bias=_normal(rng, (c_out,)),
        ),
        dict(layout=layout),
        seed,
    )


def _sample_separable(draw, limits):
    x_shape, w_shape, params = _conv_shapes(draw, limits, "depthwise")
    c_out = draw.integer(1, limits.max_channels + 2)
    seed = _seed(draw)
    rng = np.random.default_rng(seed)
    return Case(
        SEPARABLE_CONV2D,
        dict(
            x=_normal(rng, x_shape),
            depthwise_w=_normal(rng, w_shape),
            pointwise_w=_normal(rng, (c_out, w_shape[0])),
            bias=_normal(rng, (c_out,)),
        ),
        params,
        seed,
    )


def _torch_padded(F, x, case):
    """x padded as fastconv pads it (any padding form), cropping rows no window reaches."""
    g = conv_geometry(case)
    bottom = (g.oh - 1) * g.stride_h + g.dil_h * (g.kh - 1) + 1 - g.h - g.pad_top
    right = (g.ow - 1) * g.stride_w + g.dil_w * (g.kw - 1) + 1 - g.w - g.pad_left
    return F.pad(x, (g.pad_left, right, g.pad_top, bottom)), g


def _torch_conv(F, case):
    def run(x, w, bias=None):
        if w.ndim == 2:
            w = w[:, :, None, None]
        padded, g = _torch_padded(F, x, case)
        return F.conv2d(
            padded,
            w,
            bias,
            stride=(g.stride_h, g.stride_w),
            dilation=(g.dil_h, g.dil_w),
            groups=g.groups,
        )

    return run


def _torch_separable(F, case):
    def run(x, depthwise_w, pointwise_w, bias=None):
        padded, g = _torch_padded(F, x, case)
        mid = F.conv2d(
            padded,
            depthwise_w,
            None,
            stride=(g.stride_h, g.stride_w),
            dilation=(g.dil_h, g.dil_w),
            groups=g.c_in,
        )
        return F.conv2d(mid, pointwise_w[:, :, None, None], bias)

    return run


_CONV = dict(family="conv", flops=_conv_flops, bytes=_conv_bytes, shapes=_conv_output_shapes)
CONV2D = Op(
    "conv2d",
    forward_args=("x", "w"),
    backward_args=("dy", "x", "w"),
    grads=("x", "w", "bias"),
    sample=_sample_conv("dense"),
    torch=_torch_conv,
    **_CONV,
)
DEPTHWISE_CONV2D = replace(CONV2D, name="depthwise_conv2d", sample=_sample_conv("depthwise"))
POINTWISE_CONV2D = replace(CONV2D, name="pointwise_conv2d", sample=_sample_pointwise)


def _separable_layer_backward(case, lib):
    """SeparableConv2D's backward: from the depthwise output its training forward keeps."""
    backward = getattr(lib, "separable_conv2d_backward_from_mid", None)
    if backward is None:
        return None
    x, dw, pw = (case.inputs[name] for name in ("x", "depthwise_w", "pointwise_w"))
    mid = lib.depthwise_conv2d(x, dw, **case.params)
    grads = ("x", "depthwise_w", "pointwise_w", "bias")
    return lambda dy: dict(zip(grads, backward(dy, x, mid, dw, pw, **case.params)))


SEPARABLE_CONV2D = Op(
    "separable_conv2d",
    forward_args=("x", "depthwise_w", "pointwise_w"),
    backward_args=("dy", "x", "depthwise_w", "pointwise_w"),
    grads=("x", "depthwise_w", "pointwise_w", "bias"),
    sample=_sample_separable,
    torch=_torch_separable,
    layer_backward=_separable_layer_backward,
    **_CONV,
)


# ---------------------------------------------------------------------------------------
# Pooling


def _pool_geometry(case):
    p = case.params
    return _args.pool_geometry(
        case.x.shape,
        p["kernel_size"],
        stride=p.get("stride"),
        padding=p.get("padding", 0),
        layout=p["layout"],
        kind=case.op.name.split("_")[0],
        count_include_pad=p.get("count_include_pad", False),
    )


def _pool_flops(case, _direction):
    g = _pool_geometry(case)
    return g.n * g.c * g.oh * g.ow * g.kh * g.kw


def _pool_output_shapes(case):
    return {"y": _pool_geometry(case).y_shape}


def _pool_bytes(case, direction):
    """fwd reads x, writes y; bwd reads dy (and x for min; max's layer_backward a byte per
    output where the window fits a byte, else x) and writes dx."""
    g = _pool_geometry(case)
    x, y = case.x.size, int(np.prod(g.y_shape))
    if direction == "forward":
        return 4 * (x + y)
    kind = case.op.name.split("_")[0]
    byte_argmax = kind == "max" and _args.fits_argmax((g.kh, g.kw))
    reads_x = kind == "min" or (kind == "max" and not byte_argmax)
    return 4 * (y + x * reads_x + x) + y * byte_argmax


def _max_pool_layer_backward(case, lib):
    """MaxPooling2D's backward: from the argmax its training forward saves, not x."""
    forward = getattr(lib, "max_pool2d_with_argmax", None)
    g = _pool_geometry(case)
    if forward is None or not _args.fits_argmax((g.kh, g.kw)):
        return None
    _, argmax = forward(case.x, **case.params)
    return lambda dy: {"x": lib.max_pool2d_backward_argmax(dy, argmax, (g.h, g.w), **case.params)}


def _sample_pool(kind):
    def sample(draw, limits):
        layout = draw.choice(["NCHW", "NHWC"])
        n, c = draw.integer(1, limits.max_batch), draw.integer(1, 2 * limits.max_channels + 1)
        h, w = draw.integer(1, limits.max_side - 1), draw.integer(1, limits.max_side - 1)
        params = dict(
            kernel_size=_pair(draw, 1, 5),
            stride=None if draw.integer(0, 1) else _pair(draw, 1, 3),
            padding=_padding(draw),
            layout=layout,
        )
        if kind == "avg":
            params["count_include_pad"] = bool(draw.integer(0, 1))
        shape = _activation_shape(n, c, h, w, layout)
        draw.require(_fits(lambda: _args.pool_geometry(shape, kind=kind, **params)))
        ties = draw.integer(0, 1)  # small integers: equal values, so "first extreme wins" shows
        seed = _seed(draw)
        rng = np.random.default_rng(seed)
        x = rng.integers(-3, 4, size=shape).astype(np.float32) if ties else _normal(rng, shape)
        return Case(POOLS[kind], dict(x=x), params, seed)

    return sample


def _torch_pool(F, case):
    """torch's pooling over the same windows: with torch's own padding where it gives the
    same windows, else on x padded explicitly (with a value no window picks, cropped where no
    window reaches); min is -max(-x), sum an average with divisor 1."""
    kind, p = case.op.name.split("_")[0], case.params
    g = _pool_geometry(case)
    window = dict(kernel_size=(g.kh, g.kw), stride=(g.stride_h, g.stride_w))
    torch_out = (
        (g.h + 2 * g.pad_top - g.kh) // g.stride_h + 1,
        (g.w + 2 * g.pad_left - g.kw) // g.stride_w + 1,
    )
    pads = None
    if g.pad_top * 2 <= g.kh and g.pad_left * 2 <= g.kw and torch_out == (g.oh, g.ow):
        window["padding"] = (g.pad_top, g.pad_left)
    else:  # torch pads symmetrically: these windows differ
        pads = (
            g.pad_left,
            (g.ow - 1) * g.stride_w + g.kw - g.w - g.pad_left,
            g.pad_top,
            (g.oh - 1) * g.stride_h + g.kh - g.h - g.pad_top,
        )

    def largest(x):
        return F.max_pool2d(x if pads is None else F.pad(x, pads, value=-np.inf), **window)

    def total(x):
        return F.avg_pool2d(
            x if pads is None else F.pad(x, pads),
            **window,
            count_include_pad=True,
            divisor_override=1,
        )

    if kind == "max":
        return largest
    if kind == "min":
        return lambda x: -largest(-x)
    if kind == "sum":
        return total
    if pads is None:
        return lambda x: F.avg_pool2d(
            x, **window, count_include_pad=p.get("count_include_pad", False)
        )
    if p.get("count_include_pad", False):
        return lambda x: total(x) / (g.kh * g.kw)
    return lambda x: total(x) / total(x.new_ones(x.shape))


_POOL = dict(
    family="pool",
    forward_args=("x",),
    backward_args=("dy", "x"),
    grads=("x",),
    flops=_pool_flops,
    bytes=_pool_bytes,
    shapes=_pool_output_shapes,
    torch=_torch_pool,
    keyword_inputs=(),
)
POOLS = {
    kind: Op(
        f"{kind}_pool2d",
        sample=_sample_pool(kind),
        layer_backward=_max_pool_layer_backward if kind == "max" else None,
        **_POOL,
    )
    for kind in ("max", "min", "avg", "sum")
}


def _global_flops(case, _direction):
    return case.x.size


def _global_output_shapes(case):
    n, c = _args.split_activation(case.x.shape, _args.channels_last(case.params["layout"]))[:2]
    return {"y": (n, c)}


def _global_bytes(case, _direction):
    return 4 * (case.x.size + int(np.prod(_global_output_shapes(case)["y"])))


def _sample_global(draw, limits):
    layout = draw.choice(["NCHW", "NHWC"])
    shape = _activation_shape(
        draw.integer(1, limits.max_batch + 1),
        draw.integer(1, 2 * limits.max_channels),
        draw.integer(1, limits.max_side),
        draw.integer(1, limits.max_side),
        layout,
    )
    seed = _seed(draw)
    return Case(
        GLOBAL_AVG_POOL2D,
        dict(x=_normal(np.random.default_rng(seed), shape)),
        dict(layout=layout),
        seed,
    )


GLOBAL_AVG_POOL2D = Op(
    "global_avg_pool2d",
    family="global_pool",
    forward_args=("x",),
    backward_args=("dy", "x"),
    grads=("x",),
    sample=_sample_global,
    flops=_global_flops,
    bytes=_global_bytes,
    shapes=_global_output_shapes,
    keyword_inputs=(),
    torch=lambda F, _case: lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1),
)


# ---------------------------------------------------------------------------------------
# Batch normalisation


def _norm_flops(case, direction):
    return (5 if direction == "forward" else 8) * case.x.size


def _norm_output_shapes(case):
    channels = (case.x.shape[case.params["axis"]],)
    shapes = {"y": tuple(case.x.shape), "mean": channels, "var": channels}
    return {name: shapes[name] for name in case.op.outputs}


def _norm_bytes(case, direction):
    """fwd reads x and writes y; bwd reads dy and x and writes dx."""
    return 4 * case.x.size * (2 if direction == "forward" else 3)


def _sample_norm(op_name):
    def sample(draw, limits):
        rank = draw.integer(2, 4)
        shape = [draw.integer(1, limits.max_side - 2) for _ in range(rank)]
        axis = draw.choice([a for a in range(-rank, rank) if a % rank != 0])
        if np.prod(shape) // shape[axis] < 2:  # one element per channel: a variance of 0
            shape[0] = 2
        affine = draw.integer(0, 1)
        params = dict(axis=axis, eps=1e-5, activation=draw.choice([None, "relu", "gelu"]))
        seed = _seed(draw)
        rng = np.random.default_rng(seed)
        x = (rng.standard_normal(shape) * 2 + rng.uniform(-3, 3)).astype(np.float32)
        c = shape[axis]
        inputs = dict(
            x=x,
            gamma=_normal(rng, (c,)) if affine else None,
            beta=_normal(rng, (c,)) if affine else None,
        )
        if op_name == "batch_norm_inference":
            inputs = dict(
                x=x,
                mean=_normal(rng, (c,)),
                var=rng.uniform(0.5, 2, c).astype(np.float32),
                gamma=inputs["gamma"],
                beta=inputs["beta"],
            )
        return Case(NORMS[op_name], inputs, params, seed)

    return sample


def _torch_norm(F, case):
    """F.batch_norm with the batch's statistics (batch_norm) or given ones (inference)."""

    def run(x, *given):
        names = [n for n in case.op.forward_args[1:] if case.inputs.get(n) is not None]
        t = dict(zip(names, given))
        axis = case.params["axis"] % x.ndim
        y = F.batch_norm(
            x.movedim(axis, 1),
            t.get("mean"),
            t.get("var"),
            t.get("gamma"),
            t.get("beta"),
            training=case.op.name == "batch_norm",
            eps=case.params["eps"],
        )
        act = {None: lambda v: v, "relu": F.relu, "gelu": F.gelu}[case.params["activation"]]
        return act(y).movedim(1, axis)

    return run


_NORM = dict(
    family="norm",
    flops=_norm_flops,
    bytes=_norm_bytes,
    shapes=_norm_output_shapes,
    keyword_inputs=(),
    tolerance=(1e-4, 1e-4),
)
NORMS = {
    "batch_norm": Op(
        "batch_norm",
        forward_args=("x", "gamma", "beta"),
        backward_args=("dy", "x", "mean", "var", "gamma", "beta"),
        grads=("x", "gamma", "beta"),
        outputs=("y", "mean", "var"),
        sample=_sample_norm("batch_norm"),
        torch=_torch_norm,
        **_NORM,
    ),
    "batch_norm_inference": Op(
        "batch_norm_inference",
        forward_args=("x", "mean", "var", "gamma", "beta"),
        backward_args=None,
        grads=(),
        torch=_torch_norm,
        sample=_sample_norm("batch_norm_inference"),
        **_NORM,
    ),
}

OPS: dict[str, Op] = {
    op.name: op
    for op in [
        CONV2D,
        DEPTHWISE_CONV2D,
        POINTWISE_CONV2D,
        SEPARABLE_CONV2D,
        *POOLS.values(),
        GLOBAL_AVG_POOL2D,
        *NORMS.values(),
    ]
}


@dataclass
class Verdict:
    op: str
    cases: int = 0
    worst: float = 0.0  # worst error, in units of the tolerance (<= 1 passes)
    failure: str | None = None  # the first failing case and output

    @property
    def ok(self) -> bool:
        return self.failure is None


def check(op: Op, case: Case, dev=lambda a: a, host=np.asarray) -> tuple[float, str | None]:
    """Run one case forward and backward through `dev` against the reference; returns (worst
    error in tolerance units, None or the name of the first output that disagrees)."""
    rtol, atol = op.tolerance
    got = op.forward(case, dev=dev)
    want = op.forward(case, lib=reference)
    worst, bad = 0.0, None

    def compare(name, a, b):
        nonlocal worst, bad
        ok, err = close(host(a), b, rtol, atol)
        worst = max(worst, err)
        if not ok and bad is None:
            bad = name

    for name in op.outputs:
        compare(name, got[name], want[name])
    if op.backward_args is None:
        return worst, bad
    dy = _normal(np.random.default_rng(case.seed + 1), np.shape(host(got["y"])))
    grads = op.backward(case, dy, {k: host(v) for k, v in got.items()}, dev=dev)
    expected = op.backward(case, dy, {k: host(v) for k, v in got.items()}, lib=reference)
    for name in op.grads:
        compare(f"d{name}", grads[name], expected[name])
    return worst, bad


def layer(
    name: str,
    n: int,
    c_in: int,
    c_out: int,
    size: int,
    k: int = 3,
    stride: int = 1,
    pad: int = 1,
    seed: int = 0,
    activation=None,
) -> Case:
    """A case of op `name` shaped like a CNN layer, NCHW: batch n, c_in channels of size x
    size, c_out output channels, a k x k window with `stride` and `pad` on every side
    (pools: c_out = c_in; batch norm: `activation` fused). The benchmarks' layer sets."""
    op, rng = OPS[name], np.random.default_rng(seed)
    x = _normal(rng, (n, c_in, size, size))
    window = dict(stride=stride, padding=pad, layout="NCHW")
    if op.family == "conv":
        if name == "separable_conv2d":
            inputs = dict(
                depthwise_w=_normal(rng, (c_in, 1, k, k)), pointwise_w=_normal(rng, (c_out, c_in))
            )
        else:
            shape = {
                "conv2d": (c_out, c_in, k, k),
                "depthwise_conv2d": (c_out, 1, k, k),
                "pointwise_conv2d": (c_out, c_in),
            }[name]
            inputs = dict(w=_normal(rng, shape))
        params = dict(layout="NCHW") if name == "pointwise_conv2d" else window
        return Case(op, dict(x=x, **inputs, bias=_normal(rng, (c_out,))), params, seed)
    if op.family == "pool":
        return Case(op, dict(x=x), dict(window, kernel_size=k), seed)
    if op.family == "global_pool":
        return Case(op, dict(x=x), dict(layout="NCHW"), seed)
    gamma, beta = _normal(rng, (c_in,)), _normal(rng, (c_in,))
    params = dict(axis=1, eps=1e-3, activation=activation)
    if name == "batch_norm":
        return Case(op, dict(x=x, gamma=gamma, beta=beta), params, seed)
    return Case(
        op,
        dict(
            x=x,
            mean=_normal(rng, (c_in,)),
            var=rng.uniform(0.5, 2, c_in).astype(np.float32),
            gamma=gamma,
            beta=beta,
        ),
        params,
        seed,
    )

"""The functional API: validated Python entry points over the native kernels.

Every function takes float32 arrays (NumPy for the CPU kernels, CuPy or any CUDA array for
the GPU kernels), checks all arguments in Python, allocates the result with the same array
library and calls the kernel of the same name in `fastconv._cpu` or `fastconv._cuda`.
Conventions (README.md has the table): cross-correlation; weights (C_out, C_in/groups, KH, KW);
depthwise weights (C*M, 1, KH, KW); pointwise weights (C_out, C_in); layout "NCHW" or "NHWC"
for activations; padding int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same".
"""

from __future__ import annotations

from . import _args, _backend

__all__ = [
    "avg_pool2d",
    "avg_pool2d_backward",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_inference",
    "conv2d",
    "conv2d_backward",
    "depthwise_conv2d",
    "depthwise_conv2d_backward",
    "global_avg_pool2d",
    "global_avg_pool2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "max_pool2d_backward_argmax",
    "max_pool2d_with_argmax",
    "min_pool2d",
    "min_pool2d_backward",
    "output_size",
    "pointwise_conv2d",
    "pointwise_conv2d_backward",
    "separable_conv2d",
    "separable_conv2d_backward",
    "separable_conv2d_backward_from_mid",
    "sum_pool2d",
    "sum_pool2d_backward",
]


def output_size(w, f, p, s, dilation=1):
    """The output length along one axis of a convolution or pooling window of size F slid
    over W pixels with padding P on each side and stride S:
    floor((W - dilation*(F - 1) - 1 + 2P) / S) + 1, which is (W - F + 2P) / S + 1 for
    dilation 1, rounded down when S does not divide W - F + 2P (the last pixels that no
    window reaches are dropped, as every op here does). P is an int or 'valid' / 'same'
    (TensorFlow's rule: ceil(W / S))."""
    w = _args.positive_int(w, "output_size: W (the input size)")
    f = _args.positive_int(f, "output_size: F (the kernel size)")
    s = _args.positive_int(s, "output_size: S (the stride)")
    dilation = _args.positive_int(dilation, "output_size: dilation")
    if isinstance(p, str) and p.lower() in ("valid", "same"):
        pad = _args.padding4(p, (w, w), (f, f), (s, s), (dilation, dilation))[:2]
    else:
        pad = (
            _args.nonnegative_int(
                p, "output_size: P (the padding on each side, or 'valid' or 'same')"
            ),
        ) * 2
    return _args.window_out(w, f, s, pad, dilation, "output_size")


def _conv_inputs(x, w, bias, xp, w_ndim=4):
    x = _args.array(x, "x", 4, xp)
    w = _args.array(w, "w", w_ndim, xp)
    if bias is not None:
        bias = _args.array(bias, "bias", 1, xp)
        _args.expect_shape(bias, (w.shape[0],), "bias", " (one value per output channel)")
    return x, w, bias


def _as_4d(w):
    """Pointwise (out, in) weights as the (out, in, 1, 1) kernel of a 1x1 convolution."""
    return w if w.ndim == 4 else w.reshape(w.shape[0], w.shape[1], 1, 1)


def _conv_forward(x, w, bias, what, w_ndim=4, **geometry_args):
    backend = _backend.resolve(x, w, bias)
    x, w, bias = _conv_inputs(x, w, bias, backend.xp, w_ndim)
    g = _args.conv_geometry(x.shape, _as_4d(w).shape, what=what, **geometry_args)
    with backend.device(x):
        y = backend.empty(g.y_shape)
    backend.kernels.conv2d_forward(x, w, bias, y, g)
    return y


def _conv_backward(
    dy, x, w, what, need_dx=True, need_dbias=True, w_ndim=4, need_dw=True, **geometry_args
):
    backend = _backend.resolve(dy, x, w)
    xp = backend.xp
    x, w, _ = _conv_inputs(x, w, None, xp, w_ndim)
    dy = _args.array(dy, "dy", 4, xp)
    g = _args.conv_geometry(x.shape, _as_4d(w).shape, what=what, **geometry_args)
    _args.expect_shape(dy, g.y_shape, "dy", " (the shape of the forward output)")
    with backend.device(x):
        dx = backend.empty(g.x_shape) if need_dx else None
        dw = backend.empty(w.shape) if need_dw else None
        dbias = backend.empty((g.c_out,)) if need_dbias else None
    if need_dw:  # one call, which can read dy once for every gradient asked for
        backend.kernels.conv2d_backward(dy, x, w, dx, dw, dbias, g)
        return dx, dw, dbias
    if need_dx:
        backend.kernels.conv2d_backward_input(dy, w, dx, g)
    if need_dbias:
        backend.kernels.bias_backward(dy, dbias, g)
    return dx, dw, dbias


def conv2d(x, w, bias=None, *, stride=1, padding=0, dilation=1, groups=1, layout="NCHW"):
    """2-D cross-correlation: y[n, o] = bias[o] + sum_c,ky,kx x[n, c, ...] * w[o, c, ky, kx]."""
    return _conv_forward(
        x,
        w,
        bias,
        "conv2d",
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        layout=layout,
    )


def conv2d_backward(
    dy,
    x,
    w,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    layout="NCHW",
    need_dx=True,
    need_dbias=True,
    need_dw=True,
):
    """Gradients (dx, dw, dbias) of conv2d; need_dx=False skips dx (returns None) for a
    first layer, whose input needs no gradient, need_dbias=False skips dbias for a
    layer without bias, and need_dw=False skips dw for a frozen layer."""
    return _conv_backward(
        dy,
        x,
        w,
        "conv2d",
        need_dx,
        need_dbias,
        need_dw=need_dw,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        layout=layout,
    )


def _depthwise_groups(x, w, layout, what):
    """Depthwise = grouped conv with one group per input channel; checks w is (C*M, 1, KH, KW)."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4 or getattr(w, "ndim", None) != 4:
        return 1  # let the array checks report the real problem
    channels = _args.split_activation(shape, _args.channels_last(layout))[1]
    if w.shape[1] != 1 or channels == 0 or w.shape[0] % channels:
        raise ValueError(
            f"{what}: depthwise weights must be (C*M, 1, KH, KW) for an input with "
            f"C={channels} channels and depth multiplier M, got {tuple(w.shape)}"
        )
    return channels


def depthwise_conv2d(x, w, bias=None, *, stride=1, padding=0, dilation=1, layout="NCHW"):
    groups = _depthwise_groups(x, w, layout, "depthwise_conv2d")
    return _conv_forward(
        x,
        w,
        bias,
        "depthwise_conv2d",
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        layout=layout,
    )


def depthwise_conv2d_backward(
    dy,
    x,
    w,
    *,
    stride=1,
    padding=0,
    dilation=1,
    layout="NCHW",
    need_dx=True,
    need_dw=True,
    need_dbias=True,
):
    """Gradients (dx, dw, dbias); need_dx, need_dw and need_dbias=False skip one (it comes
    back as None), as in conv2d_backward."""
    groups = _depthwise_groups(x, w, layout, "depthwise_conv2d_backward")
    return _conv_backward(
        dy,
        x,
        w,
        "depthwise_conv2d_backward",
        need_dx,
        need_dbias,
        need_dw=need_dw,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        layout=layout,
    )


def pointwise_conv2d(x, w, bias=None, *, layout="NCHW"):
    """1x1 convolution: a GEMM over channels at every pixel; w is (out, in)."""
    return _conv_forward(
        x,
        w,
        bias,
        "pointwise_conv2d",
        w_ndim=2,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        layout=layout,
    )


def pointwise_conv2d_backward(
    dy, x, w, *, layout="NCHW", need_dx=True, need_dw=True, need_dbias=True
):
    """Gradients (dx, dw, dbias); need_dx, need_dw and need_dbias=False skip one (it comes
    back as None), as in conv2d_backward."""
    return _conv_backward(
        dy,
        x,
        w,
        "pointwise_conv2d_backward",
        need_dx,
        need_dbias,
        w_ndim=2,
        need_dw=need_dw,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        layout=layout,
    )


def separable_conv2d(
    x, depthwise_w, pointwise_w, bias=None, *, stride=1, padding=0, dilation=1, layout="NCHW"
):
    """Depthwise conv (depth multiplier M = depthwise_w.shape[0] / C) then pointwise conv."""
    mid = depthwise_conv2d(
        x, depthwise_w, stride=stride, padding=padding, dilation=dilation, layout=layout
    )
    return pointwise_conv2d(mid, pointwise_w, bias, layout=layout)


def separable_conv2d_backward(
    dy,
    x,
    depthwise_w,
    pointwise_w,
    *,
    stride=1,
    padding=0,
    dilation=1,
    layout="NCHW",
    need_dx=True,
    need_dw=True,
):
    """Gradients (dx, d_depthwise_w, d_pointwise_w, dbias); the depthwise output is computed
    again (separable_conv2d_backward_from_mid takes the forward's instead). need_dw=False
    skips both weights' gradients and dbias (all three come back as None)."""
    geometry = dict(stride=stride, padding=padding, dilation=dilation, layout=layout)
    mid = depthwise_conv2d(x, depthwise_w, **geometry)
    return _separable_backward(dy, x, mid, depthwise_w, pointwise_w, geometry, need_dx, need_dw)


def separable_conv2d_backward_from_mid(
    dy,
    x,
    mid,
    depthwise_w,
    pointwise_w,
    *,
    stride=1,
    padding=0,
    dilation=1,
    layout="NCHW",
    need_dx=True,
    need_dw=True,
):
    """separable_conv2d_backward given mid, the depthwise output the forward computed
    (depthwise_conv2d(x, depthwise_w, ...)), as a training forward can keep it."""
    what = "separable_conv2d_backward_from_mid"
    geometry = dict(stride=stride, padding=padding, dilation=dilation, layout=layout)
    backend = _backend.resolve(dy, x, mid)
    groups = _depthwise_groups(x, depthwise_w, layout, what)
    x, depthwise_w, _ = _conv_inputs(x, depthwise_w, None, backend.xp, 4)
    g = _args.conv_geometry(x.shape, depthwise_w.shape, what=what, groups=groups, **geometry)
    mid = _args.array(mid, "mid", 4, backend.xp)
    _args.expect_shape(mid, g.y_shape, "mid", " (the depthwise output of x)")
    return _separable_backward(dy, x, mid, depthwise_w, pointwise_w, geometry, need_dx, need_dw)


def _separable_backward(dy, x, mid, depthwise_w, pointwise_w, geometry, need_dx, need_dw):
    dmid, dpw, dbias = pointwise_conv2d_backward(
        dy, mid, pointwise_w, layout=geometry["layout"], need_dw=need_dw, need_dbias=need_dw
    )
    dx, ddw, _ = depthwise_conv2d_backward(
        dmid,
        x,
        depthwise_w,
        **geometry,
        need_dx=need_dx,
        need_dw=need_dw,
        need_dbias=False,  # the depthwise half has no bias
    )
    return dx, ddw, dpw, dbias


# ---------------------------------------------------------------------------------------
# Pooling


def _pool_geometry(
    what, kind, shape, kernel_size, stride, padding, layout, count_include_pad=False, argmax=False
):
    """The pooling geometry of a call; with argmax, also a window of at most 256 cells (its
    winners are bytes)."""
    g = _args.pool_geometry(
        shape,
        kernel_size,
        stride=stride,
        padding=padding,
        layout=layout,
        kind=kind,
        count_include_pad=count_include_pad,
        what=what,
    )
    if argmax:
        _args.argmax_window(g, what)
    return g


def _pool_forward(kind, x, kernel_size, stride, padding, layout, count_include_pad=False):
    backend = _backend.resolve(x)
    x = _args.array(x, "x", 4, backend.xp)
    g = _pool_geometry(
        f"{kind}_pool2d", kind, x.shape, kernel_size, stride, padding, layout, count_include_pad
    )
    with backend.device(x):
        y = backend.empty(g.y_shape)
    backend.kernels.pool2d_forward(x, y, g)
    return y


def _pool_backward(kind, dy, x, kernel_size, stride, padding, layout, count_include_pad=False):
    backend = _backend.resolve(dy, x)
    x = _args.array(x, "x", 4, backend.xp)
    dy = _args.array(dy, "dy", 4, backend.xp)
    g = _pool_geometry(
        f"{kind}_pool2d_backward",
        kind,
        x.shape,
        kernel_size,
        stride,
        padding,
        layout,
        count_include_pad,
    )
    _args.expect_shape(dy, g.y_shape, "dy", " (the shape of the forward output)")
    with backend.device(x):
        dx = backend.empty(x.shape)
    backend.kernels.pool2d_backward(dy, x, dx, g)
    return dx


def max_pool2d(x, kernel_size, *, stride=None, padding=0, layout="NCHW"):
    """Max over each window; padding never wins; NaN in a window gives NaN."""
    return _pool_forward("max", x, kernel_size, stride, padding, layout)


def max_pool2d_backward(dy, x, kernel_size, *, stride=None, padding=0, layout="NCHW"):
    """Each gradient goes to the first maximum of its window in row-major order."""
    return _pool_backward("max", dy, x, kernel_size, stride, padding, layout)


def max_pool2d_with_argmax(x, kernel_size, *, stride=None, padding=0, layout="NCHW"):
    """(y, argmax): max_pool2d's y, and for each output the cell of its window that won, as
    a uint8 array of y's shape: the first maximum's position among the window's real cells
    (those inside the input) in row-major order. Windows of at most 256 cells. The backward
    from it (max_pool2d_backward_argmax) reads dy and these bytes, a quarter of dy's size,
    instead of x and every window."""
    backend = _backend.resolve(x)
    x = _args.array(x, "x", 4, backend.xp)
    what = "max_pool2d_with_argmax"
    g = _pool_geometry(what, "max", x.shape, kernel_size, stride, padding, layout, argmax=True)
    with backend.device(x):
        y, argmax = backend.empty(g.y_shape), backend.empty(g.y_shape, "uint8")
    backend.kernels.pool2d_forward_winners(x, y, argmax, g)
    return y, argmax


def max_pool2d_backward_argmax(
    dy, argmax, input_size, kernel_size, *, stride=None, padding=0, layout="NCHW"
):
    """dx of max pooling from dy and the argmax that max_pool2d_with_argmax returned with the
    same window arguments; input_size is x's (H, W). Each gradient goes to its window's
    winning cell; an argmax entry past its window's real cells gives no gradient."""
    backend = _backend.resolve(dy, argmax)
    dy = _args.array(dy, "dy", 4, backend.xp)
    argmax = _args.bytes_array(argmax, "argmax", backend.xp)
    h, w = _args.pair(input_size, "input_size", minimum=1)
    nhwc = _args.channels_last(layout)
    n, c = dy.shape[0], dy.shape[3] if nhwc else dy.shape[1]
    x_shape = (n, h, w, c) if nhwc else (n, c, h, w)
    what = "max_pool2d_backward_argmax"
    g = _pool_geometry(what, "max", x_shape, kernel_size, stride, padding, layout, argmax=True)
    _args.expect_shape(dy, g.y_shape, "dy", f" (the pooled shape of an input of size {(h, w)})")
    _args.expect_shape(argmax, g.y_shape, "argmax", " (the shape of dy)")
    with backend.device(dy):
        dx = backend.empty(x_shape)
    backend.kernels.pool2d_backward_winners(dy, argmax, dx, g)
    return dx


def min_pool2d(x, kernel_size, *, stride=None, padding=0, layout="NCHW"):
    return _pool_forward("min", x, kernel_size, stride, padding, layout)


def min_pool2d_backward(dy, x, kernel_size, *, stride=None, padding=0, layout="NCHW"):
    return _pool_backward("min", dy, x, kernel_size, stride, padding, layout)


def avg_pool2d(x, kernel_size, *, stride=None, padding=0, count_include_pad=False, layout="NCHW"):
    """Mean over the real cells of each window (over KH*KW if count_include_pad)."""
    return _pool_forward("avg", x, kernel_size, stride, padding, layout, count_include_pad)


def avg_pool2d_backward(
    dy, x, kernel_size, *, stride=None, padding=0, count_include_pad=False, layout="NCHW"
):
    return _pool_backward("avg", dy, x, kernel_size, stride, padding, layout, count_include_pad)


def sum_pool2d(x, kernel_size, *, stride=None, padding=0, layout="NCHW"):
    return _pool_forward("sum", x, kernel_size, stride, padding, layout)


def sum_pool2d_backward(dy, x, kernel_size, *, stride=None, padding=0, layout="NCHW"):
    return _pool_backward("sum", dy, x, kernel_size, stride, padding, layout)


def _whole_image(x, layout):
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4:
        return 1, 1  # let the array checks report the real problem
    _, _, h, w = _args.split_activation(shape, _args.channels_last(layout))
    return h, w


def global_avg_pool2d(x, *, layout="NCHW"):
    """Mean over H and W: (N, C, H, W) or (N, H, W, C) -> (N, C)."""
    y = _pool_forward("avg", x, _whole_image(x, layout), None, 0, layout)
    return y.reshape(y.shape[0], y.shape[3] if _args.channels_last(layout) else y.shape[1])


def global_avg_pool2d_backward(dy, x, *, layout="NCHW"):
    dy = _args.array(dy, "dy", 2, _backend.resolve(dy, x).xp)
    n = getattr(x, "shape", (0,))[0]
    nhwc = _args.channels_last(layout)
    dy4 = dy.reshape((dy.shape[0], 1, 1, dy.shape[1]) if nhwc else (*dy.shape, 1, 1))
    if dy.shape[0] != n:
        raise ValueError(f"dy must have shape (N, C) with N={n}, got {tuple(dy.shape)}")
    return _pool_backward("avg", dy4, x, _whole_image(x, layout), None, 0, layout)


def _channel_vector(v, name, channels, xp):
    if v is None:
        return None
    v = _args.array(v, name, 1, xp)
    _args.expect_shape(v, (channels,), name, " (one value per channel)")
    return v


def _norm_call(what, x, vectors, axis, eps, activation, required=(), dy=None):
    """(backend, x, geometry, validated per-channel vectors) of a batch-norm call; `vectors`
    is {name: array or None}, the `required` ones may not be None."""
    if any(vectors[name] is None for name in required):
        raise TypeError(f"{what}: {' and '.join(required)} are required arrays")
    backend = _backend.resolve(x, dy, *vectors.values())
    x = _args.array(x, "x", None, backend.xp)
    g = _args.norm_geometry(x.shape, axis, eps, activation, what)
    return (
        backend,
        x,
        g,
        [_channel_vector(v, name, g.channels, backend.xp) for name, v in vectors.items()],
    )


def batch_norm(x, gamma=None, beta=None, *, axis=-1, eps=1e-3, activation=None):
    """Training-mode batch normalisation, statistics over every axis but the channel `axis`
    (-1 for NHWC, 1 for NCHW). Returns (y, mean, var): y = act(gamma * (x - mean) /
    sqrt(var + eps) + beta) with act None, 'relu' or 'gelu' (exact, x * Phi(x)); var is the
    biased batch variance. gamma / beta None mean 1 / 0."""
    backend, x, g, (gamma, beta) = _norm_call(
        "batch_norm", x, {"gamma": gamma, "beta": beta}, axis, eps, activation
    )
    with backend.device(x):
        y = backend.empty(x.shape)
        mean, var = backend.empty((g.channels,)), backend.empty((g.channels,))
    backend.kernels.batch_norm_forward(x, gamma, beta, y, mean, var, g)
    return y, mean, var


def batch_norm_inference(
    x, mean, var, gamma=None, beta=None, *, axis=-1, eps=1e-3, activation=None
):
    """batch_norm's y with given statistics (moving averages at inference) instead of the
    batch's: act(gamma * (x - mean) / sqrt(var + eps) + beta)."""
    backend, x, g, (mean, var, gamma, beta) = _norm_call(
        "batch_norm_inference",
        x,
        {"mean": mean, "var": var, "gamma": gamma, "beta": beta},
        axis,
        eps,
        activation,
        required=("mean", "var"),
    )
    with backend.device(x):
        y = backend.empty(x.shape)
    backend.kernels.batch_norm_inference(x, mean, var, gamma, beta, y, g)
    return y


def batch_norm_backward(
    dy, x, mean, var, gamma=None, beta=None, *, axis=-1, eps=1e-3, activation=None, need_dx=True
):
    """Gradients (dx, dgamma, dbeta) of batch_norm at the batch statistics (mean, var) it
    returned, with the same gamma, beta and activation (the activation's input is
    recomputed from x)."""
    backend, x, g, (mean, var, gamma, beta) = _norm_call(
        "batch_norm_backward",
        x,
        {"mean": mean, "var": var, "gamma": gamma, "beta": beta},
        axis,
        eps,
        activation,
        required=("mean", "var"),
        dy=dy,
    )
    xp = backend.xp
    dy = _args.array(dy, "dy", x.ndim, xp)
    _args.expect_shape(dy, x.shape, "dy", " (the shape of x)")
    with backend.device(x):
        dx = backend.empty(x.shape) if need_dx else None
        dgamma, dbeta = backend.empty((g.channels,)), backend.empty((g.channels,))
    backend.kernels.batch_norm_backward(dy, x, mean, var, gamma, beta, dx, dgamma, dbeta, g)
    return dx, dgamma, dbeta

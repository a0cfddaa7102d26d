"""Pure-NumPy reference for every fastconv op and its backward: the oracle of the tests.

Written for clarity, not speed. Each op works in NCHW (NHWC inputs are transposed in and
out), accumulates in float64 and returns the input's dtype, so float64 inputs give the
exact gradients that finite differences check. Conventions are those of `fastconv`:
cross-correlation, weights (C_out, C_in/groups, KH, KW), Keras 'same' padding, pooling
windows clipped to the real input.
"""

from __future__ import annotations

import math

import numpy as np

from . import _args
from ._backend import array_module


def _to_nchw(a, nhwc):
    return np.transpose(a, (0, 3, 1, 2)) if nhwc else a


def _from_nchw(a, nhwc, dtype):
    a = np.transpose(a, (0, 2, 3, 1)) if nhwc else a
    return np.ascontiguousarray(a, dtype=dtype)


def _pad(x, g):
    """Zero-pad an NCHW array so that every window of geometry g lies inside it."""
    span_h = (g.oh - 1) * g.stride_h + g.dil_h * (g.kh - 1) + 1
    span_w = (g.ow - 1) * g.stride_w + g.dil_w * (g.kw - 1) + 1
    return np.pad(
        x,
        (
            (0, 0),
            (0, 0),
            (g.pad_top, max(span_h - g.pad_top - g.h, 0)),
            (g.pad_left, max(span_w - g.pad_left - g.w, 0)),
        ),
    )


def _tap(a, g, ky, kx):
    """The (N, C, OH, OW) view of padded input `a` seen by kernel tap (ky, kx)."""
    y0, x0 = ky * g.dil_h, kx * g.dil_w
    return a[
        :,
        :,
        y0 : y0 + g.stride_h * (g.oh - 1) + 1 : g.stride_h,
        x0 : x0 + g.stride_w * (g.ow - 1) + 1 : g.stride_w,
    ]


def _grouped(a, groups):
    """(N, C, H, W) -> (N, G, C/G, H, W)."""
    n, c, h, w = a.shape
    return a.reshape(n, groups, c // groups, h, w)


def _geometry(x, w, stride, padding, dilation, groups, layout):
    return _args.conv_geometry(
        x.shape,
        w.shape,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        layout=layout,
    )


def conv2d(x, w, bias=None, *, stride=1, padding=0, dilation=1, groups=1, layout="NCHW"):
    g = _geometry(x, w, stride, padding, dilation, groups, layout)
    xp = _pad(_to_nchw(x, g.channels_last).astype(np.float64), g)
    wg = w.astype(np.float64).reshape(groups, g.c_out // groups, g.c_in // groups, g.kh, g.kw)
    y = np.zeros((g.n, groups, g.c_out // groups, g.oh, g.ow))
    for ky in range(g.kh):
        for kx in range(g.kw):
            patch = _grouped(_tap(xp, g, ky, kx), groups)
            y += np.einsum("ngchw,goc->ngohw", patch, wg[:, :, :, ky, kx])
    y = y.reshape(g.n, g.c_out, g.oh, g.ow)
    if bias is not None:
        y += bias.astype(np.float64)[None, :, None, None]
    return _from_nchw(y, g.channels_last, x.dtype)


def conv2d_backward(dy, x, w, *, stride=1, padding=0, dilation=1, groups=1, layout="NCHW"):
    g = _geometry(x, w, stride, padding, dilation, groups, layout)
    nhwc = g.channels_last
    dyg = _grouped(_to_nchw(dy, nhwc).astype(np.float64), groups)
    xp = _pad(_to_nchw(x, nhwc).astype(np.float64), g)
    wg = w.astype(np.float64).reshape(groups, g.c_out // groups, g.c_in // groups, g.kh, g.kw)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(wg)
    for ky in range(g.kh):
        for kx in range(g.kw):
            patch = _grouped(_tap(xp, g, ky, kx), groups)
            dw[:, :, :, ky, kx] = np.einsum("ngohw,ngchw->goc", dyg, patch)
            dpatch = _tap(dxp, g, ky, kx)  # a view: += scatters into dxp
            dpatch += np.einsum("ngohw,goc->ngchw", dyg, wg[:, :, :, ky, kx]).reshape(dpatch.shape)
    dx = dxp[:, :, g.pad_top : g.pad_top + g.h, g.pad_left : g.pad_left + g.w]
    dbias = dyg.sum(axis=(0, 3, 4)).reshape(-1)
    return (
        _from_nchw(dx, nhwc, x.dtype),
        dw.reshape(w.shape).astype(w.dtype),
        dbias.astype(dy.dtype),
    )


def depthwise_conv2d(x, w, bias=None, *, stride=1, padding=0, dilation=1, layout="NCHW"):
    channels = _args.split_activation(x.shape, _args.channels_last(layout))[1]
    return conv2d(
        x,
        w,
        bias,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=channels,
        layout=layout,
    )


def depthwise_conv2d_backward(dy, x, w, *, stride=1, padding=0, dilation=1, layout="NCHW"):
    channels = _args.split_activation(x.shape, _args.channels_last(layout))[1]
    return conv2d_backward(
        dy, x, w, stride=stride, padding=padding, dilation=dilation, groups=channels, layout=layout
    )


def pointwise_conv2d(x, w, bias=None, *, layout="NCHW"):
    return conv2d(x, w[:, :, None, None], bias, layout=layout)


def pointwise_conv2d_backward(dy, x, w, *, layout="NCHW"):
    dx, dw, dbias = conv2d_backward(dy, x, w[:, :, None, None], layout=layout)
    return dx, dw[:, :, 0, 0], dbias


def separable_conv2d(
    x, depthwise_w, pointwise_w, bias=None, *, stride=1, padding=0, dilation=1, layout="NCHW"
):
    mid = depthwise_conv2d(
        x, depthwise_w, stride=stride, padding=padding, dilation=dilation, layout=layout
    )
    return pointwise_conv2d(mid, pointwise_w, bias, layout=layout)


def separable_conv2d_backward(
    dy, x, depthwise_w, pointwise_w, *, stride=1, padding=0, dilation=1, layout="NCHW"
):
    geometry = dict(stride=stride, padding=padding, dilation=dilation, layout=layout)
    mid = depthwise_conv2d(x, depthwise_w, **geometry)
    return separable_conv2d_backward_from_mid(dy, x, mid, depthwise_w, pointwise_w, **geometry)


def separable_conv2d_backward_from_mid(
    dy, x, mid, depthwise_w, pointwise_w, *, stride=1, padding=0, dilation=1, layout="NCHW"
):
    dmid, dpw, dbias = pointwise_conv2d_backward(dy, mid, pointwise_w, layout=layout)
    dx, ddw, _ = depthwise_conv2d_backward(
        dmid, x, depthwise_w, stride=stride, padding=padding, dilation=dilation, layout=layout
    )
    return dx, ddw, dpw, dbias


# ---------------------------------------------------------------------------------------
# Pooling: each window is clipped to the real input, so padding never wins a max or a min,
# and averages divide by the real cells unless count_include_pad.


def _windows(g):
    for oy in range(g.oh):
        for ox in range(g.ow):
            y0, x0 = oy * g.stride_h - g.pad_top, ox * g.stride_w - g.pad_left
            rows = slice(max(y0, 0), min(y0 + g.kh, g.h))
            cols = slice(max(x0, 0), min(x0 + g.kw, g.w))
            yield oy, ox, rows, cols


def _pool_geometry(x, kernel_size, stride, padding, layout, kind, count_include_pad=False):
    return _args.pool_geometry(
        x.shape,
        kernel_size,
        stride=stride,
        padding=padding,
        layout=layout,
        kind=kind,
        count_include_pad=count_include_pad,
    )


def _pool(kind, x, kernel_size, stride, padding, count_include_pad, layout):
    g = _pool_geometry(x, kernel_size, stride, padding, layout, kind, count_include_pad)
    xc = _to_nchw(x, g.channels_last).astype(np.float64)
    y = np.zeros((g.n, g.c, g.oh, g.ow))
    for oy, ox, rows, cols in _windows(g):
        win = xc[:, :, rows, cols].reshape(g.n, g.c, -1)
        if kind in ("max", "min"):
            # argmax/argmin pick the first extreme in row-major order and treat NaN as extreme.
            pick = np.argmax(win, -1) if kind == "max" else np.argmin(win, -1)
            y[:, :, oy, ox] = np.take_along_axis(win, pick[..., None], -1)[..., 0]
        else:
            total = win.sum(-1)
            y[:, :, oy, ox] = (
                total
                if kind == "sum"
                else total / (g.kh * g.kw if count_include_pad else win.shape[-1])
            )
    return _from_nchw(y, g.channels_last, x.dtype)


def _pool_backward(kind, dy, x, kernel_size, stride, padding, count_include_pad, layout):
    g = _pool_geometry(x, kernel_size, stride, padding, layout, kind, count_include_pad)
    xc = _to_nchw(x, g.channels_last).astype(np.float64)
    dyc = _to_nchw(dy, g.channels_last).astype(np.float64)
    dx = np.zeros_like(xc)
    for oy, ox, rows, cols in _windows(g):
        grad = dyc[:, :, oy, ox]
        if kind in ("max", "min"):
            win = xc[:, :, rows, cols].reshape(g.n, g.c, -1)
            pick = np.argmax(win, -1) if kind == "max" else np.argmin(win, -1)
            width = cols.stop - cols.start
            n_idx, c_idx = np.indices(pick.shape)
            np.add.at(
                dx, (n_idx, c_idx, rows.start + pick // width, cols.start + pick % width), grad
            )
        else:
            cells = (rows.stop - rows.start) * (cols.stop - cols.start)
            scale = 1.0 if kind == "sum" else 1.0 / (g.kh * g.kw if count_include_pad else cells)
            dx[:, :, rows, cols] += (grad * scale)[:, :, None, None]
    return _from_nchw(dx, g.channels_last, x.dtype)


def max_pool2d(x, kernel_size, *, stride=None, padding=0, layout="NCHW"):
    return _pool("max", x, kernel_size, stride, padding, False, layout)


def max_pool2d_backward(dy, x, kernel_size, *, stride=None, padding=0, layout="NCHW"):
    return _pool_backward("max", dy, x, kernel_size, stride, padding, False, layout)


def max_pool2d_with_argmax(x, kernel_size, *, stride=None, padding=0, layout="NCHW"):
    """(y, argmax): each window's first maximum's position among its real cells, row-major."""
    g = _pool_geometry(x, kernel_size, stride, padding, layout, "max")
    xc = _to_nchw(x, g.channels_last)
    argmax = np.zeros((g.n, g.c, g.oh, g.ow), np.uint8)
    for oy, ox, rows, cols in _windows(g):
        argmax[:, :, oy, ox] = np.argmax(xc[:, :, rows, cols].reshape(g.n, g.c, -1), -1)
    y = max_pool2d(x, kernel_size, stride=stride, padding=padding, layout=layout)
    return y, _from_nchw(argmax, g.channels_last, np.uint8)


def max_pool2d_backward_argmax(
    dy, argmax, input_size, kernel_size, *, stride=None, padding=0, layout="NCHW"
):
    """Each gradient added to the cell its argmax names (none past the window's cells)."""
    nhwc = _args.channels_last(layout)
    dyc, pick = _to_nchw(dy, nhwc).astype(np.float64), _to_nchw(argmax, nhwc).astype(np.int64)
    n, c = dyc.shape[:2]
    dx = np.zeros((n, c, *input_size))
    g = _pool_geometry(dx, kernel_size, stride, padding, "NCHW", "max")
    n_idx, c_idx = np.indices((n, c))
    for oy, ox, rows, cols in _windows(g):
        width, cells = cols.stop - cols.start, (rows.stop - rows.start) * (cols.stop - cols.start)
        at, real = pick[:, :, oy, ox], pick[:, :, oy, ox] < cells
        spot = (
            n_idx[real],
            c_idx[real],
            rows.start + at[real] // width,
            cols.start + at[real] % width,
        )
        np.add.at(dx, spot, dyc[:, :, oy, ox][real])
    return _from_nchw(dx, nhwc, dy.dtype)


def min_pool2d(x, kernel_size, *, stride=None, padding=0, layout="NCHW"):
    return _pool("min", x, kernel_size, stride, padding, False, layout)


def min_pool2d_backward(dy, x, kernel_size, *, stride=None, padding=0, layout="NCHW"):
    return _pool_backward("min", dy, x, kernel_size, stride, padding, False, layout)


def avg_pool2d(x, kernel_size, *, stride=None, padding=0, count_include_pad=False, layout="NCHW"):
    return _pool("avg", x, kernel_size, stride, padding, count_include_pad, layout)


def avg_pool2d_backward(
    dy, x, kernel_size, *, stride=None, padding=0, count_include_pad=False, layout="NCHW"
):
    return _pool_backward("avg", dy, x, kernel_size, stride, padding, count_include_pad, layout)


def sum_pool2d(x, kernel_size, *, stride=None, padding=0, layout="NCHW"):
    return _pool("sum", x, kernel_size, stride, padding, False, layout)


def sum_pool2d_backward(dy, x, kernel_size, *, stride=None, padding=0, layout="NCHW"):
    return _pool_backward("sum", dy, x, kernel_size, stride, padding, False, layout)


def global_avg_pool2d(x, *, layout="NCHW"):
    axes = (1, 2) if _args.channels_last(layout) else (2, 3)
    return x.astype(np.float64).mean(axis=axes).astype(x.dtype)


def global_avg_pool2d_backward(dy, x, *, layout="NCHW"):
    nhwc = _args.channels_last(layout)
    n, c, h, w = _args.split_activation(x.shape, nhwc)
    grad = dy.astype(np.float64) / (h * w)
    dx = np.broadcast_to(grad[:, None, None, :] if nhwc else grad[:, :, None, None], x.shape)
    return np.ascontiguousarray(dx, dtype=x.dtype)


def _channel_axes(x, axis):
    axis %= x.ndim
    reduce = tuple(a for a in range(x.ndim) if a != axis)
    return reduce, tuple(-1 if a == axis else 1 for a in range(x.ndim))


def _normal_cdf_pdf(z):
    """Phi(z) and phi(z) in float64, with erf from math.erf (NumPy) or cupyx (CuPy)."""
    xp = array_module(z)
    if xp is np:
        erf = np.vectorize(math.erf, otypes=[np.float64])
    else:
        from cupyx.scipy.special import erf
    return 0.5 * (1.0 + erf(z / math.sqrt(2.0))), xp.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _activate(z, activation):
    """(act(z), act'(z)) for activation None, 'relu' or 'gelu' (exact: z * Phi(z))."""
    if activation is None:
        return z, 1.0
    if activation == "relu":
        return z * (z > 0), (z > 0) * 1.0
    cdf, pdf = _normal_cdf_pdf(z)
    return z * cdf, cdf + z * pdf


def _affine_input(x, mean, var, gamma, beta, axis, eps):
    """In float64: z = gamma * xhat + beta, xhat = (x - mean) * inv_std, and the per-channel
    gamma * inv_std (broadcastable to x), inv_std = 1 / sqrt(var + eps)."""
    xp = array_module(x)
    _, bshape = _channel_axes(x, axis)
    as64 = lambda v: v.astype(xp.float64).reshape(bshape)
    inv_std = 1.0 / xp.sqrt(as64(var) + eps)
    xhat = (x.astype(xp.float64) - as64(mean)) * inv_std
    gain = inv_std if gamma is None else as64(gamma) * inv_std
    z = xhat * (1.0 if gamma is None else as64(gamma)) + (0.0 if beta is None else as64(beta))
    return z, xhat, gain


def batch_norm(x, gamma=None, beta=None, *, axis=-1, eps=1e-3, activation=None):
    """(y, mean, var) of training-mode batch normalisation over every axis but `axis`, in
    float64. Written for NumPy or CuPy arrays alike."""
    xp = array_module(x)
    reduce, bshape = _channel_axes(x, axis)
    x64 = x.astype(xp.float64)
    mean = x64.mean(axis=reduce)
    var = ((x64 - mean.reshape(bshape)) ** 2).mean(axis=reduce)
    y = batch_norm_inference(x64, mean, var, gamma, beta, axis=axis, eps=eps, activation=activation)
    return y.astype(x.dtype), mean.astype(x.dtype), var.astype(x.dtype)


def batch_norm_inference(
    x, mean, var, gamma=None, beta=None, *, axis=-1, eps=1e-3, activation=None
):
    """act(gamma * (x - mean) / sqrt(var + eps) + beta) with given statistics."""
    z = _affine_input(x, mean, var, gamma, beta, axis, eps)[0]
    return _activate(z, activation)[0].astype(x.dtype)


def batch_norm_backward(
    dy, x, mean, var, gamma=None, beta=None, *, axis=-1, eps=1e-3, activation=None
):
    """(dx, dgamma, dbeta) of batch_norm with the same gamma, beta and activation."""
    reduce, bshape = _channel_axes(x, axis)
    count = x.size // x.shape[axis]
    z, xhat, gain = _affine_input(x, mean, var, gamma, beta, axis, eps)
    dz = dy.astype(xhat.dtype) * _activate(z, activation)[1]
    dbeta = dz.sum(axis=reduce)
    dgamma = (dz * xhat).sum(axis=reduce)
    dx = gain * (dz - dbeta.reshape(bshape) / count - xhat * dgamma.reshape(bshape) / count)
    return dx.astype(x.dtype), dgamma.astype(x.dtype), dbeta.astype(x.dtype)

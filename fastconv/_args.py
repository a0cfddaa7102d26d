"""Argument parsing and validation shared by the fast API and the NumPy reference.

Everything a native kernel relies on is checked here, in Python, before any pointer is
touched: dtypes, ranks, channel counts, strides, paddings and window sizes. Each failure
raises TypeError (wrong kind of thing) or ValueError (right kind, wrong value) with a message
that says how to fix the call.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import numpy as np

LAYOUTS = {"NCHW": False, "NHWC": True, "CHANNELS_FIRST": False, "CHANNELS_LAST": True}


def channels_last(layout) -> bool:
    """True for NHWC. Accepts "NCHW"/"NHWC" and Keras' "channels_first"/"channels_last"."""
    if not isinstance(layout, str) or layout.upper() not in LAYOUTS:
        raise ValueError(
            f"layout must be 'NCHW' or 'NHWC' (or 'channels_first'/'channels_last'), got {layout!r}"
        )
    return LAYOUTS[layout.upper()]


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def positive_int(value, name: str) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def nonnegative_int(value, name: str) -> int:
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


def pair(value, name: str, *, minimum: int) -> tuple[int, int]:
    """An int or an (h, w) pair of ints, each at least `minimum`."""
    if _is_int(value):
        values = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_is_int, value)):
        values = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")
    if min(values) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return values


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow/Keras 'same': output = ceil(size / stride); the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def padding4(padding, hw, kernel, stride, dilation) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from an int, (ph, pw), ((t, b), (l, r)), 'valid' or 'same'."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return 0, 0, 0, 0
        if mode == "same":
            return (
                *same_padding(hw[0], kernel[0], stride[0], dilation[0]),
                *same_padding(hw[1], kernel[1], stride[1], dilation[1]),
            )
        raise ValueError(
            f"padding must be 'valid', 'same', an int or pairs of ints, got {padding!r}"
        )
    if (
        isinstance(padding, (tuple, list))
        and len(padding) == 2
        and all(isinstance(p, (tuple, list)) for p in padding)
    ):
        rows, cols = (pair(tuple(p), "padding", minimum=0) for p in padding)
        return (*rows, *cols)
    try:
        ph, pw = pair(padding, "padding", minimum=0)
    except TypeError:
        raise TypeError(
            "padding must be an int, (ph, pw), ((top, bottom), (left, right)), "
            f"'valid' or 'same', got {padding!r}"
        ) from None
    return ph, ph, pw, pw


def window_out(
    size: int, kernel: int, stride: int, pad: tuple[int, int], dilation: int, what: str
) -> int:
    span = dilation * (kernel - 1) + 1
    if size + pad[0] + pad[1] < span:
        raise ValueError(
            f"{what}: the kernel spans {span} pixels but the padded input is only "
            f"{size + pad[0] + pad[1]} ({size} + padding {pad[0]}+{pad[1]}); use a "
            f"smaller kernel or dilation, more padding, or padding='same'"
        )
    return (size + pad[0] + pad[1] - span) // stride + 1


def array(x, name: str, ndim: int | None, xp=None):
    """Check dtype and rank (any rank if ndim is None); return a C-contiguous float32 array of
    the same library."""
    if xp is None:
        xp = np
    if xp is not np and not isinstance(x, xp.ndarray):  # e.g. a PyTorch CUDA tensor: zero-copy
        x = _foreign_device_array(x, name, xp)
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(
            f"{name} must be a float32 array, got {type(x).__name__}; "
            f"use np.asarray({name}, dtype=np.float32)"
        )
    if x.dtype != np.float32:
        raise TypeError(
            f"{name} has dtype {x.dtype}; fastconv computes in float32: "
            f"pass {name}.astype(np.float32)"
        )
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    return xp.ascontiguousarray(x)


def _foreign_device_array(x, name, xp):
    """A CuPy view of another library's device array. DLPack first: its handshake makes
    CuPy's current stream wait for the producer's stream (the array interface carries no
    stream for PyTorch, so a tensor still being written could be read early)."""
    try:
        if hasattr(x, "__dlpack__"):
            return xp.from_dlpack(x)
        return xp.asarray(x)
    except (RuntimeError, BufferError) as e:  # e.g. a PyTorch tensor that requires grad
        raise TypeError(
            f"{name} cannot be shared with fastconv ({e}); for a PyTorch tensor "
            f"that requires grad, pass {name}.detach()"
        ) from None


# Types a remembered geometry's arguments may have; True: the key keeps the type beside the
# value, as 2.0 and True equal 2 but are refused where 2 is accepted.
_KEY_TYPES = {int: False, str: False, type(None): False, bool: True, float: True}
_REMEMBERED = 512  # geometries per builder; a network has a few dozen


def _key(values) -> tuple:
    """values as a dict key that no values of other types match; KeyError for a value that
    is not an int, str, None, bool, float or a tuple of those."""
    key = []
    for value in values:
        kind = type(value)
        if kind is tuple:
            key.append(_key(value))
        else:
            key.append((kind, value) if _KEY_TYPES[kind] else value)
    return tuple(key)


def _remembered(build):
    """build, remembering its results by its arguments. A training loop asks for the same
    few geometries every step, and validating the arguments anew costs several microseconds
    of calls that may take tens. Failures are not remembered, nor calls with other argument
    types (lists, NumPy scalars): those are built every time."""
    results = {}

    @functools.wraps(build)
    def remembered(*args, **kwargs):
        try:
            key = (_key(args), _key(kwargs.values()), tuple(kwargs))
        except KeyError:
            return build(*args, **kwargs)
        result = results.get(key)
        if result is None:
            if len(results) >= _REMEMBERED:
                results.clear()
            result = results[key] = build(*args, **kwargs)
        return result

    return remembered


@dataclass(frozen=True)
class ConvGeometry:
    """csrc/geometry.h's ConvGeometry: the native modules read these fields by name."""

    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    kh: int
    kw: int
    oh: int
    ow: int
    stride_h: int
    stride_w: int
    pad_top: int
    pad_left: int
    dil_h: int
    dil_w: int
    groups: int
    channels_last: int

    def activation_shape(self, channels: int, height: int, width: int):
        return (
            (self.n, height, width, channels)
            if self.channels_last
            else (self.n, channels, height, width)
        )

    @property
    def x_shape(self):
        return self.activation_shape(self.c_in, self.h, self.w)

    @property
    def y_shape(self):
        return self.activation_shape(self.c_out, self.oh, self.ow)


@dataclass(frozen=True)
class PoolGeometry:
    """csrc/geometry.h's PoolGeometry: the native modules read these fields by name."""

    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    oh: int
    ow: int
    stride_h: int
    stride_w: int
    pad_top: int
    pad_left: int
    channels_last: int
    kind: int
    count_include_pad: int

    @property
    def y_shape(self):
        return (
            (self.n, self.oh, self.ow, self.c)
            if self.channels_last
            else (self.n, self.c, self.oh, self.ow)
        )


POOL_KINDS = {"max": 0, "min": 1, "avg": 2, "sum": 3}


def split_activation(shape, nhwc: bool):
    """(N, C, H, W) of an activation shape in either layout."""
    if nhwc:
        n, h, w, c = shape
    else:
        n, c, h, w = shape
    return n, c, h, w


@_remembered
def conv_geometry(
    x_shape, w_shape, *, stride, padding, dilation, groups, layout, what="conv2d"
) -> ConvGeometry:
    nhwc = channels_last(layout)
    n, c_in, h, w = split_activation(x_shape, nhwc)
    c_out, cin_group, kh, kw = w_shape
    if not _is_int(groups):
        raise TypeError(f"{what}: groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"{what}: groups must be >= 1, got {groups}")
    if c_in < 1 or c_out < 1 or kh < 1 or kw < 1:
        raise ValueError(
            f"{what}: channels and kernel sizes must be positive, got input "
            f"{tuple(x_shape)} ({'NHWC' if nhwc else 'NCHW'}) and weight {tuple(w_shape)}"
        )
    if c_in % groups or c_out % groups:
        raise ValueError(
            f"{what}: groups={groups} must divide both the input channels ({c_in}) "
            f"and the output channels ({c_out})"
        )
    if cin_group != c_in // groups:
        raise ValueError(
            f"{what}: weight has {cin_group} input channels per group but the input "
            f"has {c_in} channels / {groups} groups = {c_in // groups}; weights are "
            f"(out_channels, in_channels/groups, KH, KW) and the input is "
            f"{'NHWC' if nhwc else 'NCHW'} (check layout=)"
        )
    sh, sw = pair(stride, "stride", minimum=1)
    dh, dw = pair(dilation, "dilation", minimum=1)
    top, bottom, left, right = padding4(padding, (h, w), (kh, kw), (sh, sw), (dh, dw))
    oh = window_out(h, kh, sh, (top, bottom), dh, f"{what} height")
    ow = window_out(w, kw, sw, (left, right), dw, f"{what} width")
    return ConvGeometry(
        n, c_in, h, w, c_out, kh, kw, oh, ow, sh, sw, top, left, dh, dw, groups, int(nhwc)
    )


@_remembered
def pool_geometry(
    x_shape, kernel_size, *, stride, padding, layout, kind, count_include_pad=False, what="pool2d"
) -> PoolGeometry:
    nhwc = channels_last(layout)
    n, c, h, w = split_activation(x_shape, nhwc)
    if c < 1:
        raise ValueError(f"{what}: the input has no channels (shape {tuple(x_shape)})")
    kh, kw = pair(kernel_size, "kernel_size", minimum=1)
    sh, sw = (kh, kw) if stride is None else pair(stride, "stride", minimum=1)
    top, bottom, left, right = padding4(padding, (h, w), (kh, kw), (sh, sw), (1, 1))
    if not (isinstance(padding, str) and padding.lower() == "same"):
        if max(top, bottom) > kh // 2 or max(left, right) > kw // 2:
            raise ValueError(
                f"{what}: padding {padding!r} is more than half the kernel "
                f"{(kh, kw)}, so a window could hold only padding; use at most "
                f"{(kh // 2, kw // 2)} or padding='same'"
            )
    oh = window_out(h, kh, sh, (top, bottom), 1, f"{what} height")
    ow = window_out(w, kw, sw, (left, right), 1, f"{what} width")
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise TypeError(f"{what}: count_include_pad must be a bool, got {count_include_pad!r}")
    return PoolGeometry(
        n,
        c,
        h,
        w,
        kh,
        kw,
        oh,
        ow,
        sh,
        sw,
        top,
        left,
        int(nhwc),
        POOL_KINDS[kind],
        int(count_include_pad),
    )


MAX_ARGMAX_CELLS = 256  # an argmax is a byte per output


def fits_argmax(window) -> bool:
    """Whether a (KH, KW) pooling window numbers its cells in a byte."""
    return window[0] * window[1] <= MAX_ARGMAX_CELLS


def argmax_window(g: PoolGeometry, what: str):
    if not fits_argmax((g.kh, g.kw)):
        raise ValueError(
            f"{what}: the window {(g.kh, g.kw)} has {g.kh * g.kw} cells; argmax is one byte "
            f"per output, for windows of at most {MAX_ARGMAX_CELLS} cells: use max_pool2d and "
            f"max_pool2d_backward (which reads x) for larger ones"
        )


def bytes_array(a, name: str, xp=None):
    """A C-contiguous uint8 array of the same library (for argmax)."""
    xp = np if xp is None else xp
    if not hasattr(a, "dtype") or not hasattr(a, "shape"):
        raise TypeError(f"{name} must be a uint8 array, got {type(a).__name__}")
    if a.dtype != np.uint8:
        raise TypeError(
            f"{name} has dtype {a.dtype}; it must be the uint8 array max_pool2d_with_argmax "
            f"returned"
        )
    return xp.ascontiguousarray(a)


def expect_shape(arr, shape, name: str, hint: str = ""):
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(arr.shape)}{hint}")


@dataclass(frozen=True)
class NormGeometry:
    """csrc/geometry.h's NormGeometry: an activation seen as (outer, channels, inner) around
    its channel axis (NHWC with axis -1 is (N*H*W, C, 1), NCHW with axis 1 is (N, C, H*W)),
    with batch normalisation's epsilon and the code of its fused activation."""

    outer: int
    channels: int
    inner: int
    eps: float
    activation: int


@_remembered
def norm_geometry(shape, axis, eps, activation, what: str) -> NormGeometry:
    """The NormGeometry of a batch normalisation over every axis of `shape` but the channel
    `axis` (not the batch axis 0)."""
    rank = len(shape)
    if rank < 2:
        raise ValueError(
            f"{what}: x must have a batch axis and a channel axis, got shape {tuple(shape)}"
        )
    if not _is_int(axis):
        raise TypeError(f"{what}: axis must be an int, got {axis!r}")
    if not -rank <= axis < rank or axis % rank == 0:
        raise ValueError(
            f"{what}: axis must name a channel axis 1..{rank - 1} (or -1 for "
            f"channels last) of a rank-{rank} x, got {axis}"
        )
    if min(shape) < 1:
        raise ValueError(
            f"{what}: x has an empty axis, shape {tuple(shape)}; batch statistics "
            f"need at least one element per channel"
        )
    axis %= rank
    return NormGeometry(
        int(math.prod(shape[:axis])),
        int(shape[axis]),
        int(math.prod(shape[axis + 1 :])),
        nonnegative_float(eps, "eps"),
        fused_activation(activation, what),
    )


def nonnegative_float(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {value!r}")
    if not (value >= 0 and np.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


FUSED_ACTIVATIONS = {None: 0, "relu": 1, "gelu": 2}


def fused_activation(value, what: str) -> int:
    """The kernel code of an activation fused into `what`: None, 'relu' or 'gelu'."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{what}: activation must be None, 'relu' or 'gelu', got {value!r}")
    if value not in FUSED_ACTIVATIONS:
        raise ValueError(f"{what}: activation must be None, 'relu' or 'gelu', got {value!r}")
    return FUSED_ACTIVATIONS[value]

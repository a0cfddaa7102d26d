"""Pictures for learning what a CNN does: a convolution layer's filters, the feature maps
of any layer of a model for one image, and pooling windows with their outputs. (Training
curves are `fastconv train`'s curves.png, drawn by fastconv.nn.fit.write_metrics.)

Drawn with matplotlib (`pip install 'fastconv[viz]'`), imported when a picture is drawn, on
a figure of its own (no pyplot state, no display needed). Each plot_* function writes the
picture to `path` (PNG, or any format matplotlib knows by the suffix) and returns the
numbers it drew.
"""

from __future__ import annotations

import math

import numpy as np

from . import _args
from . import functional as F
from ._backend import to_numpy

POOL_KINDS = ("max", "min", "sum", "avg")


def _figure(width, height):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "fastconv.viz draws with matplotlib, which is not installed: "
            "pip install 'fastconv[viz]' (or pip install matplotlib)"
        ) from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path):
    fig.savefig(path, bbox_inches="tight")


def _annotate(ax, values, colors):
    """Write each value of a 2-D array in its cell, in black or white as `colors` says."""
    for (i, j), v in np.ndenumerate(values):
        text = f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}"
        ax.text(j, i, text, ha="center", va="center", fontsize=9, color=colors[i, j])


# ---------------------------------------------------------------------------------------
# Filters


def _conv_kernel(layer):
    """A layer's 4-D convolution kernel (a depthwise one for Depthwise/SeparableConv2D), or
    None."""
    return next(
        (
            layer.params[k]
            for k in ("kernel", "depthwise_kernel")
            if getattr(layer.params.get(k), "ndim", 0) == 4
        ),
        None,
    )


def first_conv(model):
    """The model's first layer with a convolution kernel (`fastconv viz` draws its filters
    when no layer is named)."""
    layer = next((layer for layer in model.layers if _conv_kernel(layer) is not None), None)
    if layer is None:
        raise ValueError("the model has no convolution layer")
    return layer


def _kernel(layer_or_kernel):
    """(C_out, C_in, KH, KW) NumPy weights of a convolution layer or of a kernel array
    ((KH, KW) is one filter of one channel)."""
    if hasattr(layer_or_kernel, "params"):
        layer = layer_or_kernel
        kernel = _conv_kernel(layer)
        if kernel is None:
            raise ValueError(
                f"layer {layer.name!r} ({type(layer).__name__}) has no convolution "
                f"kernel to draw (its weights: {sorted(layer.params) or 'none'}; "
                f"a layer has weights once its model is built)"
            )
    else:
        kernel = layer_or_kernel
    kernel = np.asarray(to_numpy(kernel), dtype=np.float64)
    if kernel.ndim == 2:
        kernel = kernel[None, None]
    if kernel.ndim != 4:
        raise ValueError(f"a kernel is (KH, KW) or (C_out, C_in, KH, KW), got shape {kernel.shape}")
    return kernel


def filter_tiles(layer_or_kernel, max_filters=32, max_channels=8):
    """The filters as pictures, on one scale for the whole layer (0 = its most negative
    weight, 1 = its largest), so that filters can be compared: (filters, KH, KW, 3) RGB
    tiles when the filters see 3 input channels (a first layer on colour images), else
    (filters, channels, KH, KW) grey tiles. At most max_filters filters and max_channels
    channels."""
    kernel = _kernel(layer_or_kernel)[:max_filters]
    lo, hi = kernel.min(), kernel.max()
    scaled = (kernel - lo) / (hi - lo) if hi > lo else np.full_like(kernel, 0.5)
    if scaled.shape[1] == 3:
        return scaled.transpose(0, 2, 3, 1)
    return scaled[:, :max_channels]


def plot_filters(layer_or_kernel, path, max_filters=32, max_channels=8):
    """A convolution layer's filters (Conv2D, DepthwiseConv2D or SeparableConv2D's depthwise
    part) or a kernel array as a grid of pictures (filter_tiles); small kernels get their
    weights written in. Returns the tiles."""
    kernel = _kernel(layer_or_kernel)
    tiles = filter_tiles(kernel, max_filters, max_channels)
    rgb = kernel.shape[1] == 3
    if rgb:
        cols = math.ceil(math.sqrt(len(tiles)))
        grid = [(i // cols, i % cols, tiles[i], None) for i in range(len(tiles))]
        rows = math.ceil(len(tiles) / cols)
    else:
        cols, rows = tiles.shape[1], tiles.shape[0]
        grid = [(f, c, tiles[f, c], kernel[f, c]) for f in range(rows) for c in range(cols)]
    kh, kw = kernel.shape[2:]
    cell = max(0.45, 0.3 * max(kh, kw))
    fig = _figure(cols * cell + 0.5, rows * cell + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, c, tile, weights in grid:
        ax = axes[r, c]
        ax.imshow(tile, cmap=None if rgb else "gray", vmin=0, vmax=1, interpolation="nearest")
        if weights is not None and kh * kw <= 9 and len(grid) <= 16:
            _annotate(ax, weights, np.where(tile > 0.5, "black", "white"))
    shape = "x".join(map(str, kernel.shape))
    fig.suptitle(
        f"filters ({shape}: out x in x KH x KW)"
        + ("" if rgb else "; a row per filter, a column per input channel"),
        fontsize=9,
    )
    _save(fig, path)
    return tiles


# ---------------------------------------------------------------------------------------
# Feature maps


def feature_maps(model, image, layer_name):
    """The output of the layer called `layer_name` for one image (the model's input without
    the batch axis, preprocessed as in training), after the layer's own activation, as a
    NumPy array without the batch axis, and the layout ("NHWC" or "NCHW") it is in.

    The model's layers run one after another in `model.running_layers()` order, stopping
    after the named one and the activation its `activation=` argument added; so this is the
    model's own computation for a chain of layers (a Sequential)."""
    running = model.running_layers()
    names = [layer.name for layer in model.layers]
    if layer_name not in names:
        raise ValueError(f"the model has no layer {layer_name!r}; its layers: {', '.join(names)}")
    declared = {id(layer) for layer in model.layers}
    x = np.asarray(to_numpy(image), dtype=np.float32)[None]
    layout, reached = "NHWC", False
    for layer in running:
        if reached and id(layer) in declared:  # past the layer and its added activation
            break
        x = layer.forward(x)
        layout = getattr(layer, "layout", layout)
        reached = reached or layer.name == layer_name
    return to_numpy(x)[0], layout


def plot_feature_maps(model, image, layer_name, path, max_maps=64):
    """The feature maps of `layer_name` for one image (see feature_maps): one grey picture
    per channel, each on its own scale, at most max_maps of them; a layer with a flat
    output (Dense, Flatten) is drawn as bars. Returns the maps, channels first."""
    out, layout = feature_maps(model, image, layer_name)
    if out.ndim == 1:
        fig = _figure(min(12, 2 + 0.15 * len(out)), 3)
        ax = fig.subplots()
        ax.bar(np.arange(len(out)), out)
        ax.set_xlabel("unit")
        ax.set_title(f"{layer_name}: {len(out)} outputs", fontsize=9)
        _save(fig, path)
        return out
    maps = out.transpose(2, 0, 1) if layout == "NHWC" else out
    shown = maps[:max_maps]
    cols = math.ceil(math.sqrt(len(shown)))
    rows = math.ceil(len(shown) / cols)
    fig = _figure(cols * 1.2, rows * 1.2 + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < len(shown):
            ax.imshow(shown[i], cmap="gray", interpolation="nearest")
            ax.set_title(str(i), fontsize=6, pad=1)
    fig.suptitle(
        f"{layer_name}: {len(maps)} feature maps of {maps.shape[1]}x{maps.shape[2]}"
        + (f" (first {len(shown)})" if len(shown) < len(maps) else ""),
        fontsize=9,
    )
    _save(fig, path)
    return maps


# ---------------------------------------------------------------------------------------
# Pooling


def plot_pooling(x, kernel, stride, kind, path):
    """Pooling of a small 2-D array pictured: the input with every window outlined in its
    own colour (for max and min pooling the cell that wins is circled: the first extreme in
    row-major order, the one the backward pass sends the gradient to), and the pooled output
    with each cell in its window's colour. kind is 'max', 'min', 'sum' or 'avg'; stride None
    means the kernel size. Returns the pooled output."""
    if kind not in POOL_KINDS:
        raise ValueError(f"kind must be one of {', '.join(POOL_KINDS)}, got {kind!r}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"plot_pooling draws a 2-D array, got shape {x.shape}")
    pool = getattr(F, f"{kind}_pool2d")
    y = pool(x[None, None], kernel, stride=stride)[0, 0]
    kh, kw = _args.pair(kernel, "kernel", minimum=1)
    sh, sw = (kh, kw) if stride is None else _args.pair(stride, "stride", minimum=1)
    colors = [f"C{i % 10}" for i in range(y.size)]

    from matplotlib.patches import Circle, Rectangle

    fig = _figure(0.55 * (x.shape[1] + y.shape[1]) + 2, 0.55 * max(x.shape[0], y.shape[0]) + 1)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [x.shape[1], y.shape[1]]})
    for ax, values, title in (
        (left, x, f"input {x.shape[0]}x{x.shape[1]}"),
        (right, y, f"{kind} pool: {y.shape[0]}x{y.shape[1]}"),
    ):
        ax.imshow(np.zeros_like(values), cmap="gray_r", vmin=0, vmax=8)
        _annotate(ax, values, np.full(values.shape, "black"))
        ax.set_xticks(np.arange(values.shape[1] + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(values.shape[0] + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="0.8", linewidth=0.5)
        ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
        ax.set_title(title, fontsize=9)
    inset = 0.08 if (sh, sw) >= (kh, kw) else 0.15  # overlapping windows: smaller, nested
    for k, (i, j) in enumerate(np.ndindex(*y.shape)):
        top, lft = i * sh, j * sw
        box = inset * (1 + k % 2)
        left.add_patch(
            Rectangle(
                (lft - 0.5 + box, top - 0.5 + box),
                kw - 2 * box,
                kh - 2 * box,
                fill=False,
                edgecolor=colors[k],
                linewidth=2,
            )
        )
        right.add_patch(
            Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, edgecolor=colors[k], linewidth=2)
        )
        if kind in ("max", "min"):
            window = x[top : top + kh, lft : lft + kw]
            r, c = np.unravel_index(
                (window.argmax if kind == "max" else window.argmin)(), window.shape
            )
            left.add_patch(
                Circle((lft + c, top + r), 0.35, fill=False, edgecolor=colors[k], linewidth=1.5)
            )
    fig.suptitle(f"{kind} pooling, {kh}x{kw} windows, stride {sh}x{sw}", fontsize=10)
    _save(fig, path)
    return y

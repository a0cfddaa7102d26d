"""What the benchmarks time: layers of every op family at CIFAR-like shapes (batch 128) and the
reference CIFAR-10 network's convolutions and batch norms, each a case of the op table
(fastconv.ops), whose FLOP and byte counts the reports use; and the speed goal of each row.

A Layer is one shape; each is timed forward and backward (every gradient).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import fastconv
from fastconv import ops
from fastconv.nn.zoo import REFERENCE_WIDTHS

DIRECTIONS = ("forward", "backward")
SHORT = {"forward": "fwd", "backward": "bwd"}


@dataclass(frozen=True)
class Layer:
    """One benchmark row's shape: `ops.layer(op, ...)`. For pools and batch norm
    c_out == c_in; k, stride and pad are the window's (square)."""

    op: str
    n: int
    c_in: int
    c_out: int
    size: int  # input height == width
    k: int = 3
    stride: int = 1
    pad: int = 1
    activation: str | None = None  # batch norm's fused activation
    group: str = "layer set"

    def __post_init__(self):
        if self.op not in ops.OPS:
            raise ValueError(f"unknown op {self.op!r}; the op table has {sorted(ops.OPS)}")

    def case(self, seed=0) -> ops.Case:
        return ops.layer(
            self.op,
            self.n,
            self.c_in,
            self.c_out,
            self.size,
            self.k,
            self.stride,
            self.pad,
            seed=seed,
            activation=self.activation,
        )

    @property
    def family(self) -> str:
        return ops.OPS[self.op].family

    @property
    def label(self) -> str:
        window = f"{self.k}x{self.k}" + (f"/s{self.stride}" if self.stride > 1 else "")
        channels = f"{self.c_in}->{self.c_out}" if self.c_in != self.c_out else f"{self.c_in}"
        name = self.op.replace("_conv2d", "").replace("conv2d", "conv").replace("_pool2d", "pool")
        if self.op == "global_avg_pool2d":
            return "global avgpool"
        if self.op == "pointwise_conv2d":
            return f"pointwise {channels}"
        if self.family == "norm":
            return f"batch norm {self.activation or 'none'} {channels}"
        if self.op == "conv2d" and self.pad == 0 and self.k > 1:
            window += " valid"
        return f"{name} {window} {channels}"

    @property
    def shape(self) -> str:
        """The input, NCHW."""
        return f"{self.n}x{self.c_in}x{self.size}x{self.size}"

    def with_batch(self, n: int) -> "Layer":
        return replace(self, n=n)


def _conv(c_in, c_out, size, **kw):
    return Layer("conv2d", 128, c_in, c_out, size, **kw)


LAYER_SET = [
    _conv(3, 64, 32),
    _conv(64, 128, 32),
    _conv(128, 256, 16),
    _conv(256, 512, 8),
    _conv(64, 128, 32, stride=2),
    _conv(32, 64, 32, k=5, pad=2),
    Layer("pointwise_conv2d", 128, 128, 256, 16, k=1, pad=0),
    Layer("depthwise_conv2d", 128, 128, 128, 16),
    Layer("depthwise_conv2d", 128, 256, 256, 32),
    Layer("separable_conv2d", 128, 128, 256, 16),
    Layer("max_pool2d", 128, 128, 128, 32, k=2, stride=2, pad=0),
    Layer("max_pool2d", 128, 128, 128, 32, k=3, stride=2, pad=1),
    Layer("avg_pool2d", 128, 128, 128, 32, k=2, stride=2, pad=0),
    Layer("global_avg_pool2d", 128, 128, 128, 32, k=32, pad=0),
]


def cifar_net(stem=24, widths=REFERENCE_WIDTHS, image=32, batch=128):
    """The layers of the reference network (fastconv.nn.zoo.reference_net) that run on
    fastconv's kernels: a 2x2 'valid' stem, then per width conv3x3 -> maxpool 2 -> BN+GELU ->
    conv3x3 -> BN+GELU (padding 1)."""
    net = "CIFAR-10 net"
    layers = [Layer("conv2d", batch, 3, stem, image, k=2, pad=0, group=net)]
    size, c_in = image - 1, stem
    for width in widths:
        layers.append(Layer("conv2d", batch, c_in, width, size, group=net))
        layers.append(
            Layer("max_pool2d", batch, width, width, size, k=2, stride=2, pad=0, group=net)
        )
        size //= 2
        layers.append(Layer("batch_norm", batch, width, width, size, activation="gelu", group=net))
        layers.append(Layer("conv2d", batch, width, width, size, group=net))
        c_in = width
    return layers


def all_layers():
    return LAYER_SET + cifar_net()


# Small enough for the float64 NumPy reference to finish in well under a second.
REFERENCE_LAYERS = [
    Layer("conv2d", 4, 16, 32, 16, group="reference"),
    Layer("depthwise_conv2d", 4, 32, 32, 16, group="reference"),
    Layer("pointwise_conv2d", 4, 32, 64, 16, k=1, pad=0, group="reference"),
    Layer("max_pool2d", 4, 32, 32, 32, k=2, stride=2, pad=0, group="reference"),
    Layer("avg_pool2d", 4, 32, 32, 32, k=2, stride=2, pad=0, group="reference"),
]


def minimum_ratio(layer: Layer, direction: str) -> float:
    """The speed goal of a row, PyTorch ms / fastconv ms, best layout against best layout:
    no row behind PyTorch; 3x3 stride-1 convolutions 1.8x forward and 1.3x backward."""
    if layer.op == "conv2d" and layer.k == 3 and layer.stride == 1:
        return 1.8 if direction == "forward" else 1.3
    return 1.0


GEOMETRIC_MEAN_GOAL = 1.5
EFFICIENCY_GOAL = 0.8  # of the FMA peak (compute-bound rows) or the copy bandwidth


def conv_algorithms(case, direction) -> str:
    """What the algorithm selector picks for each pass of a convolution row with the active
    ISA ("" for ops that have no choice to make)."""
    if case.op.name not in ("conv2d", "depthwise_conv2d", "pointwise_conv2d"):
        return ""
    g = ops.conv_geometry(case)
    if direction == "forward":
        return fastconv._cpu.conv_algorithm(g, "forward")
    dx, dw = (fastconv._cpu.conv_algorithm(g, p) for p in ("backward_input", "backward_weight"))
    return f"dx {dx}, dw {dw}"

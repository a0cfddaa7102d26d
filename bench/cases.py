"""What the CPU benchmark measures: the layer set of issue 3, the CIFAR-10 network's convs,
the small cases timed against the NumPy reference, and the speed goal of every row.

A Case is one layer shape; each is timed forward and backward (dx + dw [+ dbias]).
FLOP and byte counts are the minimum work and traffic of the op, so achieved GFLOP/s and
GB/s compare kernels that may do more (im2col) or fewer (Winograd) operations on one scale.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from fastconv.nn.zoo import REFERENCE_WIDTHS

CONV_KINDS = ("conv", "pointwise", "depthwise", "separable")
POOL_KINDS = ("maxpool", "avgpool", "globalavgpool")
PASSES = ("fwd", "bwd")


@dataclass(frozen=True)
class Case:
    """One layer. For pools c_out == c_in; k, stride, pad are the window's (square)."""
    kind: str
    n: int
    c_in: int
    c_out: int
    size: int  # input height == width
    k: int = 3
    stride: int = 1
    pad: int = 1
    group: str = "layer set"

    def __post_init__(self):
        if self.kind not in CONV_KINDS + POOL_KINDS:
            raise ValueError(f"unknown case kind {self.kind!r}")

    @property
    def out_size(self) -> int:
        if self.kind == "globalavgpool":
            return 1
        return (self.size + 2 * self.pad - self.k) // self.stride + 1

    @property
    def label(self) -> str:
        window = f"{self.k}x{self.k}" + (f"/s{self.stride}" if self.stride > 1 else "")
        channels = f"{self.c_in}->{self.c_out}" if self.c_in != self.c_out else f"{self.c_in}"
        if self.kind == "globalavgpool":
            return "global avgpool"
        if self.kind == "pointwise":
            return f"pointwise {channels}"
        if self.kind == "conv" and self.pad == 0 and self.k > 1:
            window += " valid"
        return f"{self.kind} {window} {channels}"

    @property
    def shape(self) -> str:
        """The input, NCHW."""
        return f"{self.n}x{self.c_in}x{self.size}x{self.size}"

    def with_batch(self, n: int) -> "Case":
        return replace(self, n=n)


def _conv3x3(c_in, c_out, size, **kw):
    return Case("conv", 128, c_in, c_out, size, **kw)


LAYER_SET = [
    _conv3x3(3, 64, 32),
    _conv3x3(64, 128, 32),
    _conv3x3(128, 256, 16),
    _conv3x3(256, 512, 8),
    _conv3x3(64, 128, 32, stride=2),
    Case("conv", 128, 32, 64, 32, k=5, pad=2),
    Case("pointwise", 128, 128, 256, 16, k=1, pad=0),
    Case("depthwise", 128, 128, 128, 16),
    Case("depthwise", 128, 256, 256, 32),
    Case("separable", 128, 128, 256, 16),
    Case("maxpool", 128, 128, 128, 32, k=2, stride=2, pad=0),
    Case("maxpool", 128, 128, 128, 32, k=3, stride=2, pad=1),
    Case("avgpool", 128, 128, 128, 32, k=2, stride=2, pad=0),
    Case("globalavgpool", 128, 128, 128, 32, k=32, pad=0),
]


def cifar_net_convs(stem=24, widths=REFERENCE_WIDTHS, image=32, batch=128):
    """The convs of the training issue's airbench-style network (fastconv.nn.zoo.reference_net):
    a 2x2 'valid' stem, then per width conv3x3 -> maxpool 2 -> conv3x3 (padding 1)."""
    cases = [Case("conv", batch, 3, stem, image, k=2, pad=0, group="CIFAR-10 net")]
    size, c_in = image - 1, stem
    for width in widths:
        cases.append(Case("conv", batch, c_in, width, size, group="CIFAR-10 net"))
        size //= 2
        cases.append(Case("conv", batch, width, width, size, group="CIFAR-10 net"))
        c_in = width
    return cases


# Small enough for the float64 NumPy reference to finish in well under a second.
REFERENCE_CASES = [
    Case("conv", 4, 16, 32, 16, group="reference"),
    Case("depthwise", 4, 32, 32, 16, group="reference"),
    Case("pointwise", 4, 32, 64, 16, k=1, pad=0, group="reference"),
    Case("maxpool", 4, 32, 32, 32, k=2, stride=2, pad=0, group="reference"),
    Case("avgpool", 4, 32, 32, 32, k=2, stride=2, pad=0, group="reference"),
]


def all_cases():
    return LAYER_SET + cifar_net_convs()


def _dense_macs(case: Case, c_in_per_group: int, k: int) -> int:
    return case.n * case.c_out * case.out_size ** 2 * c_in_per_group * k * k


def flops(case: Case, pass_: str) -> int:
    """Multiply-adds x 2 of the direct algorithm; backward (dx and dw) is twice the forward."""
    if case.kind in POOL_KINDS:
        # one compare/add per window element (both passes touch each once)
        window = case.size ** 2 if case.kind == "globalavgpool" else case.k ** 2
        return case.n * case.c_in * case.out_size ** 2 * window
    if case.kind == "separable":
        depthwise = case.n * case.c_in * case.out_size ** 2 * case.k ** 2
        macs = depthwise + case.n * case.c_out * case.out_size ** 2 * case.c_in
    elif case.kind == "depthwise":
        macs = case.n * case.c_out * case.out_size ** 2 * case.k ** 2
    else:
        macs = _dense_macs(case, case.c_in, case.k)
    return 2 * macs * (1 if pass_ == "fwd" else 2)


def _param_count(case: Case) -> int:
    if case.kind == "conv":
        return case.c_out * case.c_in * case.k ** 2 + case.c_out
    if case.kind == "pointwise":
        return case.c_out * case.c_in + case.c_out
    if case.kind == "depthwise":
        return case.c_out * case.k ** 2 + case.c_out
    if case.kind == "separable":
        return case.c_in * case.k ** 2 + case.c_out * case.c_in + case.c_out
    return 0


def bytes_moved(case: Case, pass_: str) -> int:
    """float32 bytes an ideal kernel must read and write once.
    fwd: x, params -> y.  bwd: dy, x, params -> dx, dparams (avg pools need no x)."""
    x = case.n * case.c_in * case.size ** 2
    y = case.n * case.c_out * case.out_size ** 2
    params = _param_count(case)
    if pass_ == "fwd":
        elements = x + params + y
    else:
        reads_x = case.kind not in ("avgpool", "globalavgpool")
        elements = y + x * reads_x + params + x + params
    return 4 * elements


@dataclass(frozen=True)
class Goal:
    category: str
    minimum: float  # peer ms / fastconv ms must be at least this


GOAL_CATEGORIES = [
    "dense conv fwd (>= 1.1x, >= 1.5x on 3x3 stride 1)",
    "conv backward dx+dw (>= 1.1x)",
    "pointwise fwd+bwd (>= 1.1x)",
    "depthwise fwd+bwd (>= 3x)",
    "pooling fwd+bwd (>= 5x)",
]


def goal(case: Case, pass_: str) -> Goal:
    """Issue 3's goal for one row. Separable counts as a conv ('every conv case')."""
    dense, backward, pointwise, depthwise, pooling = GOAL_CATEGORIES
    if case.kind in POOL_KINDS:
        return Goal(pooling, 5.0)
    if case.kind == "depthwise":
        return Goal(depthwise, 3.0)
    if case.kind == "pointwise":
        return Goal(pointwise, 1.1)
    if pass_ == "bwd":
        return Goal(backward, 1.1)
    winograd_shape = case.kind == "conv" and case.k == 3 and case.stride == 1
    return Goal(dense, 1.5 if winograd_shape else 1.1)

"""fastconv.torch.nn and swap_modules: each module against its torch.nn twin (forward,
gradients, running statistics) in both memory formats, state_dict compatibility, what is
left to torch, swapped MobileNet-style and CIFAR networks against torch, and
torch.compile(fullgraph=True) of a network of fastconv modules against eager."""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="fastconv.torch needs PyTorch (pip install torch==2.13.0)"
)
from torch import nn  # noqa: E402

import fastconv.torch as ft  # noqa: E402
from fastconv import data as fcdata  # noqa: E402
from fastconv import functional  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import torch_cifar_net  # noqa: E402


def assert_close(got, want, tol=1e-4, scale=None):
    """Equal within tol of the largest |want| (or of `scale`): float32 kernels with other
    summation orders and Winograd's rounding."""
    assert got.shape == want.shape
    scale = scale or max(float(want.detach().abs().max()), 1e-6)
    worst = float((got.detach() - want.detach()).abs().max()) / scale
    assert worst <= tol, f"max error {worst:.3g} of the largest value"


def pairs(a, b):
    a, b = list(a), list(b)
    assert len(a) == len(b)
    return zip(a, b)


def run(module, x, dy):
    """(output, gradients of x and of every parameter) of one forward and backward."""
    x = x.clone().requires_grad_()
    y = module(x)
    y.backward(dy)
    return y, [x.grad] + [p.grad for p in module.parameters() if p.requires_grad]


def twins(make):
    """(torch.nn module, its fastconv-swapped copy with the same parameters)."""
    torch.manual_seed(0)
    theirs = make()
    ours = copy.deepcopy(theirs)
    assert ft.swap_modules(ours), "nothing swapped"
    return theirs, ours


MODULES = {
    "conv": lambda: nn.Conv2d(4, 6, 3, padding=1),
    "conv strided dilated no bias": lambda: nn.Conv2d(
        4, 6, (3, 2), stride=2, dilation=(2, 1), bias=False
    ),
    "conv grouped": lambda: nn.Conv2d(4, 6, 3, groups=2, padding=(1, 0)),
    "conv same even kernel": lambda: nn.Conv2d(4, 5, 4, padding="same", dilation=2),
    "conv valid": lambda: nn.Conv2d(4, 5, 2, padding="valid"),
    "depthwise": lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4),
    "depthwise multiplier 2 strided": lambda: nn.Conv2d(4, 8, 5, stride=2, padding=2, groups=4),
    "pointwise": lambda: nn.Conv2d(4, 7, 1),
    "1x1 strided": lambda: nn.Conv2d(4, 7, 1, stride=2),
    "maxpool": lambda: nn.MaxPool2d(3, 2, 1),
    "maxpool default stride": lambda: nn.MaxPool2d((2, 3)),
    "avgpool counting padding": lambda: nn.AvgPool2d(3, 2, 1),
    "avgpool real cells": lambda: nn.AvgPool2d(3, 1, 1, count_include_pad=False),
    "adaptive avgpool 1": lambda: nn.AdaptiveAvgPool2d(1),
    "batch norm": lambda: nn.BatchNorm2d(4),
    "batch norm no affine": lambda: nn.BatchNorm2d(4, affine=False),
}


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("name", MODULES)
def test_module_matches_torch(name, channels_last):
    theirs, ours = twins(MODULES[name])
    assert type(ours).__name__ == type(theirs).__name__ and type(ours) is not type(theirs)
    x = torch.randn(3, 4, 9, 10)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        dy = torch.randn(copy.deepcopy(theirs)(x).shape)
    y_theirs, g_theirs = run(theirs, x, dy)
    y_ours, g_ours = run(ours, x, dy)
    assert_close(y_ours, y_theirs)
    for got, want in pairs(g_ours, g_theirs):
        assert_close(got, want)
    for got, want in pairs(ours.buffers(), theirs.buffers()):  # BN running stats
        assert torch.allclose(got.float(), want.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name",
    ["conv", "depthwise", "pointwise", "maxpool", "avgpool real cells", "adaptive avgpool 1"],
)
def test_unbatched_input(name):
    theirs, ours = twins(MODULES[name])
    x = torch.randn(4, 9, 10)
    assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("track_running_stats", [True, False])
def test_batch_norm_keeps_torchs_semantics(momentum, track_running_stats):
    """Training steps (batch statistics, running mean and unbiased running variance with
    momentum or a cumulative average, num_batches_tracked), then eval mode (the running
    statistics; batch statistics without them), with and without gradients."""
    theirs, ours = twins(
        lambda: nn.BatchNorm2d(5, momentum=momentum, track_running_stats=track_running_stats)
    )
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 2)
        theirs.bias.normal_()
        ours.load_state_dict(theirs.state_dict())
    for step in range(3):
        x = torch.randn(4, 5, 3, 3) * (step + 1) + step
        dy = torch.randn(x.shape)
        y_theirs, g_theirs = run(theirs, x, dy)
        y_ours, g_ours = run(ours, x, dy)
        assert_close(y_ours, y_theirs)
        for got, want in pairs(g_ours, g_theirs):
            assert_close(got, want)
    for (name, got), want in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.allclose(got.float(), want.float(), rtol=1e-5, atol=1e-6), name
    theirs.eval()
    ours.eval()
    x = torch.randn(2, 5, 4, 4)
    with torch.no_grad():
        assert_close(ours(x), theirs(x))
    dy = torch.randn(x.shape)
    y_theirs, g_theirs = run(theirs, x, dy)  # eval mode with gradients
    y_ours, g_ours = run(ours, x, dy)
    assert_close(y_ours, y_theirs)
    for got, want in pairs(g_ours, g_theirs):
        assert_close(got, want)


def test_batch_norm_needs_two_values_per_channel_in_training_as_torch_does():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ft.nn.BatchNorm2d(3)(torch.randn(1, 3, 1, 1))


UNSUPPORTED = {
    "reflect padding": lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
    "float64 conv": lambda: nn.Conv2d(3, 4, 3, dtype=torch.float64),
    "ceil_mode max": lambda: nn.MaxPool2d(2, ceil_mode=True),
    "max with indices": lambda: nn.MaxPool2d(2, return_indices=True),
    "dilated max": lambda: nn.MaxPool2d(2, dilation=2),
    "ceil_mode avg": lambda: nn.AvgPool2d(2, ceil_mode=True),
    "avg divisor_override": lambda: nn.AvgPool2d(2, divisor_override=3),
    "adaptive avgpool 2": lambda: nn.AdaptiveAvgPool2d(2),
    "float64 batch norm": lambda: nn.BatchNorm2d(3, dtype=torch.float64),
}


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_what_fastconv_cannot_run_is_left_to_torch(name):
    module = UNSUPPORTED[name]()
    kind = type(module)
    assert ft.swap_modules(module) == {} and type(module) is kind
    assert getattr(ft.nn, kind.__name__).unsupported(module)  # says why


def test_subclasses_of_torch_modules_are_left_alone():
    class MyConv(nn.Conv2d):
        pass

    net = nn.Sequential(MyConv(3, 4, 3), nn.Conv2d(4, 4, 3))
    assert ft.swap_modules(net) == {"1": "conv2d"} and type(net[0]) is MyConv


def test_constructors_take_torchs_arguments_and_refuse_the_rest():
    conv = ft.nn.Conv2d(3, 8, kernel_size=3, stride=1, padding="same", groups=1, bias=False)
    assert conv.weight.shape == (8, 3, 3, 3) and conv.bias is None
    assert ft.nn.MaxPool2d(3, stride=2, padding=1).fastconv_op == "max_pool2d"
    with pytest.raises(ValueError, match="padding_mode='circular'"):
        ft.nn.Conv2d(3, 8, 3, padding_mode="circular")
    with pytest.raises(ValueError, match="ceil_mode=True"):
        ft.nn.AvgPool2d(2, ceil_mode=True)


def mobilenet_style():
    """Stem conv, two inverted-residual-free MobileNet blocks (depthwise 3x3 + BN + ReLU6,
    pointwise 1x1 + BN + ReLU6), global average pooling, classifier."""

    def block(c_in, c_out, stride):
        return [
            nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU6(),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU6(),
        ]

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU6(),
        *block(16, 32, 1),
        *block(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def cifar_net():
    return torch_cifar_net.reference_net(widths=(16, 32, 64), whiten_width=12)


def assert_swapped_net_matches(theirs, ours, x, tol):
    """Training-mode forward, backward and one SGD step, then eval-mode forward. Gradients
    are compared on the scale of the largest one: some (of BN scales and biases, whose
    terms cancel) are small beside their own rounding."""
    steps = [torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9) for net in (theirs, ours)]
    dy = torch.randn(x.shape[0], 10)
    y_theirs, g_theirs = run(theirs, x, dy)
    y_ours, g_ours = run(ours, x, dy)
    assert_close(y_ours, y_theirs, tol)
    largest = max(float(g.abs().max()) for g in g_theirs)
    for got, want in pairs(g_ours, g_theirs):
        assert_close(got, want, tol, largest)
    for step in steps:
        step.step()
    for got, want in pairs(ours.state_dict().values(), theirs.state_dict().values()):
        assert_close(got.float(), want.float(), tol)
    with torch.no_grad():
        assert_close(ours.eval()(x), theirs.eval()(x), tol)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_swapped_mobilenet_style_net_gives_torchs_result(channels_last):
    theirs, ours = twins(mobilenet_style)
    swapped = ft.swap_modules(copy.deepcopy(theirs))
    assert {op for op in swapped.values()} == {
        "conv2d",
        "depthwise_conv2d",
        "pointwise_conv2d",
        "batch_norm",
        "global_avg_pool2d",
    }
    assert swapped["3"] == "depthwise_conv2d" and swapped["6"] == "pointwise_conv2d"
    x = torch.randn(8, 3, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert_swapped_net_matches(theirs, ours, x, tol=2e-4)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_swapped_cifar_net_gives_torchs_result(channels_last):
    theirs, ours = twins(cifar_net)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    for net in (theirs, ours):
        torch_cifar_net.init_whitening(net, images)
    x = torch_cifar_net.nchw(fcdata.Normalize()(images[:16]))  # as in training
    if not channels_last:
        x = x.contiguous()
    assert_swapped_net_matches(theirs, ours, x, tol=5e-4)


def test_state_dict_round_trip_between_torch_and_fastconv_modules():
    torch.manual_seed(1)
    theirs = mobilenet_style()
    ours = copy.deepcopy(theirs)
    ft.swap_modules(ours)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(1)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())  # a fastconv checkpoint into torch.nn
    for got, want in zip(theirs.state_dict().values(), ours.state_dict().values()):
        assert torch.equal(got, want)
    fresh = copy.deepcopy(mobilenet_style())
    ft.swap_modules(fresh)
    fresh.load_state_dict(theirs.state_dict())  # and a torch.nn checkpoint into fastconv
    x = torch.randn(2, 3, 32, 32)
    assert_close(fresh.eval()(x), theirs.eval()(x))
    conv = ft.nn.Conv2d(3, 16, 3, 2, 1, bias=False)  # a module built directly loads it too
    conv.load_state_dict(theirs[0].state_dict())
    assert torch.equal(conv.weight, theirs[0].weight)


def test_swapping_keeps_the_parameters_an_optimizer_holds():
    net = mobilenet_style()
    params = list(net.parameters())
    ft.swap_modules(net)
    assert all(a is b for a, b in pairs(params, net.parameters()))


class SharedConvNet(nn.Module):
    """Every fastconv module, channels_last in, and one conv used twice (its gradient sums
    both uses)."""

    def __init__(self):
        super().__init__()
        self.stem = ft.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = ft.nn.BatchNorm2d(8)
        self.shared = ft.nn.Conv2d(8, 8, 3, padding="same", bias=False)
        self.depthwise = ft.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8)
        self.pointwise = ft.nn.Conv2d(16, 16, 1)
        self.max = ft.nn.MaxPool2d(2)
        self.avg = ft.nn.AvgPool2d(3, 1, 1)
        self.gap = ft.nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.shared(torch.relu(self.shared(x)))
        x = self.max(self.pointwise(self.depthwise(x)))
        return self.fc(self.gap(self.avg(x)).flatten(1))


# inductor's own imports warn about a deprecated torch.jit API
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_compiled_net_of_fastconv_modules_gives_the_eager_result(channels_last, monkeypatch):
    """torch.compile(fullgraph=True) traces the custom ops (forward and backward, one used
    twice) without a graph break, runs fastconv's kernels and computes what eager mode
    computes."""
    convs = []
    forward = functional._conv_forward
    monkeypatch.setattr(
        functional, "_conv_forward", lambda *a, **kw: convs.append(a[3]) or forward(*a, **kw)
    )
    torch.manual_seed(0)
    eager = SharedConvNet()
    compiled_net = copy.deepcopy(eager)
    compiled = torch.compile(compiled_net, fullgraph=True)
    x = torch.randn(4, 3, 16, 16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn(4, 10)
    y_eager, g_eager = run(eager, x, dy)
    convs.clear()
    y_compiled, g_compiled = run(compiled, x, dy)
    assert sorted(convs) == ["conv2d"] * 3 + ["depthwise_conv2d", "pointwise_conv2d"]
    assert_close(y_compiled, y_eager, 1e-5)
    for got, want in pairs(g_compiled, g_eager):
        assert_close(got, want, 1e-5)
    for got, want in pairs(compiled_net.buffers(), eager.buffers()):
        assert torch.allclose(got.float(), want.float())

"""fastconv's ops as PyTorch operators (fastconv.torch): every op of the op table forward and
backward against torch's own functions in float64, torch.library.opcheck of every operator
in both memory formats, the layout mapping without copies, and the errors for what fastconv
does not do. The CUDA tests skip without a GPU."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import functional, ops

from op_cases import CPU_LIMITS, HypothesisDraw, examples, ops_with

torch = pytest.importorskip(
    "torch", reason="fastconv.torch needs PyTorch (pip install torch==2.13.0)"
)
import fastconv.torch as ft  # noqa: E402
from fastconv.torch import _tensors, library  # noqa: E402

F = torch.nn.functional


def test_import_fastconv_does_not_import_torch(tmp_path):
    code = "import sys, fastconv, fastconv.ops; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )  # away from a source checkout's fastconv/
    assert out.stdout.strip() == "False"


def test_every_op_and_backward_is_an_operator():
    names = {
        n
        for op in ops.OPS.values()
        for n in (op.name, *([f"{op.name}_backward"] if op.backward_args else []))
    }
    assert set(library.SPECS) == names
    for name in names:
        assert isinstance(getattr(torch.ops.fastconv, name).default, torch._ops.OpOverload)
        assert callable(getattr(ft, name))


# ---------------------------------------------------------------------------------------
# Cases of the op table as tensors


def torch_case(case, channels_last):
    """(the case with NCHW-shaped arrays, whether x goes in channels_last memory); batch
    norm keeps its rank and channel axis, and only a rank-4 x can be channels_last."""
    if case.op.family == "norm":
        return case, channels_last and case.x.ndim == 4
    return case.in_layout("NCHW"), case.layout == "NHWC"


def tensor_names(case):
    op = case.op
    return [n for n in (*op.forward_args, *op.keyword_inputs) if case.inputs.get(n) is not None]


def tensors(case, channels_last, dtype=torch.float32, requires_grad=False):
    out = {}
    for name in tensor_names(case):
        t = torch.from_numpy(case.inputs[name]).to(dtype)
        if name == "x" and channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        out[name] = t.requires_grad_(requires_grad)
    return out


def keywords(case):
    """The case's keywords as fastconv.torch takes them: no layout (the memory format is)."""
    return {k: v for k, v in case.params.items() if k != "layout"}


def assert_close(op, actual, expected):
    ok, worst = ops.close(actual.detach().numpy(), expected.detach().numpy(), *op.tolerance)
    assert ok, f"{worst:.3g} x the tolerance"


def assert_memory_format_of(x, y):
    """y is in x's memory format: channels_last for channels_last x, else contiguous."""
    if _tensors.memory_order(x) is None:
        assert y.is_contiguous()
    else:
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("op", ops_with())
@settings(max_examples=examples(25))
@given(data=st.data())
def test_op_matches_torch_in_float64(op, data):
    """Outputs and every gradient of fastconv.torch.<op> on float32 tensors (channels_last
    where the case is NHWC) against the op table's torch equivalent on the same numbers in
    float64."""
    case, channels_last = torch_case(
        op.sample(HypothesisDraw(data), CPU_LIMITS), data.draw(st.booleans())
    )
    differentiable = op.backward_args is not None
    ours = tensors(case, channels_last, requires_grad=differentiable)
    theirs = tensors(case, False, torch.float64, requires_grad=differentiable)
    out = getattr(ft, op.name)(**ours, **keywords(case))
    y = out[0] if isinstance(out, tuple) else out
    expected = op.torch(F, case)(*theirs.values())
    assert_close(op, y, expected)
    if y.dim() == 4:
        assert_memory_format_of(ours["x"], y)
    if op.name == "batch_norm":
        axis = case.params["axis"] % case.x.ndim
        var, mean = torch.var_mean(
            theirs["x"], [d for d in range(case.x.ndim) if d != axis], correction=0
        )
        assert_close(op, out[1], mean)
        assert_close(op, out[2], var)
    if not differentiable:
        return
    dy = np.random.default_rng(case.seed).standard_normal(y.shape)
    got = torch.autograd.grad(y, list(ours.values()), torch.from_numpy(dy).float())
    want = torch.autograd.grad(expected, list(theirs.values()), torch.from_numpy(dy))
    for name, g, w in zip(ours, got, want):
        assert_close(op, g, w)
        if name == "x":
            assert_memory_format_of(ours["x"], g)


@pytest.mark.parametrize("name", ["batch_norm", "batch_norm_inference"])
@pytest.mark.parametrize("axis", [1, 2, 3, -1])
def test_batch_norm_in_channels_last_memory_on_any_axis(name, axis):
    """The channel axis names a dim of the NCHW shape whatever the memory format."""
    op = ops.OPS[name]
    case = sample(op, False, seed=axis % 4)
    rng = np.random.default_rng(axis % 4)
    inputs = dict(case.inputs, x=rng.standard_normal((3, 4, 5, 6)).astype(np.float32))
    c = inputs["x"].shape[axis]
    inputs.update(
        {
            n: rng.uniform(0.5, 2, c).astype(np.float32)
            for n in inputs
            if n != "x" and inputs[n] is not None
        }
    )
    case = ops.Case(op, inputs, dict(case.params, axis=axis), case.seed)
    ours = tensors(case, True, requires_grad=op.backward_args is not None)
    theirs = tensors(case, False, torch.float64, requires_grad=op.backward_args is not None)
    assert _tensors.memory_order(ours["x"]) == _tensors.CHANNELS_LAST
    out = getattr(ft, name)(**ours, **keywords(case))
    y = out[0] if isinstance(out, tuple) else out
    expected = op.torch(F, case)(*theirs.values())
    assert_close(op, y, expected)
    assert_memory_format_of(ours["x"], y)
    if op.backward_args is not None:
        dy = torch.from_numpy(rng.standard_normal(y.shape))
        got = torch.autograd.grad(y, list(ours.values()), dy.float())
        for g, w in zip(got, torch.autograd.grad(expected, list(theirs.values()), dy)):
            assert_close(op, g, w)


def sample(op, channels_last, seed):
    """A case of `op` whose x can go in the memory format asked for."""
    rng = np.random.default_rng(seed)
    while True:
        case, cl = torch_case(op.draw_case(rng, CPU_LIMITS), channels_last)
        if cl == channels_last:
            return case


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("spec", [pytest.param(s, id=s.name) for s in library.SPECS.values()])
def test_opcheck(spec, channels_last):
    """torch.library.opcheck: schema, fake kernel (shapes and strides) against the real one,
    autograd registration, and tracing with dynamic shapes (forward and backward)."""
    op = spec.op
    case = sample(op, channels_last, seed=len(spec.name))
    given = tensors(case, channels_last)
    arguments = dict(keywords(case), **given, need_dx=True, need_dbias=True, need_dw=True)
    if spec.backward:
        out = getattr(ft, op.name)(**given, **keywords(case))
        arguments.update(zip(op.outputs, out if isinstance(out, tuple) else (out,)))
        arguments["dy"] = torch.randn_like(arguments["y"])
    elif op.backward_args is not None:  # the autograd formula is checked too
        for t in given.values():
            t.requires_grad_(True)
    args = tuple(arguments.get(n) for n in spec.tensors)
    result = torch.library.opcheck(
        getattr(torch.ops.fastconv, spec.name).default,
        args,
        library._schema_values(spec, arguments),
    )
    assert set(result.values()) == {"SUCCESS"}, result


# ---------------------------------------------------------------------------------------
# Layouts, no copies


@pytest.mark.parametrize("channels_last", [False, True])
def test_activations_reach_fastconv_without_a_copy(monkeypatch, channels_last):
    """x's own memory is what the kernels read, in the layout of its memory format; y is the
    array fastconv wrote, as an NCHW-shaped tensor in the same memory format."""
    seen = {}
    forward = functional._conv_forward

    def spy(x, w, bias, what, **geometry):
        seen.update(x=x, layout=geometry["layout"])
        seen["y"] = forward(x, w, bias, what, **geometry)
        return seen["y"]

    monkeypatch.setattr(functional, "_conv_forward", spy)
    x = torch.randn(2, 5, 6, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = ft.conv2d(x, torch.randn(4, 5, 3, 3), padding="same")
    assert seen["layout"] == ("NHWC" if channels_last else "NCHW")
    assert seen["x"].flags.c_contiguous and np.shares_memory(seen["x"], x.numpy())
    assert y.data_ptr() == seen["y"].ctypes.data and y.shape == (2, 4, 6, 7)
    assert_memory_format_of(x, y)


def test_a_gradient_in_another_memory_format_is_converted_once():
    """dy need not share x's memory format (here a contiguous dy for a channels_last x):
    the backward converts it and returns dx in x's format."""
    x = torch.randn(2, 3, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = ft.max_pool2d(x, 2)
    dy = torch.randn(y.shape)
    (dx,) = torch.autograd.grad(y, x, dy)
    expected = torch.autograd.grad(F.max_pool2d(x, 2), x, dy)[0]
    assert torch.equal(dx, expected) and dx.is_contiguous(memory_format=torch.channels_last)


def test_padding_forms_reach_the_operator_explicitly():
    """'same' (TensorFlow's rule, any stride), asymmetric pairs and ints become
    [top, bottom, left, right] before the operator; stride None becomes the kernel size."""
    x, w = torch.randn(1, 2, 7, 8), torch.randn(3, 2, 4, 3)
    spec = library.SPECS["conv2d"]
    values = library._schema_values(
        spec, dict(x=x, w=w, stride=2, padding="same", dilation=1, groups=1)
    )
    assert values == dict(stride=[2, 2], padding=[1, 2, 0, 1], dilation=[1, 1], groups=1)
    values = library._schema_values(
        spec, dict(x=x, w=w, stride=(1, 2), padding=((0, 2), (1, 0)), dilation=2, groups=1)
    )
    assert values["padding"] == [0, 2, 1, 0] and values["dilation"] == [2, 2]
    pool = library._schema_values(
        library.SPECS["max_pool2d"], dict(x=x, kernel_size=3, stride=None, padding=1)
    )
    assert pool == dict(kernel_size=[3, 3], stride=[3, 3], padding=[1, 1, 1, 1])


def test_the_functions_take_fastconvs_arguments():
    rng = np.random.default_rng(3)
    x, w = (
        rng.standard_normal((2, 3, 9, 8), np.float32),
        rng.standard_normal((4, 3, 3, 2), np.float32),
    )
    kw = dict(stride=(2, 1), padding="same", dilation=(1, 2))
    y = ft.conv2d(torch.from_numpy(x), torch.from_numpy(w), **kw)
    np.testing.assert_array_equal(y.numpy(), fastconv.conv2d(x, w, **kw))
    y, mean, var = ft.batch_norm(torch.from_numpy(x), activation="gelu")  # channel axis 1
    expected = fastconv.batch_norm(x, axis=1, activation="gelu")
    for got, want in zip((y, mean, var), expected):
        np.testing.assert_array_equal(got.numpy(), want)


def test_the_functions_bind_arguments_as_python_does():
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    expected = ft.conv2d(x, w, None, stride=1, padding=1)
    for call in (
        lambda: ft.conv2d(x, w, padding=1),
        lambda: ft.conv2d(w=w, x=x, padding=(1, 1)),
        lambda: ft.conv2d(x, w, bias=None, padding=((1, 1), (1, 1)), groups=1),
    ):
        assert torch.equal(call(), expected)
    bad = {
        "positional argument": lambda: ft.conv2d(x, w, None, 1),
        "multiple values": lambda: ft.conv2d(x, w, x=x),
        "unexpected keyword": lambda: ft.conv2d(x, w, layout="NHWC"),
        "missing a required": lambda: ft.conv2d(x),
    }
    for message, call in bad.items():
        with pytest.raises(TypeError, match=message):
            call()


# ---------------------------------------------------------------------------------------
# What fastconv does not do


def test_other_dtypes_are_refused_naming_the_cast():
    with pytest.raises(TypeError, match=r"x has dtype torch.float64.*x\.float\(\)"):
        ft.conv2d(torch.randn(1, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 3, 3))
    with pytest.raises(TypeError, match=r"w has dtype torch.float16.*w\.float\(\)"):
        torch.ops.fastconv.pointwise_conv2d(torch.randn(1, 2, 4, 4), torch.randn(3, 2).half(), None)


def test_tensors_on_two_devices_are_refused():
    with pytest.raises(ValueError, match="one device"):
        ft.conv2d(torch.randn(1, 2, 4, 4), torch.randn(3, 2, 3, 3, device="meta"))


def test_inference_batch_norm_refuses_inputs_that_require_grad():
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    mean, var = torch.zeros(3), torch.ones(3)
    with pytest.raises(RuntimeError, match="batch_norm_inference has no derivative.*x requires"):
        ft.batch_norm_inference(x, mean, var)
    with torch.no_grad():
        y = ft.batch_norm_inference(x, mean, var, eps=0.0)
    assert torch.equal(y, x.detach())


def test_second_derivatives_are_refused():
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    y = ft.conv2d(x, w, padding=1)
    with pytest.raises(RuntimeError, match="conv2d_backward has no derivative.*first derivatives"):
        torch.autograd.grad(y.square().sum(), x, create_graph=True)


def test_bad_arguments_fail_with_fastconvs_messages():
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(ValueError, match="more than half the kernel"):
        ft.max_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match="groups=2 must divide"):
        ft.conv2d(torch.randn(1, 3, 5, 5), torch.randn(4, 1, 3, 3), groups=2)


# ---------------------------------------------------------------------------------------
# CUDA


def test_gpu_calls_enter_the_tensors_device_and_torchs_stream_there(monkeypatch):
    """The plumbing of on_device for a tensor on cuda:1, with PyTorch's and CuPy's CUDA calls
    replaced by fakes that record what they are asked (the CUDA tests below run the real
    thing on a GPU): PyTorch's and CuPy's device 1, CuPy's stream = PyTorch's current stream
    on device 1, entered in that order and left in reverse."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    from fastconv import _gpu

    log = []

    def recorded(*what):
        @contextmanager
        def context():
            log.append(("enter", *what))
            yield
            log.append(("exit", *what))

        return context()

    cuda = SimpleNamespace(
        Device=lambda i: recorded("cupy device", i),
        ExternalStream=lambda ptr, i: recorded("cupy stream", ptr, i),
    )
    monkeypatch.setattr(_gpu, "cupy", lambda: SimpleNamespace(cuda=cuda))
    monkeypatch.setattr(
        torch.cuda,
        "current_stream",
        lambda device: SimpleNamespace(cuda_stream=1000 + device.index),
    )
    monkeypatch.setattr(torch.cuda, "device", lambda device: recorded("torch device", device.index))
    with _tensors.on_device(torch.device("cuda", 1)):
        log.append("call")
    entered = [("torch device", 1), ("cupy device", 1), ("cupy stream", 1001, 1)]
    assert log == (
        [("enter", *e) for e in entered] + ["call"] + [("exit", *e) for e in reversed(entered)]
    )
    with pytest.raises(TypeError, match="CPU and CUDA tensors"):
        _tensors.on_device(torch.device("meta"))


cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or not fastconv.cuda_available()[0],
    reason="needs a CUDA GPU, fastconv's CUDA module and CuPy",
)


@cuda
@pytest.mark.parametrize("op", ops_with())
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_op_on_cuda_matches_the_cpu(op, channels_last):
    case = sample(op, channels_last, seed=7)
    differentiable = op.backward_args is not None
    on_cpu = tensors(case, channels_last, requires_grad=differentiable)
    on_gpu = {n: t.detach().cuda().requires_grad_(differentiable) for n, t in on_cpu.items()}
    y_cpu, y_gpu = (getattr(ft, op.name)(**given, **keywords(case)) for given in (on_cpu, on_gpu))
    y_cpu, y_gpu = (y[0] if isinstance(y, tuple) else y for y in (y_cpu, y_gpu))
    assert y_gpu.device == on_gpu["x"].device
    assert_close(op, y_gpu.cpu(), y_cpu)
    if differentiable:
        dy = torch.randn(y_cpu.shape)
        for g_cpu, g_gpu in zip(
            torch.autograd.grad(y_cpu, list(on_cpu.values()), dy),
            torch.autograd.grad(y_gpu, list(on_gpu.values()), dy.cuda()),
        ):
            assert_close(op, g_gpu.cpu(), g_cpu)


@cuda
def test_cuda_kernels_run_on_torchs_current_stream(monkeypatch):
    """On a side stream, fastconv's kernels are queued on that stream (no synchronisation
    needed before torch reads the result there), on the tensors' device."""
    from fastconv import _gpu

    streams = []
    kernels = _gpu.kernels

    def spy():
        cp = _gpu.cupy()
        inner = kernels()

        class Spy:
            def __getattr__(self, name):
                streams.append((cp.cuda.get_current_stream().ptr, cp.cuda.Device().id))
                return getattr(inner, name)

        return Spy()

    monkeypatch.setattr(_gpu, "kernels", spy)
    x, w = torch.randn(8, 16, 32, 32, device="cuda"), torch.randn(16, 16, 3, 3, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # keeps the side stream busy: a wrong stream reads early
        x2 = x * 2
        y = ft.conv2d(x2, w, padding=1)
        expected = F.conv2d(x2, w, padding=1)
    side.synchronize()
    assert streams and all(s == (side.cuda_stream, x.device.index) for s in streams)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(
    torch.cuda.device_count() < 2 or not fastconv.cuda_available()[0], reason="needs two CUDA GPUs"
)
def test_cuda_tensors_run_on_their_own_gpu_under_another_current_device():
    x = torch.randn(2, 3, 8, 8, device="cuda:1", requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device="cuda:1", requires_grad=True)
    with torch.cuda.device(0):
        y = ft.conv2d(x, w, padding=1)
        (dx, dw) = torch.autograd.grad(y.sum(), (x, w))
    assert y.device == dx.device == dw.device == torch.device("cuda:1")
    xc, wc = x.detach().cpu().requires_grad_(), w.detach().cpu().requires_grad_()
    yc = F.conv2d(xc, wc, padding=1)
    torch.testing.assert_close(y.cpu(), yc, rtol=1e-4, atol=1e-4)
    for got, want in zip((dx, dw), torch.autograd.grad(yc.sum(), (xc, wc))):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)

"""fastconv/_gpu.py (the CuPy side of the GPU path) exercised without a GPU.

A stand-in for CuPy keeps arrays in host memory behind `__cuda_array_interface__`, and the
CUDA kernels run under the CPU harness (fastconv._cuda_harness, which reads that interface
like fastconv._cuda does). So the whole GPU call chain — functional API, backend choice,
device choice, output allocation on the inputs' device, the stream handed to the kernels,
the binding layer's buffer checks and the empty-batch path — runs against the NumPy
reference here; only CuPy itself and the device are not covered (tests/test_gpu.py covers
them on a GPU).
"""

import contextlib
import types

import numpy as np
import pytest
from hypothesis import given, settings

import fastconv
from fastconv import _backend, _gpu, ops

from op_cases import (
    BATCH_NORM_SPLIT_CASES,
    HARNESS_LIMITS,
    case_of,
    check_batch_norm,
    check_batch_norm_nan_channel,
    examples,
)

harness = pytest.importorskip("fastconv._cuda_harness")


class FakeArray(np.ndarray):
    """A 'device' array: host memory posing as CUDA memory on GPU `device_id`."""

    device_id = 0

    @property
    def device(self):
        return types.SimpleNamespace(id=self.device_id)

    def __dlpack_device__(self):
        return (2, self.device_id)  # kDLCUDA: what fastconv._backend.on_gpu asks first

    @property
    def __cuda_array_interface__(self):
        interface = self.__array_interface__
        return dict(
            shape=self.shape,
            typestr=interface["typestr"],
            strides=interface["strides"],
            data=interface["data"],
            version=3,
        )


class FakeCuPy:
    """What _backend, _args and _gpu use of CuPy: devices with a current stream each,
    allocation on the current device."""

    def __init__(self):
        self.current = 0
        self.ndarray, self.float32, self.__version__ = FakeArray, np.float32, "fake"
        self.cuda = types.SimpleNamespace(
            Device=self.device,
            get_current_stream=lambda: types.SimpleNamespace(ptr=self.stream_of(self.current)),
        )

    @staticmethod
    def stream_of(device):
        return 0x5EED + device

    def device(self, device_id=None):
        fake = self

        class Device(contextlib.AbstractContextManager):
            id = fake.current if device_id is None else device_id

            def __enter__(self):
                self.previous, fake.current = fake.current, self.id
                return self

            def __exit__(self, *exc):
                fake.current = self.previous

        return Device()

    def asarray(self, a, device=None):
        out = np.array(a, dtype=np.asarray(a).dtype).view(FakeArray)
        out.device_id = self.current if device is None else device
        return out

    def empty(self, shape, dtype):
        return self.asarray(np.empty(shape, dtype))

    def from_dlpack(self, producer):
        """CuPy's side of the DLPack handshake: hands the producer its current stream."""
        return self.asarray(producer.__dlpack__(stream=self.stream_of(self.current)))

    def empty_like(self, a):
        return self.empty(a.shape, a.dtype)

    def ascontiguousarray(self, a):
        return a if a.flags.c_contiguous else self.asarray(np.ascontiguousarray(a), a.device_id)


class Recorder:
    """fastconv._cuda_harness, noting the stream and current device of every call."""

    def __init__(self, module, cp):
        self.module, self.cp, self.calls = module, cp, []

    def __getattr__(self, name):
        kernel = getattr(self.module, name)

        def call(*args, stream):
            self.calls.append((name, stream, self.cp.current))
            return kernel(*args, stream=stream)

        return call


@pytest.fixture()
def fake_gpu():
    cp = FakeCuPy()
    native = Recorder(harness, cp)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_gpu, "_modules", lambda: (cp, native))
        yield cp, native


@settings(max_examples=examples(30))
@given(data=case_of(ops.OPS.values(), HARNESS_LIMITS))
def test_every_op_through_the_gpu_path(data):
    op, case = data
    cp = FakeCuPy()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_gpu, "_modules", lambda: (cp, Recorder(harness, cp)))
        worst, bad = ops.check(op, case, dev=cp.asarray, host=np.asarray)
    assert bad is None, (bad, case)


@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("shape,axis", BATCH_NORM_SPLIT_CASES[:3])  # NCHW, NHWC, rank 2
def test_batch_norm(fake_gpu, shape, axis, activation):
    cp, _ = fake_gpu
    check_batch_norm(cp.asarray, np.asarray, shape, axis, activation is None, activation, 1)
    check_batch_norm_nan_channel(cp.asarray, np.asarray, shape, axis)


def test_batch_norm_runs_no_reference_code(fake_gpu, monkeypatch):
    """CUDA arrays reach the CUDA kernels: there is no fallback to fastconv.reference."""
    cp, native = fake_gpu

    def forbidden(*args, **kwargs):
        raise AssertionError("the GPU path called fastconv.reference")

    for name in ("batch_norm", "batch_norm_inference", "batch_norm_backward"):
        monkeypatch.setattr(fastconv.reference, name, forbidden)
    x = cp.asarray(np.random.default_rng(6).standard_normal((4, 3)).astype(np.float32))
    y, mean, var = fastconv.batch_norm(x, activation="relu")
    fastconv.batch_norm_inference(x, mean, var)
    fastconv.batch_norm_backward(y, x, mean, var)
    assert [name for name, _, _ in native.calls] == [
        "batch_norm_forward",
        "batch_norm_inference",
        "batch_norm_backward",
    ]
    assert all(isinstance(a, FakeArray) for a in (y, mean, var))


def test_results_are_device_arrays_and_empty_batch(fake_gpu):
    cp, _ = fake_gpu
    x, w = (
        cp.asarray(np.zeros((0, 3, 5, 5), np.float32)),
        cp.asarray(np.ones((4, 3, 3, 3), np.float32)),
    )
    y = fastconv.conv2d(x, w)
    assert isinstance(y, FakeArray) and y.shape == (0, 4, 3, 3)
    dx, dw, db = fastconv.conv2d_backward(y, x, w)
    assert dx.shape == x.shape and not dw.any() and not db.any()
    g = fastconv.global_avg_pool2d(cp.asarray(np.zeros((0, 3, 4, 4), np.float32)))
    assert isinstance(g, FakeArray) and g.shape == (0, 3)


def test_outputs_live_on_the_inputs_device_and_kernels_run_there(fake_gpu):
    cp, native = fake_gpu
    rng = np.random.default_rng(5)
    x = cp.asarray(rng.standard_normal((1, 2, 6, 6)).astype(np.float32), device=1)
    w = cp.asarray(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), device=1)
    assert cp.current == 0  # the inputs' device is not the current one
    y = fastconv.conv2d(x, w, padding=1)
    dx, dw, _ = fastconv.conv2d_backward(y, x, w, padding=1)
    p = fastconv.max_pool2d(y, 2)
    assert {a.device.id for a in (y, dx, dw, p)} == {1}
    assert {(stream, device) for _, stream, device in native.calls} == {(cp.stream_of(1), 1)}
    np.testing.assert_allclose(
        y, fastconv.reference.conv2d(np.asarray(x), np.asarray(w), padding=1), rtol=1e-5, atol=1e-5
    )


def test_arrays_on_two_devices_are_refused(fake_gpu):
    cp, _ = fake_gpu
    x = cp.asarray(np.ones((1, 1, 3, 3), np.float32), device=0)
    w = cp.asarray(np.ones((1, 1, 1, 1), np.float32), device=1)
    with pytest.raises(ValueError, match="GPUs \\[0, 1\\]"):
        fastconv.conv2d(x, w)


def test_binding_checks_the_device_buffers(fake_gpu):
    cp, _ = fake_gpu
    x, w = (
        cp.asarray(np.zeros((1, 1, 4, 4), np.float32)),
        cp.asarray(np.zeros((1, 1, 3, 3), np.float32)),
    )
    g = fastconv._args.conv_geometry(
        x.shape, w.shape, stride=1, padding=0, dilation=1, groups=1, layout="NCHW"
    )
    kernels = _gpu.kernels()
    with pytest.raises(ValueError, match="elements"):
        kernels.conv2d_forward(x, w, None, cp.asarray(np.zeros((1, 1, 3, 3), np.float32)), g)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.conv2d_forward(
            cp.asarray(np.zeros((1, 1, 8, 8), np.float32))[:, :, ::2, ::2],
            w,
            None,
            cp.asarray(np.zeros((1, 1, 2, 2), np.float32)),
            g,
        )


def test_mixing_host_and_device_arrays_raises(fake_gpu):
    cp, _ = fake_gpu
    with pytest.raises(TypeError, match="same device"):
        fastconv.conv2d(
            np.ones((1, 1, 3, 3), np.float32), cp.asarray(np.ones((1, 1, 1, 1), np.float32))
        )


class ForeignTensor:
    """Another library's CUDA array (say a PyTorch tensor): DLPack and the array interface,
    noting which one fastconv used and which stream the DLPack handshake named."""

    def __init__(self, a, requires_grad=False):
        self.a, self.requires_grad, self.streams, self.interface_read = a, requires_grad, [], False

    def __dlpack_device__(self):
        return (2, 0)  # kDLCUDA, device 0

    def __dlpack__(self, stream=None):
        if self.requires_grad:
            raise RuntimeError("Can't export tensors that require gradient, use tensor.detach()")
        self.streams.append(stream)
        return self.a

    @property
    def __cuda_array_interface__(self):
        self.interface_read = True
        if self.requires_grad:
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")
        return FakeArray.__cuda_array_interface__.fget(self.a.view(FakeArray))


def test_foreign_arrays_come_through_dlpack_on_the_current_stream(fake_gpu):
    """DLPack's handshake tells the producer which stream reads the array (the array
    interface carries none for PyTorch), so it is preferred."""
    cp, _ = fake_gpu
    rng = np.random.default_rng(7)
    x = ForeignTensor(rng.standard_normal((1, 2, 5, 5)).astype(np.float32))
    w = ForeignTensor(rng.standard_normal((3, 2, 3, 3)).astype(np.float32))
    y = fastconv.conv2d(x, w, padding=1)
    assert isinstance(y, FakeArray)
    assert x.streams == [cp.stream_of(0)] and not x.interface_read
    np.testing.assert_allclose(
        y, fastconv.reference.conv2d(x.a, w.a, padding=1), rtol=1e-5, atol=1e-5
    )


def test_a_tensor_that_requires_grad_gets_a_clear_error(fake_gpu):
    cp, _ = fake_gpu
    x = ForeignTensor(np.ones((1, 1, 4, 4), np.float32), requires_grad=True)
    assert _backend.on_gpu(x)  # the array interface's RuntimeError does not escape the probe
    with pytest.raises(TypeError, match=r"x\.detach\(\)"):
        fastconv.max_pool2d(x, 2)

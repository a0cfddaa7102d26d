"""fastconv/_gpu.py (the CuPy side of the GPU path) exercised without a GPU.

A stand-in for CuPy keeps arrays in host memory, and a stand-in for fastconv._cuda takes the
raw pointers, the stream and the workspace that _gpu.py passes, finds the arrays behind them
and runs the CUDA kernels under the CPU harness. So the whole GPU call chain — functional API,
backend choice, buffer checks, pointer passing, workspace sizes, the empty-batch path — runs
against the NumPy reference here; only CuPy itself and the device are not covered
(tests/test_gpu.py covers them on a GPU).
"""
import types

import numpy as np
import pytest

import fastconv
from fastconv import _backend, _gpu

from op_cases import (BATCH_NORM_SPLIT_CASES, check_batch_norm, check_batch_norm_nan_channel,
                        check_conv, check_global_pool, check_pointwise, check_pool,
                        check_separable, nchw_to, rand)

harness = pytest.importorskip("fastconv._cuda_harness")
cuda = pytest.importorskip("fastconv._cuda", reason="the workspace sizes come from _cuda")


class FakeArray(np.ndarray):
    """A 'device' array: host memory with CuPy's .device.id and .data.ptr."""

    @property
    def device(self):
        return types.SimpleNamespace(id=0)

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])


class FakeDevice:
    def __init__(self, device_id):
        assert device_id == 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


STREAM = 0x5EED  # the "current stream" of the CuPy stand-in


class FakeNative:
    """fastconv._cuda's interface on pointers, running the harness kernels."""

    def __init__(self):
        self.arrays = {}        # pointer -> the array allocated there
        self.workspaces = []    # floats of workspace per reducing call
        self.streams = set()    # every stream a kernel was queued on

    def track(self, a):
        a = a.view(FakeArray)
        self.arrays[a.data.ptr] = a
        return a

    def array(self, pointer):
        return None if pointer == 0 else np.asarray(self.arrays[pointer]).reshape(-1)

    def record_workspace(self, pointer, needed):
        provided = 0 if pointer == 0 else self.arrays[pointer].size
        assert provided == needed, f"workspace of {provided} floats, the kernel needs {needed}"
        self.workspaces.append(needed)

    def conv2d_forward(self, x, w, bias, y, g, stream):
        self.streams.add(stream)
        harness.conv2d_forward(self.array(x), self.array(w), self.array(bias), self.array(y), g)

    def conv2d_backward_input(self, dy, w, dx, g, stream):
        self.streams.add(stream)
        harness.conv2d_backward_input(self.array(dy), self.array(w), self.array(dx), g)

    def conv2d_backward_weight_workspace(self, g):
        return cuda.conv2d_backward_weight_workspace(g)

    def conv2d_backward_weight(self, dy, x, dw, workspace, g, stream):
        self.streams.add(stream)
        self.record_workspace(workspace, cuda.conv2d_backward_weight_workspace(g))
        harness.conv2d_backward_weight(self.array(dy), self.array(x), self.array(dw), g)

    def bias_backward_workspace(self, g):
        return cuda.bias_backward_workspace(g)

    def bias_backward(self, dy, dbias, workspace, g, stream):
        self.streams.add(stream)
        self.record_workspace(workspace, cuda.bias_backward_workspace(g))
        harness.bias_backward(self.array(dy), self.array(dbias), g)

    def pool2d_forward(self, x, y, g, stream):
        self.streams.add(stream)
        harness.pool2d_forward(self.array(x), self.array(y), g)

    def pool2d_backward_workspace(self, g):
        return cuda.pool2d_backward_workspace(g)

    def pool2d_backward(self, dy, x, dx, workspace, g, stream):
        self.streams.add(stream)
        self.record_workspace(workspace, cuda.pool2d_backward_workspace(g))
        harness.pool2d_backward(self.array(dy), self.array(x), self.array(dx), g)

    def batch_norm_forward_workspace(self, shape):
        return cuda.batch_norm_forward_workspace(shape)

    def batch_norm_forward(self, x, gamma, beta, eps, activation, y, mean, var, workspace, shape,
                           stream):
        self.streams.add(stream)
        self.record_workspace(workspace, cuda.batch_norm_forward_workspace(shape))
        harness.batch_norm_forward(self.array(x), self.array(gamma), self.array(beta), eps,
                                   activation, self.array(y), self.array(mean), self.array(var),
                                   shape)

    def batch_norm_inference_workspace(self, shape):
        return cuda.batch_norm_inference_workspace(shape)

    def batch_norm_inference(self, x, mean, var, gamma, beta, eps, activation, y, workspace,
                             shape, stream):
        self.streams.add(stream)
        self.record_workspace(workspace, cuda.batch_norm_inference_workspace(shape))
        harness.batch_norm_inference(self.array(x), self.array(mean), self.array(var),
                                     self.array(gamma), self.array(beta), eps, activation,
                                     self.array(y), shape)

    def batch_norm_backward_workspace(self, shape):
        return cuda.batch_norm_backward_workspace(shape)

    def batch_norm_backward(self, dy, x, mean, var, gamma, beta, eps, activation, dx, dgamma,
                            dbeta, workspace, shape, stream):
        self.streams.add(stream)
        self.record_workspace(workspace, cuda.batch_norm_backward_workspace(shape))
        harness.batch_norm_backward(self.array(dy), self.array(x), self.array(mean),
                                    self.array(var), self.array(gamma), self.array(beta), eps,
                                    activation, self.array(dx), self.array(dgamma),
                                    self.array(dbeta), shape)


@pytest.fixture(scope="module")
def fake_gpu():
    native = FakeNative()
    fake_cupy = types.SimpleNamespace(
        ndarray=FakeArray, float32=np.float32, __version__="fake",
        empty=lambda shape, dtype: native.track(np.empty(shape, dtype)),
        empty_like=lambda a: native.track(np.empty_like(a)),
        ascontiguousarray=lambda a: a if a.flags.c_contiguous else native.track(np.ascontiguousarray(a)),
        cuda=types.SimpleNamespace(Device=FakeDevice,
                                   get_current_stream=lambda: types.SimpleNamespace(ptr=STREAM)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_gpu, "_modules", lambda: (fake_cupy, native))
        patch.setattr(_backend, "_on_gpu", lambda a: isinstance(a, FakeArray))
        yield native


def test_conv2d_grouped_strided(fake_gpu):
    rng = np.random.default_rng(1)
    x = rand(rng, 2, 6, 11, 9)
    w, b = rand(rng, 9, 2, 3, 2), rand(rng, 9)
    for layout in ("NCHW", "NHWC"):
        check_conv(fake_gpu.track, np.asarray, nchw_to(x, layout), w, b,
                   dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2), groups=3,
                        layout=layout), rng)


def test_workspaces_are_as_large_as_the_kernels_need(fake_gpu):
    rng = np.random.default_rng(2)
    fake_gpu.workspaces.clear()
    # 2 x 48 x 48 output pixels: backward-weight and bias both split their reductions.
    check_conv(fake_gpu.track, np.asarray, rand(rng, 2, 4, 48, 48), rand(rng, 8, 4, 3, 3),
               rand(rng, 8), dict(padding=1), rng)
    assert len(fake_gpu.workspaces) == 2 and min(fake_gpu.workspaces) > 0


def test_depthwise_pointwise_separable(fake_gpu):
    rng = np.random.default_rng(3)
    x = rand(rng, 2, 4, 9, 8)
    check_conv(fake_gpu.track, np.asarray, x, rand(rng, 8, 1, 3, 3), rand(rng, 8),
               dict(stride=2, padding="same"), rng, op="depthwise_conv2d")
    check_pointwise(fake_gpu.track, np.asarray, nchw_to(x, "NHWC"), rand(rng, 5, 4), rand(rng, 5),
                    "NHWC", rng)
    check_separable(fake_gpu.track, np.asarray, x, rand(rng, 8, 1, 3, 3), rand(rng, 3, 8),
                    rand(rng, 3), dict(padding=1), rng)


@pytest.mark.parametrize("kind", ["max", "min", "avg", "sum"])
def test_pooling(fake_gpu, kind):
    rng = np.random.default_rng(4)
    x = rng.integers(-2, 3, size=(2, 3, 9, 7)).astype(np.float32)
    fake_gpu.workspaces.clear()
    check_pool(fake_gpu.track, np.asarray, kind, x, 3, dict(stride=2, padding=1, layout="NCHW"), rng)
    assert fake_gpu.workspaces == [2 * 3 * 5 * 4 if kind in ("max", "min") else 0]
    check_global_pool(fake_gpu.track, np.asarray, nchw_to(x, "NHWC"), "NHWC", rng)


@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("shape,axis", BATCH_NORM_SPLIT_CASES[:3])  # NCHW, NHWC, rank 2
def test_batch_norm(fake_gpu, shape, axis, activation):
    check_batch_norm(fake_gpu.track, np.asarray, shape, axis, activation is None, activation, 1)
    check_batch_norm_nan_channel(fake_gpu.track, np.asarray, shape, axis)


def test_batch_norm_workspaces(fake_gpu):
    """(2 * splits + 2) * C floats forward, 2 * C inference, (2 * splits + 5) * C backward:
    1200 NHWC rows of 40 channels make 5 splits of 256 rows."""
    fake_gpu.workspaces.clear()
    check_batch_norm(fake_gpu.track, np.asarray, (3, 20, 20, 40), -1, True, "relu", 2)
    # forward, inference, backward, backward without dx
    assert fake_gpu.workspaces == [12 * 40, 2 * 40, 15 * 40, 15 * 40]


def test_batch_norm_runs_no_reference_code(fake_gpu, monkeypatch):
    """CUDA arrays reach the CUDA kernels: there is no fallback to fastconv.reference."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the GPU path called fastconv.reference")
    for name in ("batch_norm", "batch_norm_inference", "batch_norm_backward"):
        monkeypatch.setattr(fastconv.reference, name, forbidden)
    fake_gpu.workspaces.clear()
    x = fake_gpu.track(rand(np.random.default_rng(6), 4, 3))
    y, mean, var = fastconv.batch_norm(x, activation="relu")
    fastconv.batch_norm_inference(x, mean, var)
    fastconv.batch_norm_backward(y, x, mean, var)
    assert len(fake_gpu.workspaces) == 3
    assert all(isinstance(a, FakeArray) for a in (y, mean, var))


def test_results_are_device_arrays_and_empty_batch(fake_gpu):
    x, w = fake_gpu.track(np.zeros((0, 3, 5, 5), np.float32)), fake_gpu.track(np.ones((4, 3, 3, 3), np.float32))
    y = fastconv.conv2d(x, w)
    assert isinstance(y, FakeArray) and y.shape == (0, 4, 3, 3)
    dx, dw, db = fastconv.conv2d_backward(y, x, w)
    assert dx.shape == x.shape and not dw.any() and not db.any()


def test_buffer_checks(fake_gpu):
    kernels = _gpu.kernels()
    g = (1, 1, 4, 4, 1, 3, 3, 2, 2, 1, 1, 0, 0, 1, 1, 1, 0)
    x, w = fake_gpu.track(np.zeros((1, 1, 4, 4), np.float32)), fake_gpu.track(np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match="elements"):
        kernels.conv2d_forward(x, w, None, fake_gpu.track(np.zeros((1, 1, 3, 3), np.float32)), g)
    with pytest.raises(TypeError, match="CuPy array"):
        kernels.conv2d_forward(np.zeros((1, 1, 4, 4), np.float32), w, None, x, g)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.pool2d_forward(fake_gpu.track(np.zeros((1, 1, 8, 8), np.float32))[:, :, ::2, ::2],
                               fake_gpu.track(np.zeros((1, 1, 2, 2), np.float32)),
                               (1, 1, 4, 4, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0))


def test_batch_norm_buffer_checks(fake_gpu):
    kernels = _gpu.kernels()
    x = fake_gpu.track(np.zeros((4, 3), np.float32))
    channel = lambda n=3: fake_gpu.track(np.zeros(n, np.float32))
    with pytest.raises(ValueError, match="mean has 2 elements"):
        kernels.batch_norm_forward(x, None, None, 1e-3, 0, fake_gpu.track(np.zeros_like(x)),
                                   channel(2), channel(), (4, 3, 1))
    with pytest.raises(TypeError, match="gamma must be a CuPy array"):
        kernels.batch_norm_inference(x, channel(), channel(), np.ones(3, np.float32), None,
                                     1e-3, 0, fake_gpu.track(np.zeros_like(x)), (4, 3, 1))
    with pytest.raises(ValueError, match="dx has 6 elements"):
        kernels.batch_norm_backward(x, x, channel(), channel(), None, None, 1e-3, 0,
                                    fake_gpu.track(np.zeros(6, np.float32)), channel(),
                                    channel(), (4, 3, 1))


def test_kernels_queue_on_the_current_stream(fake_gpu):
    fake_gpu.streams.clear()
    rng = np.random.default_rng(5)
    x = rand(rng, 1, 2, 6, 6)
    check_conv(fake_gpu.track, np.asarray, x, rand(rng, 3, 2, 3, 3), rand(rng, 3), {}, rng)
    check_pool(fake_gpu.track, np.asarray, "max", x, 2, {}, rng)
    check_batch_norm(fake_gpu.track, np.asarray, x.shape, 1, True, "gelu", 3)
    assert fake_gpu.streams == {STREAM}


def test_mixing_host_and_device_arrays_raises(fake_gpu):
    with pytest.raises(TypeError, match="same device"):
        fastconv.conv2d(np.ones((1, 1, 3, 3), np.float32),
                        fake_gpu.track(np.ones((1, 1, 1, 1), np.float32)))

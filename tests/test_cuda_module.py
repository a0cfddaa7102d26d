"""fastconv._cuda (the nvcc build) on any machine: it imports without a GPU, and checks
geometries and buffers before anything reaches the device, so that without a GPU a call
raises instead of crashing. Kernel results are tested in test_cuda_harness.py (CPU) and
test_gpu.py (GPU)."""

from dataclasses import replace

import numpy as np
import pytest

import fastconv
from fastconv import _args

cuda = pytest.importorskip("fastconv._cuda", reason="built without a CUDA compiler")

CONV = _args.conv_geometry(
    (2, 8, 16, 16), (16, 8, 3, 3), stride=1, padding=1, dilation=1, groups=1, layout="NCHW"
)


class HostMemoryPosingAsDevice:
    """An array interface that claims to be CUDA memory but points at host memory."""

    def __init__(self, a):
        self.a = a
        self.__cuda_array_interface__ = dict(
            shape=a.shape, typestr="<f4", strides=None, data=(a.ctypes.data, False), version=3
        )


def arrays():
    return [
        HostMemoryPosingAsDevice(np.zeros(s, np.float32))
        for s in [CONV.x_shape, (16, 8, 3, 3), (16,), CONV.y_shape]
    ]


@pytest.mark.parametrize("field,value", [("c_in", 0), ("stride_h", 0), ("groups", 3), ("oh", 0)])
def test_bad_geometry_raises(field, value):
    with pytest.raises(ValueError, match="invalid geometry"):
        cuda.conv2d_forward(*arrays(), replace(CONV, **{field: value}))


def test_host_arrays_are_refused():
    x, w, b, y = (
        np.zeros(s, np.float32) for s in [CONV.x_shape, (16, 8, 3, 3), (16,), CONV.y_shape]
    )
    with pytest.raises(TypeError, match="must be a CUDA array"):
        cuda.conv2d_forward(x, w, b, y, CONV)


@pytest.mark.skipif(fastconv.cuda_available()[0], reason="a GPU is present")
def test_host_memory_is_not_taken_for_device_memory():
    with pytest.raises(ValueError, match="CUDA memory"):
        cuda.conv2d_forward(*arrays(), CONV)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("outer", 0, "must be positive"),
        ("inner", -1, "must be positive"),
        ("eps", -1.0, "eps"),
        ("activation", 3, "activation"),
    ],
)
def test_bad_batch_norm_geometry_raises(field, value, match):
    g = _args.norm_geometry((4, 3), -1, 1e-3, None, "test")
    x, c = HostMemoryPosingAsDevice(np.zeros((4, 3), np.float32)), np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=match):
        cuda.batch_norm_forward(
            x,
            None,
            None,
            x,
            HostMemoryPosingAsDevice(c),
            HostMemoryPosingAsDevice(c),
            replace(g, **{field: value}),
        )

"""fastconv._cuda (the nvcc build) on any machine: it imports without a GPU, checks
geometries before anything reaches the device, and without a GPU reports a failed launch as
an exception instead of crashing. Kernel results are tested in test_cuda_harness.py (CPU)
and test_gpu.py (GPU)."""
import pytest

import fastconv

cuda = pytest.importorskip("fastconv._cuda", reason="built without a CUDA compiler")

# n, c_in, h, w, c_out, kh, kw, oh, ow, sh, sw, pad_top, pad_left, dh, dw, groups, nhwc
CONV = (2, 8, 16, 16, 16, 3, 3, 16, 16, 1, 1, 1, 1, 1, 1, 1, 0)


def test_workspace_sizes_follow_the_split_rules():
    # 512 output pixels: one backward-weight split, written straight into dw.
    assert cuda.conv2d_backward_weight_workspace(CONV) == 0
    # 128 x 32 x 32 pixels: several splits of the whole weight tensor.
    big = (128,) + CONV[1:2] + (32, 32) + CONV[4:7] + (32, 32) + CONV[9:]
    assert cuda.conv2d_backward_weight_workspace(big) % (16 * 8 * 9) == 0
    assert cuda.conv2d_backward_weight_workspace(big) > 16 * 8 * 9
    assert cuda.bias_backward_workspace(big) == (128 * 32 * 32 // 4096) * 16
    # Max/min pooling backward keeps one winner per output; avg/sum need nothing.
    pool = (2, 3, 8, 8, 2, 2, 4, 4, 2, 2, 0, 0, 0)
    assert cuda.pool2d_backward_workspace(pool + (0, 0)) == 2 * 3 * 4 * 4
    assert cuda.pool2d_backward_workspace(pool + (2, 0)) == 0


def test_batch_norm_workspace_sizes_follow_the_split_rules():
    # NHWC, 128 x 16 x 16 rows of 64 channels: 128 splits of 256 rows.
    nhwc = (128 * 16 * 16, 64, 1)
    assert cuda.batch_norm_forward_workspace(nhwc) == (2 * 128 + 2) * 64
    assert cuda.batch_norm_backward_workspace(nhwc) == (2 * 128 + 5) * 64
    assert cuda.batch_norm_inference_workspace(nhwc) == 2 * 64
    # NCHW, 128 x 16 x 16 elements per channel: 4 splits of 8192.
    assert cuda.batch_norm_forward_workspace((128, 64, 256)) == (2 * 4 + 2) * 64
    # A channel too long for 65535 splits (gridDim.y) of 256 rows: 65281 splits of 257.
    assert cuda.batch_norm_forward_workspace((65535 * 256 + 1, 1, 1)) == 2 * 65281 + 2


@pytest.mark.parametrize("shape,eps,activation,match", [
    ((0, 3, 1), 1e-3, 0, "must be positive"), ((4, 3, -1), 1e-3, 0, "must be positive"),
    ((4, 3, 1), -1.0, 0, "eps"), ((4, 3, 1), 1e-3, 3, "activation"),
    ((1, 2**31, 1), 1e-3, 0, "channels")])
def test_bad_batch_norm_arguments_raise(shape, eps, activation, match):
    with pytest.raises(ValueError, match=match):
        cuda.batch_norm_forward(0, 0, 0, eps, activation, 0, 0, 0, 0, shape, 0)


@pytest.mark.parametrize("field,value", [(1, 0), (9, 0), (15, 3), (7, 0)])
def test_bad_geometry_raises(field, value):
    g = list(CONV)
    g[field] = value
    with pytest.raises(ValueError, match="invalid geometry"):
        cuda.conv2d_forward(0, 0, 0, 0, tuple(g), 0)


@pytest.mark.skipif(fastconv.cuda_available()[0], reason="a GPU is present: the launch would run")
def test_launch_without_a_gpu_raises():
    with pytest.raises(RuntimeError):
        cuda.pool2d_forward(0, 0, (1, 1, 4, 4, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0), 0)

"""The convolution algorithm selector (csrc/cpu/conv2d_algorithm.h), read through
fastconv._cpu.conv_algorithm; each kernel path itself is tested against the reference in
test_conv.py."""

import pytest

import fastconv

from op_cases import conv_algorithm as algorithm


def test_3x3_stride_1_runs_winograd(isa):
    g = dict(padding=1, layout="NHWC")
    assert algorithm("forward", (128, 16, 16, 64), (64, 64, 3, 3), **g) == "winograd_f4x3"
    assert algorithm("backward_weight", (128, 16, 16, 64), (64, 64, 3, 3), **g) == "winograd_f4x3"
    assert (
        algorithm("backward_input", (128, 16, 16, 64), (64, 64, 3, 3), **g)
        == "backward_input_as_forward"
    )
    fastconv._cpu.set_winograd(False)
    try:
        assert algorithm("forward", (128, 16, 16, 64), (64, 64, 3, 3), **g) == "gemm_nhwc"
    finally:
        fastconv._cpu.set_winograd(True)


def test_a_wide_layer_on_a_small_batch_runs_winograd_from_64_tiles(isa):
    """A wide layer on a small batch of 7x7 maps: 128 tiles for 512 channels run Winograd in
    every pass; 48 tiles are too few to pay for transforming the weights."""
    g = dict(padding=1, layout="NHWC")
    for direction in ("forward", "backward_weight"):
        assert algorithm(direction, (32, 7, 7, 512), (512, 512, 3, 3), **g) == "winograd_f4x3"
        assert algorithm(direction, (12, 7, 7, 512), (512, 512, 3, 3), **g) == "gemm_nhwc"


def test_not_winograd(isa):
    # stride 2, a map smaller than a tile, too few channels, a 5x5 kernel
    assert "winograd" not in algorithm(
        "forward", (128, 64, 32, 32), (128, 64, 3, 3), stride=2, padding=1
    )
    assert "winograd" not in algorithm("forward", (128, 256, 2, 2), (256, 256, 3, 3), padding=1)
    assert "winograd" not in algorithm("forward", (128, 3, 32, 32), (64, 3, 3, 3), padding=1)
    assert "winograd" not in algorithm(
        "forward", (128, 32, 32, 32), (64, 32, 5, 5), padding=2, dilation=2
    )
    assert "winograd" not in algorithm("forward", (128, 32, 32, 32), (64, 32, 7, 7), padding=3)


@pytest.mark.parametrize(
    "side,variant",
    [(3, "f3x3"), (5, "f3x3"), (6, "f3x3"), (7, "f4x3"), (9, "f3x3"), (12, "f4x3"), (15, "f4x3")],
)
def test_3x3_kernels_take_the_tile_with_fewer_transform_points(isa, side, variant):
    """F(3x3, 3x3) transforms 25 points per 3x3 tile, F(4x4, 3x3) 36 per 4x4 tile: a 7x7 map
    is 9 tiles of 3 (225 points) or 4 of 4 (144), a 9x9 map 9 of 3 (225) or 9 of 4 (324)."""
    x, w = (128, side, side, 64), (64, 64, 3, 3)
    assert algorithm("forward", x, w, padding=1, layout="NHWC") == f"winograd_{variant}"


def test_5x5_stride_1_runs_winograd_f2x5(isa):
    x, w = (128, 32, 32, 32), (64, 32, 5, 5)
    assert algorithm("forward", x, w, padding=2) == "winograd_f2x5"
    assert algorithm("backward_weight", x, w, padding=2) == "winograd_f2x5"
    assert algorithm("backward_input", x, w, padding=2) == "backward_input_as_forward"


def test_strided_input_gradient_scatters(isa):
    assert (
        algorithm("backward_input", (8, 64, 32, 32), (128, 64, 3, 3), stride=2, padding=1)
        == "col2im_nchw"
    )
    assert (
        algorithm(
            "backward_input", (8, 32, 32, 64), (128, 64, 3, 3), stride=2, padding=1, layout="NHWC"
        )
        == "col2im_nhwc"
    )


@pytest.mark.parametrize("direction", ["forward", "backward_input", "backward_weight"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_depthwise(isa, direction, layout):
    x = (8, 32, 16, 16) if layout == "NCHW" else (8, 16, 16, 32)
    assert (
        algorithm(direction, x, (64, 1, 3, 3), padding=1, groups=32, layout=layout)
        == f"depthwise_{layout.lower()}"
    )


@pytest.mark.parametrize("direction", ["forward", "backward_input", "backward_weight"])
def test_few_input_channels_run_direct_in_nhwc(isa, direction):
    """Fewer than 16 input channels in one group, NHWC: the direct kernels, whatever the
    kernel, stride or padding; NCHW, 16 channels and grouped layers keep the GEMMs."""
    nhwc = dict(layout="NHWC")
    assert algorithm(direction, (8, 32, 32, 3), (24, 3, 2, 2), **nhwc) == "direct_nhwc"
    assert (
        algorithm(direction, (8, 64, 64, 3), (64, 3, 7, 7), stride=2, padding=3, **nhwc)
        == "direct_nhwc"
    )
    assert algorithm(direction, (8, 16, 16, 15), (32, 15, 1, 1), **nhwc) == "direct_nhwc"
    assert "direct" not in algorithm(direction, (8, 3, 32, 32), (24, 3, 2, 2))
    assert "direct" not in algorithm(direction, (8, 16, 16, 16), (32, 16, 3, 3), stride=2, **nhwc)
    assert "direct" not in algorithm(direction, (8, 9, 9, 6), (12, 2, 3, 3), groups=3, **nhwc)


def test_bad_direction():
    with pytest.raises(ValueError, match="direction must be"):
        algorithm("sideways", (1, 16, 8, 8), (16, 16, 3, 3))


def test_3x3_maps(isa):
    """A 3x3 map is one whole F(3x3, 3x3) tile: Winograd in every pass (dx as a forward of
    dy) on every ISA, 128 tiles for 256 channels included."""
    x, w = (128, 256, 3, 3), (256, 256, 3, 3)
    assert algorithm("forward", x, w, padding=1) == "winograd_f3x3"
    assert algorithm("backward_weight", x, w, padding=1) == "winograd_f3x3"

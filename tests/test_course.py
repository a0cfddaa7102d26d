"""examples/course.py prints the course's worked examples: every number it prints is checked
against a value worked out by hand here."""

import re
import runpy
import sys
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "course.py"


@pytest.fixture(scope="module")
def printed():
    """{section title: its indented lines} of the example's output."""
    out, argv = StringIO(), sys.argv
    sys.argv = [str(EXAMPLE)]
    try:
        with redirect_stdout(out):
            runpy.run_path(str(EXAMPLE), run_name="__main__")
    finally:
        sys.argv = argv
    sections, title = {}, None
    for line in out.getvalue().splitlines():
        if line.startswith("  "):
            sections[title].append(line.strip())
        else:
            title = line.rstrip(":")
            sections[title] = []
    return sections


def matrix(lines):
    return [[float(v) for v in line.split()] for line in lines]


# cross-correlation with [[0, 1], [1, 2]]: y[i, j] = x[i, j+1] + x[i+1, j] + 2 x[i+1, j+1]
# of the image [[3, 0, 1, 2], [1, 4, 2, 0], [0, 2, 5, 1], [2, 1, 0, 3]]
@pytest.mark.parametrize(
    "title, expected",
    [
        ("input image", [[3, 0, 1, 2], [1, 4, 2, 0], [0, 2, 5, 1], [2, 1, 0, 3]]),
        ("filter", [[0, 1], [1, 2]]),
        # e.g. top left 0 + 1 + 2*4 = 9, centre 2 + 2 + 2*5 = 14
        ("feature map (stride 1, no padding)", [[9, 9, 4], [8, 14, 7], [6, 6, 7]]),
        # the windows at rows and columns 0 and 2 only
        ("feature map (stride 2)", [[9, 4], [6, 7]]),
        # one zero row below and column to the right: the last column reads x[i+1, 3], the
        # last row x[3, j+1]
        (
            "feature map (padding 'same', stride 1)",
            [[9, 9, 4, 0], [8, 14, 7, 1], [6, 6, 7, 3], [1, 0, 3, 0]],
        ),
        ("pooling input", [[1, 3, 2, 4], [5, 6, 1, 2], [7, 2, 9, 0], [1, 8, 3, 4]]),
        ("max pooling (2x2 windows, stride 2)", [[6, 4], [8, 9]]),
        ("min pooling (2x2 windows, stride 2)", [[1, 1], [1, 0]]),
        ("sum pooling (2x2 windows, stride 2)", [[15, 9], [18, 16]]),  # 1+3+5+6, 2+4+1+2, ...
        ("average pooling (2x2 windows, stride 2)", [[3.75, 2.25], [4.5, 4]]),  # the sums / 4
    ],
)
def test_arrays(printed, title, expected):
    assert matrix(printed[title]) == expected


def test_output_sizes(printed):
    pattern = re.compile(r"W=(\d+) F=(\d+) P=(\d+) S=(\d+): .* = (\d+)$")
    got = [
        tuple(map(int, pattern.match(line).groups()))
        for line in printed["output size (W - F + 2P) / S + 1"]
    ]
    assert got == [
        (4, 2, 0, 1, 3),
        (4, 2, 0, 2, 2),
        (7, 3, 0, 1, 5),
        (7, 3, 0, 2, 3),
        (7, 3, 0, 3, 2),
        (5, 3, 1, 1, 5),
        (32, 5, 2, 1, 32),
        (227, 11, 0, 4, 55),
    ]
    assert (
        "(7 - 3 + 0) / 3 + 1 = 2.33, rounded down = 2"
        in printed["output size (W - F + 2P) / S + 1"][4]
    )


def test_parameter_counts(printed):
    lines = printed["parameters of a 3x3 layer from 16 to 32 channels, as Keras counts them"]
    # Conv2D: 3*3*16*32 weights + 32 biases. Separable: 3*3*16*M depthwise weights, then a
    # 1x1 conv from 16*M to 32 channels with 32 biases
    assert lines == [
        "Conv2D: 4640 = kernel 4608 + bias 32",
        "SeparableConv2D depth_multiplier=1: 688 = depthwise_kernel 144 + "
        "pointwise_kernel 512 + bias 32",
        "SeparableConv2D depth_multiplier=2: 1344 = depthwise_kernel 288 + "
        "pointwise_kernel 1024 + bias 32",
    ]

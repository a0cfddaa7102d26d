"""The CNN course's worked examples, computed with fastconv's kernels and layers:

1. the 2x2 filter [[0, 1], [1, 2]] slid over a small image gives a feature map; the same
   with stride 2 and with 'same' padding;
2. the output size (W - F + 2P) / S + 1 on the course's examples (fastconv.output_size);
3. max, min, sum and average pooling of one small array;
4. the parameters of a Conv2D and of SeparableConv2D layers (depth_multiplier 1 and 2) for
   the same layer shape, counted as Keras counts them.

Run:  python examples/course.py [--pictures DIR]
(--pictures also draws the filter and the max pooling into DIR; needs matplotlib.)
"""

import argparse
import os

import numpy as np

import fastconv as fc
from fastconv.nn import Conv2D, SeparableConv2D, Sequential

IMAGE = np.array([[3, 0, 1, 2], [1, 4, 2, 0], [0, 2, 5, 1], [2, 1, 0, 3]], np.float32)
FILTER = np.array([[0, 1], [1, 2]], np.float32)
POOL_INPUT = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [7, 2, 9, 0], [1, 8, 3, 4]], np.float32)
# (W, F, P, S): this image and filter, then the course's examples
SIZES = [
    (4, 2, 0, 1),
    (4, 2, 0, 2),
    (7, 3, 0, 1),
    (7, 3, 0, 2),
    (7, 3, 0, 3),
    (5, 3, 1, 1),
    (32, 5, 2, 1),
    (227, 11, 0, 4),
]


def show(title, array):
    print(f"{title}:")
    for row in array:
        print("  " + " ".join(f"{v:g}" for v in row))


def feature_map(stride=1, padding=0):
    """IMAGE and FILTER as a batch of one single-channel image and one filter."""
    return fc.conv2d(IMAGE[None, None], FILTER[None, None], stride=stride, padding=padding)[0, 0]


def convolution():
    show("input image", IMAGE)
    show("filter", FILTER)
    # each output pixel: the sum of the 2x2 patch under the filter times the filter
    show("feature map (stride 1, no padding)", feature_map())
    show("feature map (stride 2)", feature_map(stride=2))
    # Keras' 'same': output = input size; the odd padding row and column go after
    show("feature map (padding 'same', stride 1)", feature_map(padding="same"))


def output_sizes():
    print("output size (W - F + 2P) / S + 1:")
    for w, f, p, s in SIZES:
        exact = (w - f + 2 * p) / s + 1
        size = fc.output_size(w, f, p, s)
        rounded = "" if exact == size else f" = {exact:.2f}, rounded down"
        print(f"  W={w} F={f} P={p} S={s}: ({w} - {f} + {2 * p}) / {s} + 1{rounded} = {size}")


def pooling():
    show("pooling input", POOL_INPUT)
    x = POOL_INPUT[None, None]
    for name, pool in (
        ("max", fc.max_pool2d),
        ("min", fc.min_pool2d),
        ("sum", fc.sum_pool2d),
        ("average", fc.avg_pool2d),
    ):
        show(f"{name} pooling (2x2 windows, stride 2)", pool(x, 2)[0, 0])


def parameter_counts():
    print("parameters of a 3x3 layer from 16 to 32 channels, as Keras counts them:")
    for label, layer in (
        ("Conv2D", Conv2D(32, 3)),
        ("SeparableConv2D depth_multiplier=1", SeparableConv2D(32, 3)),
        ("SeparableConv2D depth_multiplier=2", SeparableConv2D(32, 3, depth_multiplier=2)),
    ):
        Sequential([layer], input_shape=(32, 32, 16)).build()
        parts = " + ".join(f"{name} {value.size}" for name, value in layer.params.items())
        print(f"  {label}: {layer.count_params()} = {parts}")


def pictures(folder):
    from fastconv import viz

    os.makedirs(folder, exist_ok=True)
    viz.plot_filters(FILTER, os.path.join(folder, "filter.png"))
    viz.plot_pooling(POOL_INPUT, 2, None, "max", os.path.join(folder, "pooling.png"))
    print(f"wrote {folder}/filter.png and {folder}/pooling.png")


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--pictures", metavar="DIR", help="also draw the filter and the pooling")
    args = p.parse_args()
    convolution()
    output_sizes()
    pooling()
    parameter_counts()
    if args.pictures:
        pictures(args.pictures)


if __name__ == "__main__":
    main()

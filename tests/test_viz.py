"""fastconv.viz: the numbers each picture draws (filters, feature maps, pooling), the files it
writes, the missing-matplotlib message, and `fastconv viz`."""

import sys

import numpy as np
import pytest
from PIL import Image

from fastconv import cli, viz
from fastconv.nn import Conv2D, Dense, Flatten, MaxPooling2D, Sequential, zoo

pytest.importorskip("matplotlib")

COURSE_FILTER = np.array([[0, 1], [1, 2]], np.float32)
IMAGE = np.array([[1, -1, 0, 2], [0, 2, -2, 1], [1, 0, 1, -1], [-1, 1, 0, 2]], np.float32)
# IMAGE cross-correlated with COURSE_FILTER: x[i, j+1] + x[i+1, j] + 2 x[i+1, j+1]
COURSE_MAP = np.array([[3, -2, 2], [3, 0, 0], [1, 2, 3]], np.float32)


def is_png(path):
    with Image.open(path) as im:
        return im.format == "PNG" and min(im.size) > 50


def test_filter_tiles_share_one_scale(tmp_path):
    tiles = viz.plot_filters(COURSE_FILTER, tmp_path / "filter.png")
    np.testing.assert_array_equal(tiles, [[[[0, 0.5], [0.5, 1]]]])
    assert is_png(tmp_path / "filter.png")

    # filters over 3 channels are RGB pictures: 2 filters of 1x1 over (r, g, b)
    rgb = np.array([[-1, 0, 1], [2, 3, 0]], np.float32).reshape(2, 3, 1, 1)
    np.testing.assert_array_equal(viz.filter_tiles(rgb)[:, 0, 0], [[0, 0.25, 0.5], [0.75, 1, 0.25]])
    assert viz.filter_tiles(np.ones((40, 10, 3, 3))).shape == (32, 8, 3, 3)
    flat = viz.filter_tiles(np.ones((1, 1, 2, 2)))  # one value: mid-grey, not a division by 0
    np.testing.assert_array_equal(flat, np.full((1, 1, 2, 2), 0.5))


def test_filters_of_layers(tmp_path):
    model = zoo.tutorial_net()
    conv = viz.first_conv(model)
    assert conv.name == "conv2d"
    tiles = viz.plot_filters(conv, tmp_path / "filters.png")
    kernel = conv.params["kernel"]
    assert tiles.shape == (32, 3, 3, 3)
    np.testing.assert_allclose(
        tiles[5, 1, 2],
        (kernel[5, :, 1, 2] - kernel.min()) / (kernel.max() - kernel.min()),
        rtol=1e-6,
    )
    assert is_png(tmp_path / "filters.png")
    with pytest.raises(ValueError, match="'dense' \\(Dense\\) has no convolution kernel"):
        viz.plot_filters(model.layers[4], tmp_path / "dense.png")
    with pytest.raises(ValueError, match="\\(KH, KW\\) or \\(C_out, C_in, KH, KW\\)"):
        viz.filter_tiles(np.ones(3))


def course_model(data_format="channels_last"):
    """conv (the course filter and its negative, ReLU) -> 2x2 max pool -> Flatten -> Dense."""
    shape = (4, 4, 1) if data_format == "channels_last" else (1, 4, 4)
    model = Sequential(
        [
            Conv2D(2, 2, activation="relu", data_format=data_format, input_shape=shape),
            MaxPooling2D(2, data_format=data_format),
            Flatten(),
            Dense(3),
        ]
    ).build()
    conv, dense = model.layers[0], model.layers[3]
    conv.params["kernel"] = np.stack([COURSE_FILTER, -COURSE_FILTER])[:, None]
    dense.params["kernel"] = np.array([[1, 0, 1], [0, 1, -1]], np.float32)
    dense.params["bias"] = np.array([0, 0, 0.5], np.float32)
    return model


class Chain:
    """Only what feature_maps may rely on (a graph Model has these too): `layers` and
    `running_layers()`, whose layers have `name` and `forward`."""

    def __init__(self, model):
        self.layers, self._running = model.layers, model.running_layers()

    def running_layers(self):
        return self._running


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_feature_maps_stop_at_the_named_layer_after_its_activation(data_format, tmp_path):
    model = course_model(data_format)
    image = IMAGE[:, :, None] if data_format == "channels_last" else IMAGE[None]
    maps = viz.plot_feature_maps(Chain(model), image, "conv2d", tmp_path / "maps.png")
    np.testing.assert_array_equal(maps, [np.maximum(COURSE_MAP, 0), np.maximum(-COURSE_MAP, 0)])
    assert is_png(tmp_path / "maps.png")
    pooled, layout = viz.feature_maps(model, image, "max_pooling2d")
    assert layout == ("NHWC" if data_format == "channels_last" else "NCHW")
    np.testing.assert_array_equal(pooled.ravel(), [3, 2])  # max of the top-left 2x2 windows
    # the last layer: Dense on (3, 2), by hand; and what the whole model computes
    out = viz.plot_feature_maps(model, image, "dense", tmp_path / "dense.png")
    np.testing.assert_array_equal(out, [3, 2, 1.5])
    np.testing.assert_array_equal(out, model.forward(image[None])[0])
    assert is_png(tmp_path / "dense.png")
    with pytest.raises(ValueError, match="no layer 'conv9'; its layers: conv2d, max_pooling2d"):
        viz.feature_maps(model, image, "conv9")


X4 = np.array([[1, 3, 2, 4], [5, 6, 1, 2], [7, 2, 9, 0], [1, 8, 3, 4]], np.float32)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("max", [[6, 4], [8, 9]]),
        ("min", [[1, 1], [1, 0]]),
        ("sum", [[15, 9], [18, 16]]),
        ("avg", [[3.75, 2.25], [4.5, 4]]),
    ],
)
def test_pooling_picture(kind, expected, tmp_path):
    np.testing.assert_array_equal(viz.plot_pooling(X4, 2, None, kind, tmp_path / "p.png"), expected)
    assert is_png(tmp_path / "p.png")


def test_overlapping_pooling_windows(tmp_path):
    y = viz.plot_pooling(X4[:3, :3], 2, 1, "max", tmp_path / "p.png")
    np.testing.assert_array_equal(y, [[6, 6], [7, 9]])
    with pytest.raises(ValueError, match="kind must be one of max, min, sum, avg"):
        viz.plot_pooling(X4, 2, None, "median", tmp_path / "p.png")
    with pytest.raises(ValueError, match="2-D array"):
        viz.plot_pooling(X4[None], 2, None, "max", tmp_path / "p.png")


def test_missing_matplotlib_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install 'fastconv\\[viz\\]'"):
        viz.plot_filters(COURSE_FILTER, tmp_path / "f.png")


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8)).save(path)
    return str(path)


def test_cli_draws_filters_and_feature_maps(tmp_path, photo, capsys):
    weights = tmp_path / "model.npz"
    zoo.reference_net().save_weights(weights)
    out = tmp_path / "filters.png"
    assert cli.main(["viz", str(weights), "-o", str(out)]) == 0
    assert "filters of whiten (24 drawn)" in capsys.readouterr().out and is_png(out)
    out = tmp_path / "maps.png"
    assert cli.main(["viz", "tutorial", photo, "--layer", "conv2d_1", "-o", str(out)]) == 0
    said = capsys.readouterr().out
    # 32x32 input, 3x3 conv, 2x2 pool, 3x3 conv: 25 maps of 13x13
    assert "feature maps of conv2d_1" in said and "(25, 13, 13)" in said and is_png(out)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["viz", "{weights}", "--widths", "32,64,128"], "does not fit the reference network"),
        (
            ["viz", "tutorial", "{photo}", "--layer", "conv9"],
            "no layer 'conv9'; its layers: conv2d",
        ),
        (["viz", "{tmp}/none.npz"], "neither a weights file nor one of the zoo networks"),
        (["viz", "tutorial", "--layer", "conv2d"], "--layer draws the feature maps of an IMAGE"),
        (["viz", "tutorial", "{tmp}/none.png", "--layer", "conv2d"], "none.png does not exist"),
    ],
)
def test_cli_viz_errors_are_one_line(argv, message, tmp_path, photo, capsys):
    weights = tmp_path / "model.npz"
    zoo.reference_net().save_weights(weights)
    argv = [a.format(weights=weights, photo=photo, tmp=tmp_path) for a in argv]
    assert cli.main(argv + ["-o", str(tmp_path / "x.png")]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastconv: error: ") and message in err and len(err.splitlines()) == 1

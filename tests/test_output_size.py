"""fastconv.output_size: the course's (W - F + 2P) / S + 1, against hand-worked examples and
against the real output size of every op."""

import numpy as np
import pytest

import fastconv as fc

POOLS = [fc.max_pool2d, fc.min_pool2d, fc.sum_pool2d, fc.avg_pool2d]


@pytest.mark.parametrize(
    "w, f, p, s, dilation, expected",
    [
        (7, 3, 0, 1, 1, 5),  # (7 - 3 + 0) / 1 + 1
        (7, 3, 0, 2, 1, 3),  # (7 - 3 + 0) / 2 + 1
        (7, 3, 0, 3, 1, 2),  # 4 / 3 + 1 = 2.33: the last pixel is never reached
        (5, 3, 1, 1, 1, 5),  # padding 1 keeps a 3x3 layer's size
        (32, 5, 2, 1, 1, 32),
        (227, 11, 0, 4, 1, 55),  # AlexNet's first layer
        (7, 3, 0, 1, 2, 3),  # a dilated 3-tap kernel spans 5 pixels
        (7, 3, "same", 2, 1, 4),  # ceil(7 / 2)
        (7, 3, "valid", 2, 1, 3),
        (3, 3, 0, 5, 1, 1),
    ],
)
def test_hand_worked_sizes(w, f, p, s, dilation, expected):
    assert fc.output_size(w, f, p, s, dilation=dilation) == expected


def _axis(rng, pool, same):
    """(W, F, P, S, dilation) of one axis; pools take no dilation and at most half the kernel
    as padding, as the ops require."""
    f = int(rng.integers(1, 7))
    p = "same" if same else int(rng.integers(0, f // 2 + 1 if pool else 4))
    return (
        int(rng.integers(1, 20)),
        f,
        p,
        int(rng.integers(1, 5)),
        1 if pool else int(rng.integers(1, 4)),
    )


def _check(op, axes, **kwargs):
    """1 if op's output height and width are output_size's, 0 if output_size says the
    kernel does not fit and the op refuses the call too."""
    x = np.zeros((1, 2, axes[0][0], axes[1][0]), np.float32)
    try:
        expected = tuple(fc.output_size(w, f, p, s, dilation=d) for w, f, p, s, d in axes)
    except ValueError as error:
        assert "the kernel spans" in str(error)
        with pytest.raises(ValueError, match="the kernel spans"):
            op(x, **kwargs)
        return 0
    assert op(x, **kwargs).shape[2:] == expected, (op.__name__, axes)
    return 1


@pytest.mark.parametrize("seed", range(4))
def test_matches_every_op(seed):
    """Over random (W, F, P, S, dilation) per axis: output_size is the real output height
    and width of conv2d, depthwise_conv2d and every pool kind, and raises exactly when the
    op does."""
    rng = np.random.default_rng(seed)
    checked = 0
    for _ in range(100):
        for pool in (False, True):
            same = rng.random() < 0.15  # the ops take 'same' for both axes or for neither
            axes = [_axis(rng, pool, same) for _ in range(2)]
            (_, fh, ph, sh, dh), (_, fw, pw, sw, dw) = axes
            geometry = dict(stride=(sh, sw), padding="same" if same else (ph, pw))
            if pool:
                for op in POOLS:
                    checked += _check(op, axes, kernel_size=(fh, fw), **geometry)
            else:
                checked += _check(
                    fc.conv2d,
                    axes,
                    w=np.zeros((3, 2, fh, fw), np.float32),
                    dilation=(dh, dw),
                    **geometry,
                )
                checked += _check(
                    fc.depthwise_conv2d,
                    axes,
                    w=np.zeros((4, 1, fh, fw), np.float32),
                    dilation=(dh, dw),
                    **geometry,
                )
    assert checked > 400  # most random cases fit: the comparison really ran


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 3, 0, 1), "W \\(the input size\\) must be an int >= 1, got 0"),
        ((7, 0, 0, 1), "F \\(the kernel size\\) must be an int >= 1"),
        ((7, 3, 0, 0), "S \\(the stride\\) must be an int >= 1"),
        (
            (7, 3, -1, 1),
            "P \\(the padding on each side, or 'valid' or 'same'\\) must be an int >= 0",
        ),
        ((7, 3, "full", 1), "got 'full'"),
        ((7, 2.5, 0, 1), "F \\(the kernel size\\) must be an int"),
        ((True, 3, 0, 1), "W \\(the input size\\)"),
        ((3, 5, 0, 1), "the kernel spans 5 pixels but the padded input is only 3"),
    ],
)
def test_bad_arguments_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        fc.output_size(*args)
    with pytest.raises(ValueError, match="dilation must be an int >= 1"):
        fc.output_size(7, 3, 0, 1, dilation=0)

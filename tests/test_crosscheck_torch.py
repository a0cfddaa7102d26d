"""Cross-check against PyTorch (an optional extra): the reference and the kernels must agree
with a framework written by other people, not only with each other."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import fastconv
from fastconv import _args

from op_cases import assert_close, rand

torch = pytest.importorskip("torch")
F = torch.nn.functional


def nchw(a, layout):
    return a.transpose(0, 3, 1, 2) if layout == "NHWC" else a


@st.composite
def cases(draw):
    groups = draw(st.sampled_from([1, 2]))
    cin, cout = draw(st.integers(1, 3)) * groups, draw(st.integers(1, 3)) * groups
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    n, h, w = draw(st.integers(1, 2)), draw(st.integers(3, 11)), draw(st.integers(3, 11))
    kw = dict(
        stride=draw(st.integers(1, 3)),
        dilation=draw(st.integers(1, 2)),
        groups=groups,
        padding=draw(
            st.one_of(
                st.integers(0, 2),
                st.sampled_from(["same", "valid"]),
                st.tuples(
                    st.tuples(st.integers(0, 2), st.integers(0, 2)),
                    st.tuples(st.integers(0, 2), st.integers(0, 2)),
                ),
            )
        ),
        layout=layout,
    )
    k = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    shape = (n, h, w, cin) if layout == "NHWC" else (n, cin, h, w)
    try:
        g = _args.conv_geometry(shape, (cout, cin // groups, *k), **kw)
    except ValueError:
        assume(False)
    rng = np.random.default_rng(draw(st.integers(0, 10**6)))
    return rand(rng, *shape), rand(rng, cout, cin // groups, *k), rand(rng, cout), kw, g, rng


@given(cases())
def test_conv2d_matches_torch(case):
    x, w, b, kw, g, rng = case
    bottom = (g.oh - 1) * g.stride_h + g.dil_h * (g.kh - 1) + 1 - g.h - g.pad_top
    right = (g.ow - 1) * g.stride_w + g.dil_w * (g.kw - 1) + 1 - g.w - g.pad_left
    xt = torch.tensor(nchw(x, kw["layout"]).copy(), requires_grad=True)
    wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    # torch pads symmetrically; F.pad with negative sizes crops rows no window reaches.
    yt = F.conv2d(
        F.pad(xt, (g.pad_left, right, g.pad_top, bottom)),
        wt,
        bt,
        stride=g.stride_h,
        dilation=g.dil_h,
        groups=g.groups,
    )
    y = fastconv.conv2d(x, w, b, **kw)
    assert_close(nchw(y, kw["layout"]), yt.detach().numpy().astype(np.float64))
    dy = rand(rng, *y.shape)
    yt.backward(torch.tensor(nchw(dy, kw["layout"]).copy()))
    dx, dw, db = fastconv.conv2d_backward(dy, x, w, **kw)
    assert_close(nchw(dx, kw["layout"]), xt.grad.numpy().astype(np.float64))
    assert_close(dw, wt.grad.numpy().astype(np.float64))
    assert_close(db, bt.grad.numpy().astype(np.float64))


@given(
    st.sampled_from(["max", "avg"]),
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(0, 2),
    st.booleans(),
    st.sampled_from(["NCHW", "NHWC"]),
    st.integers(0, 10**6),
)
def test_pooling_matches_torch(kind, k, stride, pad, include_pad, layout, seed):
    assume(pad <= k // 2)
    rng = np.random.default_rng(seed)
    x = rand(rng, 2, 9, 8, 3) if layout == "NHWC" else rand(rng, 2, 3, 9, 8)
    xt = torch.tensor(nchw(x, layout).copy(), requires_grad=True)
    if kind == "max":
        yt = F.max_pool2d(xt, k, stride, pad)
        y = fastconv.max_pool2d(x, k, stride=stride, padding=pad, layout=layout)
    else:
        yt = F.avg_pool2d(xt, k, stride, pad, count_include_pad=include_pad)
        y = fastconv.avg_pool2d(
            x, k, stride=stride, padding=pad, count_include_pad=include_pad, layout=layout
        )
    assert_close(nchw(y, layout), yt.detach().numpy().astype(np.float64))
    dy = rand(rng, *y.shape)
    yt.backward(torch.tensor(nchw(dy, layout).copy()))
    extra = {} if kind == "max" else {"count_include_pad": include_pad}
    dx = getattr(fastconv, f"{kind}_pool2d_backward")(
        dy, x, k, stride=stride, padding=pad, layout=layout, **extra
    )
    assert_close(nchw(dx, layout), xt.grad.numpy().astype(np.float64))

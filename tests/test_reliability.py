"""Reliability: many Python threads at once, memory that does not grow, every kind of array
view, and IEEE special values on every path (direct, Winograd, threaded, each ISA) against
PyTorch in float64 and the reference."""

import gc
import resource
import threading

import numpy as np
import pytest

import fastconv
from fastconv import ops
from fastconv import reference as ref

from op_cases import CPU_LIMITS, assert_close, check_case, rand


def _cases(count=3, seed=0):
    rng = np.random.default_rng(seed)
    return [(op, op.draw_case(rng, CPU_LIMITS)) for op in ops.OPS.values() for _ in range(count)]


def _results(op, case):
    got = op.forward(case)
    dy = np.random.default_rng(case.seed).standard_normal(np.shape(got["y"])).astype(np.float32)
    grads = op.backward(case, dy, got) if op.backward_args else {}
    return {**got, **{f"d{k}": v for k, v in grads.items()}}


def test_concurrent_calls_equal_serial_results():
    """Eight Python threads call every op at once (the GIL is released inside the kernels),
    while another switches the thread count and Winograd: every result equals the serial
    run's bits (set_num_threads(n) is the same n in both, so the sums' order is too)."""
    cases = _cases()
    serial = [_results(op, case) for op, case in cases]
    failures, stop = [], threading.Event()

    def worker(offset):
        for i in range(len(cases)):
            op, case = cases[(i + offset) % len(cases)]
            with fastconv.array_cache():
                got = _results(op, case)
            want = serial[(i + offset) % len(cases)]
            for name in want:
                if not np.array_equal(got[name], want[name], equal_nan=True):
                    failures.append((op.name, name))

    def meddler():
        while not stop.is_set():
            fastconv.set_num_threads(fastconv.get_num_threads())
            fastconv.set_winograd(True)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    side = threading.Thread(target=meddler)
    side.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    side.join()
    assert not failures, failures[:5]


def _max_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_memory_does_not_grow_over_many_calls():
    """A few hundred calls of every op after a warm-up: the peak resident size stays put
    (a leak of even one output per call would add tens of MB)."""
    rng = np.random.default_rng(1)
    x, w = rand(rng, 16, 32, 24, 24), rand(rng, 32, 32, 3, 3)
    dy = rand(rng, 16, 32, 24, 24)

    def step():
        y = fastconv.conv2d(x, w, padding=1)
        fastconv.conv2d_backward(dy, x, w, padding=1)
        p = fastconv.max_pool2d(y, 2)
        fastconv.max_pool2d_backward(p, y, 2)
        yb, mean, var = fastconv.batch_norm(y, axis=1, activation="gelu")
        fastconv.batch_norm_backward(dy, y, mean, var, axis=1, activation="gelu")
        fastconv.global_avg_pool2d_backward(fastconv.global_avg_pool2d(y), y)

    for _ in range(20):
        step()
    gc.collect()
    before = _max_rss_mb()
    for _ in range(200):
        step()
    gc.collect()
    assert _max_rss_mb() - before < 20, (before, _max_rss_mb())


def _views():
    """(name, make(array) -> the same values as another kind of array)."""

    def offset(a):  # inside a larger buffer, at an offset
        big = np.zeros(a.size + 7, np.float32)
        big[7:] = a.ravel()
        return big[7:].reshape(a.shape)

    def readonly(a):
        b = a.copy()
        b.flags.writeable = False
        return b

    def negative(a):  # reversed twice: negative strides, same values
        return np.flip(np.flip(a, -1).copy(), -1)

    return [
        ("negative strides", negative),
        ("Fortran order", np.asfortranarray),
        ("read-only", readonly),
        ("offset into a larger buffer", offset),
        ("transposed view", lambda a: a.T.copy().T),
        ("every other element", lambda a: np.repeat(a, 2, axis=-1)[..., ::2]),
        ("zero stride broadcast", lambda a: np.broadcast_to(a, a.shape)),
    ]


@pytest.mark.parametrize("name, make", _views(), ids=[n for n, _ in _views()])
def test_every_kind_of_view_gives_the_same_results(name, make):
    for op, case in _cases(count=1, seed=3):
        viewed = ops.Case(
            op,
            {k: None if v is None else make(v) for k, v in case.inputs.items()},
            case.params,
            case.seed,
        )
        for key, value in viewed.inputs.items():
            if value is not None:
                np.testing.assert_array_equal(value, case.inputs[key])
        want, got = _results(op, case), _results(op, viewed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{name}: {op.name} {k}")


def test_big_endian_arrays_are_refused_with_the_fix():
    x = np.ones((1, 1, 4, 4), ">f4")
    with pytest.raises(TypeError, match=r"astype\(np\.float32\)"):
        fastconv.max_pool2d(x, 2)


def test_empty_batch_of_every_op():
    for op in ops.OPS.values():
        if op.family == "norm":  # batch statistics need at least one element per channel
            continue
        case = op.draw_case(np.random.default_rng(4), CPU_LIMITS)
        empty = ops.Case(
            op,
            {k: (v[:0] if k == "x" else v) for k, v in case.inputs.items()},
            case.params,
            case.seed,
        )
        got = op.forward(empty)["y"]
        assert got.shape[0] == 0
        grads = op.backward(empty, np.zeros(got.shape, np.float32), {"y": got})
        assert grads["x"].shape == empty.x.shape
        for name, g in grads.items():
            if name != "x":
                assert not np.any(g), (op.name, name)  # sums over no images: zeros


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_global_avg_pool_of_an_empty_batch(layout):
    x = np.zeros((0, 3, 8, 8) if layout == "NCHW" else (0, 8, 8, 3), np.float32)
    y = fastconv.global_avg_pool2d(x, layout=layout)
    assert y.shape == (0, 3)
    assert fastconv.global_avg_pool2d_backward(y, x, layout=layout).shape == x.shape


# ---- IEEE special values against PyTorch (float64) and the reference -------------------

torch = pytest.importorskip("torch")

# infinities, NaN, signed zeros and denormals (not huge finite values: float32 and float64
# sums overflow at different terms, so those cells legitimately differ)
SPECIAL = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-40, -1e-40], np.float32)


def _torch_conv(x, w, b, dy, padding, stride):
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    wt = torch.tensor(w.astype(np.float64), requires_grad=True)
    bt = torch.tensor(b.astype(np.float64), requires_grad=True)
    y = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=padding)
    y.backward(torch.tensor(dy.astype(np.float64)))
    return [t.detach().numpy() for t in (y, xt.grad, wt.grad, bt.grad)]


def _same_specials(got, want):
    """The same cells are NaN, +Inf and -Inf; finite cells agree to float32 rounding."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(got) & np.isfinite(want)
    scale = 1 + np.abs(np.where(finite, want, 0)).max()
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("where", ["x", "w", "dy"])
@pytest.mark.parametrize(
    "cin, winograd, threads", [(16, True, 2), (16, False, 1), (15, True, 2), (32, True, 1)]
)
def test_special_values_follow_the_mathematical_sum(isa, where, cin, winograd, threads):
    """One special value at a time in x, w or dy, through direct, Winograd and threaded
    paths: the cells that become NaN or infinite are exactly PyTorch's (float64)."""
    rng = np.random.default_rng(cin)
    x, w, b = rand(rng, 2, cin, 9, 9), rand(rng, 8, cin, 3, 3), rand(rng, 8)
    dy = rand(rng, 2, 8, 9, 9)
    previous = fastconv.get_num_threads()
    fastconv.set_num_threads(threads)
    fastconv.set_winograd(winograd)
    try:
        for value in SPECIAL[:3]:
            arrays = dict(x=x.copy(), w=w.copy(), dy=dy.copy())
            target = arrays[where]
            target[(1,) + (0,) * (target.ndim - 1)] = value  # a corner: next to the padding
            got = [
                fastconv.conv2d(arrays["x"], arrays["w"], b, padding=1),
                *fastconv.conv2d_backward(arrays["dy"], arrays["x"], arrays["w"], padding=1),
            ]
            want = _torch_conv(arrays["x"], arrays["w"], b, arrays["dy"], 1, 1)
            for g, t in zip(got, want):
                _same_specials(g.astype(np.float64), t)
    finally:
        fastconv.set_num_threads(previous)
        fastconv.set_winograd(True)


def test_an_infinite_weight_reaches_only_its_real_terms_in_dx(isa):
    """x (1,16,6,6), one infinite weight, dy of ones, padding 1: dx is infinite exactly
    where a real term multiplies that weight, as PyTorch computes it; no NaN from products
    of the padding's zeros."""
    x = np.ones((1, 16, 6, 6), np.float32)
    w = np.ones((4, 16, 3, 3), np.float32)
    w[1, 0, 0, 0] = np.inf
    dy = np.ones((1, 4, 6, 6), np.float32)
    dx = fastconv.conv2d_backward(dy, x, w, padding=1)[0]
    want = _torch_conv(x, w, np.zeros(4, np.float32), dy, 1, 1)[1]
    assert not np.isnan(dx).any()
    _same_specials(dx.astype(np.float64), want)
    assert_close(dx[:, 1:], ref.conv2d_backward(dy, x, w, padding=1)[0][:, 1:])


@pytest.mark.parametrize(
    "op", [op for op in ops.OPS.values() if op.family != "norm"], ids=lambda op: op.name
)
def test_special_values_in_every_op(isa, op):
    """NaN, infinities, signed zeros and denormals spread through a random case of each op:
    forward and backward agree with the float64 reference cell for cell."""
    rng = np.random.default_rng(5)
    case = op.draw_case(rng, CPU_LIMITS)
    x = case.x.copy()
    flat = x.reshape(-1)
    spots = rng.choice(flat.size, size=min(flat.size, 4), replace=False)
    flat[spots] = rng.choice(SPECIAL, size=spots.size)
    special = ops.Case(op, dict(case.inputs, x=x), case.params, case.seed)
    check_case(op, special)

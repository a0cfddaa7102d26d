"""A first look at fastconv: one conv -> pool -> conv stack, forward and backward, checked
against the NumPy reference and timed. Run: python examples/quickstart.py"""

import time

import numpy as np

import fastconv as fc
from fastconv import reference as ref

rng = np.random.default_rng(0)
x = rng.random((32, 3, 32, 32), dtype=np.float32)
w1 = rng.standard_normal((32, 3, 3, 3), dtype=np.float32) * 0.2
w2 = rng.standard_normal((64, 32, 3, 3), dtype=np.float32) * 0.05


def forward(lib):
    h = lib.conv2d(x, w1, padding="same")
    p = lib.max_pool2d(h, 2)
    return h, p, lib.conv2d(p, w2, padding="same")


for name, lib in [("fastconv", fc), ("numpy reference", ref)]:
    start = time.perf_counter()
    h, p, y = forward(lib)
    dy = np.ones_like(y)
    dp, dw2, _ = lib.conv2d_backward(dy, p, w2, padding="same")
    dh = lib.max_pool2d_backward(dp, h, 2)
    dx, dw1, _ = lib.conv2d_backward(dh, x, w1, padding="same")
    print(
        f"{name:>16}: forward + backward in {1e3 * (time.perf_counter() - start):8.1f} ms, "
        f"y {y.shape}, |dw1| = {np.abs(dw1).sum():.4f}"
    )

_, _, y_fast = forward(fc)
_, _, y_ref = forward(ref)
print(
    f"max |fastconv - reference| = {np.abs(y_fast - y_ref).max():.2e} "
    f"(isa={fc.isa()}, threads={fc.get_num_threads()})"
)

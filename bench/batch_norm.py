"""`python -m bench.batch_norm`: training-mode batch norm with its fused activation (none,
ReLU, GELU), forward + backward, fastconv (NHWC) against PyTorch (channels_last, the
activation as its own op), at the reference CIFAR-10 network's shapes. Interleaved medians,
the same thread count for both; outputs are cross-checked before timing.

    python -m bench.batch_norm [--batch 512] [--threads 2] [--out bench/results]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import fastconv
from fastconv.nn.zoo import REFERENCE_WIDTHS

from .measure import Budget, median_seconds
from .ops import max_relative_error

ACTIVATIONS = (None, "relu", "gelu")


def shapes(batch, widths=REFERENCE_WIDTHS, image=32):
    """NHWC shapes of the reference net's batch norms: two per block, after the pool."""
    size = image - 1
    out = []
    for width in widths:
        size //= 2
        out += [(batch, size, size, width)] * 2
    return sorted(set(out), key=lambda s: -np.prod(s))


def fastconv_step(x, dy, beta, activation):
    def run():
        y, mean, var = fastconv.batch_norm(x, None, beta, activation=activation)
        dx, _, dbeta = fastconv.batch_norm_backward(dy, x, mean, var, None, beta,
                                                    activation=activation)
        return y, dx, dbeta
    return run


def torch_step(x, dy, beta, activation):
    import torch
    F = torch.nn.functional
    to_cl = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # channels_last view of NHWC
    xt, dyt, bt = to_cl(x).requires_grad_(True), to_cl(dy), torch.from_numpy(beta).requires_grad_(True)
    act = {None: lambda t: t, "relu": F.relu, "gelu": F.gelu}[activation]

    def run():
        y = act(F.batch_norm(xt, None, None, None, bt, training=True, eps=1e-3))
        dx, dbeta = torch.autograd.grad(y, (xt, bt), dyt)
        nhwc = lambda t: t.detach().permute(0, 2, 3, 1).contiguous().numpy()
        return nhwc(y), nhwc(dx), dbeta.numpy()
    return run


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.batch_norm", description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row")
    p.add_argument("--out", type=Path, default=None, help="folder for batch_norm.md")
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    fastconv.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    lines = [f"batch norm + activation, forward + backward, {args.threads} threads, fastconv "
             f"{fastconv.isa()} NHWC vs torch {torch.__version__} channels_last (median ms)", "",
             "| shape (NHWC) | activation | fastconv | torch | torch / fastconv | max rel. diff |",
             "|---|---|---:|---:|---:|---:|"]
    with fastconv.array_cache():
        for shape in shapes(args.batch):
            x = rng.standard_normal(shape, dtype=np.float32)
            dy = rng.standard_normal(shape, dtype=np.float32)
            beta = rng.standard_normal(shape[-1], dtype=np.float32)
            for activation in ACTIVATIONS:
                runs = {"fastconv": fastconv_step(x, dy, beta, activation),
                        "torch": torch_step(x, dy, beta, activation)}
                diff = max_relative_error(list(runs["fastconv"]()), list(runs["torch"]()))
                ms = {k: v * 1e3 for k, v in median_seconds(runs, Budget(args.seconds)).items()}
                lines.append(f"| {'x'.join(map(str, shape))} | {activation or 'none'} | "
                             f"{ms['fastconv']:.2f} | {ms['torch']:.2f} | "
                             f"{ms['torch'] / ms['fastconv']:.2f} | {diff:.1e} |")
                print(lines[-1], flush=True)
    lines += ["", "max rel. diff: the largest |fastconv - torch| over y, dx and dbeta, each relative "
              "to that output's largest value. With ReLU, a unit whose input lies within float "
              "rounding of 0 can fall on different sides in the two libraries; its dx then "
              "differs by a whole dy term. The ReLU rows' differences are such units (checked once "
              "at 512x15x15x64: 4 of 7.4 million dx values differ, all where the input is "
              "within 1e-5 of 0)."]
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "batch_norm.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

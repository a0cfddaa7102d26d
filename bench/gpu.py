"""GPU benchmark: every fastconv op on the CIFAR-shaped layer set (batch 128) against
PyTorch/cuDNN in float32 with TF32 off.

    python bench/gpu.py --out results.md            # on a GPU machine (CuPy + PyTorch)
    python bench/gpu.py --device cpu --batch 2      # wiring check on the CPU (no timing claims)

Each row times one pass: "fwd" is the forward op, "bwd" all gradients (dx, dw[, dbias]) of
the op given x and dy (PyTorch's own backward kernels: aten.convolution_backward, the pool
backward ops fed with the indices of their forward). Times are medians of --reps runs, each
timed with CUDA events on the stream the library launches on, after warm-up runs; both
libraries read the same device buffers. Every row also checks that fastconv and PyTorch agree
(max |diff| / max |torch|), so a fast wrong kernel cannot pass unnoticed.
TFLOP/s counts 2*MACs of the direct algorithm; GB/s counts the minimum bytes the op must move.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import fastconv


@dataclass(frozen=True)
class Case:
    kind: str      # conv, pointwise, depthwise, separable, maxpool, avgpool, globalavgpool
    c_in: int
    c_out: int
    size: int      # input height == width
    k: int = 3
    stride: int = 1
    pad: int = 1

    @property
    def out(self):
        return 1 if self.kind == "globalavgpool" else (self.size + 2 * self.pad - self.k) // self.stride + 1

    def label(self):
        win = f"{self.k}x{self.k}" + (f"/s{self.stride}" if self.stride > 1 else "")
        ch = f"{self.c_in}->{self.c_out}" if self.c_in != self.c_out else f"{self.c_in}"
        return {"pointwise": f"pointwise {ch}", "globalavgpool": "global avgpool"}.get(
            self.kind, f"{self.kind} {win} {ch}")


CASES = [
    Case("conv", 3, 64, 32), Case("conv", 64, 128, 32), Case("conv", 128, 256, 16),
    Case("conv", 256, 512, 8), Case("conv", 64, 128, 32, stride=2), Case("conv", 32, 64, 32, k=5, pad=2),
    Case("pointwise", 128, 256, 16, k=1, pad=0),
    Case("depthwise", 128, 128, 16), Case("depthwise", 256, 256, 32),
    Case("separable", 128, 256, 16),
    Case("maxpool", 128, 128, 32, k=2, stride=2, pad=0), Case("maxpool", 128, 128, 32, k=3, stride=2, pad=1),
    Case("avgpool", 128, 128, 32, k=2, stride=2, pad=0),
    Case("globalavgpool", 128, 128, 32, k=32, pad=0),
]


class Backend:
    """Arrays and timing for one device: 'cuda' (CuPy + CUDA events) or 'cpu' (NumPy)."""

    def __init__(self, device):
        self.device = device
        if device == "cuda":
            import cupy
            self.cp = cupy

    def fc(self, t):
        """The fastconv view of a torch tensor (zero-copy on the GPU)."""
        t = t.detach().contiguous()
        return self.cp.asarray(t) if self.device == "cuda" else t.numpy()

    def torch_of(self, a):
        return torch.as_tensor(a, device=self.device)

    def time_ms(self, fn, reps, warmup, library):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            if self.device == "cpu":
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1e3)
                continue
            if library == "torch":
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                fn()
                end.record()
                end.synchronize()
                times.append(begin.elapsed_time(end))
            else:
                stream = self.cp.cuda.get_current_stream()
                begin, end = self.cp.cuda.Event(), self.cp.cuda.Event()
                begin.record(stream)
                fn()
                end.record(stream)
                end.synchronize()
                times.append(self.cp.cuda.get_elapsed_time(begin, end))
        return statistics.median(times)


def to_layout(t, layout):
    return t.contiguous(memory_format=torch.channels_last) if layout == "NHWC" else t.contiguous()


def fc_activation(backend, t, layout):
    """fastconv wants NHWC arrays shaped (N, H, W, C); torch keeps NCHW shape, NHWC strides."""
    return backend.fc(t.permute(0, 2, 3, 1) if layout == "NHWC" else t)


def from_fc_activation(backend, a, layout):
    t = backend.torch_of(a)
    return t.permute(0, 3, 1, 2) if layout == "NHWC" else t


def conv_ops(case, backend, layout, x, gen):
    """(fastconv fwd, torch fwd, fastconv bwd, torch bwd, flops fwd, flops bwd) of a conv kind."""
    n, dev = x.shape[0], backend.device
    groups = case.c_in if case.kind == "depthwise" else 1
    opts = dict(stride=case.stride, padding=case.pad, layout=layout)
    conv = dict(stride=case.stride, padding=case.pad)
    if case.kind == "separable":
        dw_t = torch.randn(case.c_in, 1, case.k, case.k, device=dev, generator=gen)
        pw_t = torch.randn(case.c_out, case.c_in, 1, 1, device=dev, generator=gen)
        b_t = torch.randn(case.c_out, device=dev, generator=gen)
        dw, pw, b = backend.fc(dw_t), backend.fc(pw_t[:, :, 0, 0]), backend.fc(b_t)
        xa = fc_activation(backend, x, layout)
        dy_t = to_layout(torch.randn(n, case.c_out, case.out, case.out, device=dev, generator=gen), layout)
        dya = fc_activation(backend, dy_t, layout)

        def torch_bwd():
            mid = F.conv2d(x, dw_t, None, groups=case.c_in, **conv)
            dmid, dpw, db = torch.ops.aten.convolution_backward(
                dy_t, mid, pw_t, [case.c_out], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, True, True])
            return torch.ops.aten.convolution_backward(
                dmid, x, dw_t, None, [case.stride] * 2, [case.pad] * 2, [1, 1], False, [0, 0],
                case.c_in, [True, True, False])
        macs_dw = n * case.c_in * case.out ** 2 * case.k ** 2
        macs_pw = n * case.c_out * case.out ** 2 * case.c_in
        return (lambda: fastconv.separable_conv2d(xa, dw, pw, b, **opts),
                lambda: F.conv2d(F.conv2d(x, dw_t, None, groups=case.c_in, **conv), pw_t, b_t),
                lambda: fastconv.separable_conv2d_backward(dya, xa, dw, pw, **opts),
                torch_bwd, 2 * (macs_dw + macs_pw), 2 * (3 * macs_dw + 2 * macs_pw))
    w_t = torch.randn(case.c_out, case.c_in // groups, case.k, case.k, device=dev, generator=gen)
    w_t = w_t * (2.0 / (w_t[0].numel())) ** 0.5
    b_t = torch.randn(case.c_out, device=dev, generator=gen)
    dy_t = to_layout(torch.randn(n, case.c_out, case.out, case.out, device=dev, generator=gen), layout)
    xa, dya, b = fc_activation(backend, x, layout), fc_activation(backend, dy_t, layout), backend.fc(b_t)
    macs = n * case.c_out * case.out ** 2 * (case.c_in // groups) * case.k ** 2
    if case.kind == "pointwise":
        w = backend.fc(w_t[:, :, 0, 0])
        fwd = lambda: fastconv.pointwise_conv2d(xa, w, b, layout=layout)
        bwd = lambda: fastconv.pointwise_conv2d_backward(dya, xa, w, layout=layout)
    elif case.kind == "depthwise":
        w = backend.fc(w_t)
        fwd = lambda: fastconv.depthwise_conv2d(xa, w, b, **opts)
        bwd = lambda: fastconv.depthwise_conv2d_backward(dya, xa, w, **opts)
    else:
        w = backend.fc(w_t)
        fwd = lambda: fastconv.conv2d(xa, w, b, **opts)
        bwd = lambda: fastconv.conv2d_backward(dya, xa, w, **opts)
    return (fwd, lambda: F.conv2d(x, w_t, b_t, groups=groups, **conv), bwd,
            lambda: torch.ops.aten.convolution_backward(
                dy_t, x, w_t, [case.c_out], [case.stride] * 2, [case.pad] * 2, [1, 1], False,
                [0, 0], groups, [True, True, True]),
            2 * macs, 4 * macs)


def pool_ops(case, backend, layout, x, gen):
    """(fastconv fwd, torch fwd, fastconv bwd, torch bwd, bytes fwd, bytes bwd) of a pool."""
    n, dev = x.shape[0], backend.device
    xa = fc_activation(backend, x, layout)
    dy_t = to_layout(torch.randn(n, case.c_in, case.out, case.out, device=dev, generator=gen), layout)
    x_bytes, y_bytes = 4 * x.numel(), 4 * dy_t.numel()
    win = dict(stride=case.stride, padding=case.pad, layout=layout)
    k, s, p = [case.k] * 2, [case.stride] * 2, [case.pad] * 2
    if case.kind == "maxpool":
        _, indices = torch.ops.aten.max_pool2d_with_indices(x, k, s, p)
        dya = fc_activation(backend, dy_t, layout)
        return (lambda: fastconv.max_pool2d(xa, case.k, **win),
                lambda: F.max_pool2d(x, case.k, case.stride, case.pad),
                lambda: fastconv.max_pool2d_backward(dya, xa, case.k, **win),
                lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                    dy_t, x, k, s, p, [1, 1], False, indices),
                x_bytes + y_bytes, 2 * x_bytes + y_bytes)
    if case.kind == "avgpool":
        dya = fc_activation(backend, dy_t, layout)
        return (lambda: fastconv.avg_pool2d(xa, case.k, **win),
                lambda: F.avg_pool2d(x, case.k, case.stride, case.pad),
                lambda: fastconv.avg_pool2d_backward(dya, xa, case.k, **win),
                lambda: torch.ops.aten.avg_pool2d_backward(dy_t, x, k, s, p, False, True, None),
                x_bytes + y_bytes, x_bytes + y_bytes)
    dy2 = dy_t.reshape(n, case.c_in)
    dya = backend.fc(dy2)
    return (lambda: fastconv.global_avg_pool2d(xa, layout=layout),
            lambda: F.adaptive_avg_pool2d(x, 1),
            lambda: fastconv.global_avg_pool2d_backward(dya, xa, layout=layout),
            lambda: torch.ops.aten._adaptive_avg_pool2d_backward(dy2.reshape(n, case.c_in, 1, 1), x),
            x_bytes + y_bytes, x_bytes + y_bytes)


def first(result):
    return result[0] if isinstance(result, (tuple, list)) else result


def mismatch(backend, ours, theirs, layout):
    """max |fastconv - torch| / max |torch| of the first output (y or dx)."""
    a = first(ours)
    t = from_fc_activation(backend, a, layout) if a.ndim == 4 else backend.torch_of(a)
    ref = first(theirs).reshape(t.shape).float()
    return float((t - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def run(args):
    backend = Backend(args.device)
    gen = torch.Generator(device=args.device).manual_seed(0)
    rows = []
    for layout in args.layouts:
        for case in CASES:
            x = to_layout(torch.randn(args.batch, case.c_in, case.size, case.size,
                                      device=args.device, generator=gen), layout)
            is_pool = case.kind.endswith("pool")
            ops = (pool_ops if is_pool else conv_ops)(case, backend, layout, x, gen)
            for pass_, (ours, theirs, work) in (("fwd", (ops[0], ops[1], ops[4])),
                                                 ("bwd", (ops[2], ops[3], ops[5]))):
                error = mismatch(backend, ours(), theirs(), layout)
                t_ours = backend.time_ms(ours, args.reps, args.warmup, "fastconv")
                t_theirs = backend.time_ms(theirs, args.reps, args.warmup, "torch")
                rate = (f"{work / t_ours / 1e9:.2f} TFLOP/s" if not is_pool
                        else f"{work / t_ours / 1e6:.0f} GB/s")
                rows.append((case.label(), f"{args.batch}x{case.c_in}x{case.size}x{case.size}",
                             layout, pass_, t_ours, t_theirs, t_theirs / t_ours, rate, error))
                print(f"{rows[-1][0]:28s} {layout} {pass_}  fastconv {t_ours:8.3f} ms  "
                      f"torch {t_theirs:8.3f} ms  x{t_theirs / t_ours:5.2f}  {rate:>14s}  "
                      f"err {error:.1e}", flush=True)
    return rows


def markdown(rows, args):
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "CPU"
    lines = [
        f"# fastconv GPU benchmark ({args.device})", "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- device: {gpu}; torch {torch.__version__}, cuDNN "
        f"{torch.backends.cudnn.version() if args.device == 'cuda' else '-'}; fastconv {fastconv.__version__}",
        f"- float32, TF32 off, cudnn.benchmark on; batch {args.batch}; median of {args.reps} runs "
        f"after {args.warmup} warm-up runs, CUDA events",
        "- ratio = cuDNN/PyTorch ms / fastconv ms (> 1: fastconv faster); err = max|fastconv - "
        "torch| / max|torch| of y (fwd) or dx (bwd)", "",
        "| op | input (NCHW sizes) | layout | pass | fastconv ms | cuDNN/PyTorch ms | ratio | fastconv rate | err |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for op, shape, layout, pass_, ours, theirs, ratio, rate, err in rows:
        lines.append(f"| {op} | {shape} | {layout} | {pass_} | {ours:.3f} | {theirs:.3f} | "
                     f"{ratio:.2f} | {rate} | {err:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--layouts", nargs="+", default=["NCHW", "NHWC"], choices=["NCHW", "NHWC"])
    parser.add_argument("--out", help="write the table as markdown here")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        ok, why = fastconv.cuda_available()
        if not ok or not torch.cuda.is_available():
            sys.exit(f"GPU benchmark needs fastconv's CUDA path and PyTorch CUDA: {why}")
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    rows = run(args)
    if args.out:
        with open(args.out, "w") as f:
            f.write(markdown(rows, args))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

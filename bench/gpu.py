"""`fastconv bench --gpu`: every layer of bench/cases.py on the GPU, fastconv's CUDA kernels
against PyTorch/cuDNN, float32 with TF32 off.

Each row times one direction: "fwd" the forward op, "bwd" every gradient (PyTorch: autograd
of the op over a graph built outside the timed call). Times are medians of --reps runs, each
timed with CUDA events on the stream the library launches on, after warm-up runs; the inputs
are on the device before timing starts. Every row also checks that fastconv and PyTorch agree
(max |diff| / max |torch| of each output), so a fast wrong kernel cannot pass unnoticed.
TFLOP/s counts 2 x the multiply-adds of the direct algorithm; GB/s the minimum bytes moved.

    fastconv bench --gpu --out gpu.md          # on a GPU machine (CuPy + PyTorch with CUDA)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import fastconv

from . import cases as layer_list
from . import runners


def _time_ms(run, reps, warmup, events):
    """Median ms of run(), timed by (record_start, record_end_and_wait) CUDA events."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(reps):
        start, stop = events()
        start()
        run()
        times.append(stop())
    return statistics.median(times)


def _cupy_events():
    import cupy

    stream = cupy.cuda.get_current_stream()
    begin, end = cupy.cuda.Event(), cupy.cuda.Event()

    def stop():
        end.record(stream)
        end.synchronize()
        return cupy.cuda.get_elapsed_time(begin, end)

    return lambda: begin.record(stream), stop


def _torch_events():
    import torch

    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def stop():
        end.record()
        end.synchronize()
        return begin.elapsed_time(end)

    return begin.record, stop


def time_row(layer, direction, layout, args):
    import cupy

    case = layer.case().in_layout(layout)
    ours, ours_out = runners.fastconv_runner(case, direction, dev=cupy.asarray, host=cupy.asnumpy)
    theirs, theirs_out = runners.torch_runner(case, direction, layout == "NHWC", device="cuda")
    error = runners.max_relative_error(ours_out(ours()), theirs_out(theirs()))
    ms = _time_ms(ours, args.reps, args.warmup, _cupy_events)
    torch_ms = _time_ms(theirs, args.reps, args.warmup, _torch_events)
    work, traffic = case.op.flops(case, direction), case.op.bytes(case, direction)
    rate = (
        f"{work / ms / 1e9:.2f} TFLOP/s"
        if case.op.family == "conv"
        else f"{traffic / ms / 1e6:.0f} GB/s"
    )
    return (
        layer.label,
        layer.shape,
        layout,
        layer_list.SHORT[direction],
        ms,
        torch_ms,
        rate,
        error,
    )


def markdown(rows, args):
    import torch

    lines = [
        "# fastconv GPU benchmark",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- device: {torch.cuda.get_device_name()}; torch {torch.__version__}, cuDNN "
        f"{torch.backends.cudnn.version()}; fastconv {fastconv.__version__}",
        f"- float32, TF32 off, cudnn.benchmark on; batch {args.batch}; median of {args.reps} "
        f"runs after {args.warmup} warm-up runs, CUDA events",
        "- ratio = cuDNN/PyTorch ms / fastconv ms (> 1: fastconv faster); err = max|fastconv - "
        "torch| / max|torch| over the outputs",
        "",
        "| op | input (NCHW sizes) | layout | pass | fastconv ms | cuDNN/PyTorch ms | ratio "
        "| fastconv rate | err |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, shape, layout, direction, ours, theirs, rate, err in rows:
        lines.append(
            f"| {label} | {shape} | {layout} | {direction} | {ours:.3f} | "
            f"{theirs:.3f} | {theirs / ours:.2f} | {rate} | {err:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="fastconv bench --gpu", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--filter", default="", help="only layers whose name contains this")
    parser.add_argument("--layouts", nargs="+", default=["NCHW", "NHWC"], choices=["NCHW", "NHWC"])
    parser.add_argument("--out", help="write the table as markdown here")
    args = parser.parse_args(argv)
    import torch

    ok, why = fastconv.cuda_available()
    if not ok or not torch.cuda.is_available():
        sys.exit(f"the GPU benchmark needs fastconv's CUDA path and PyTorch with CUDA: {why}")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    rows = []
    for layer in layer_list.all_layers():
        if args.filter.lower() not in layer.label.lower():
            continue
        for layout in args.layouts:
            for direction in layer_list.DIRECTIONS:
                rows.append(time_row(layer.with_batch(args.batch), direction, layout, args))
                r = rows[-1]
                print(
                    f"{r[0]:28s} {layout} {r[3]}  fastconv {r[4]:8.3f} ms  torch {r[5]:8.3f} ms"
                    f"  x{r[5] / r[4]:5.2f}  {r[6]:>14s}  err {r[7]:.1e}",
                    flush=True,
                )
    if args.out:
        with open(args.out, "w") as f:
            f.write(markdown(rows, args))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

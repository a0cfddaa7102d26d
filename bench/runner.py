"""The run behind `python -m bench.cpu`: ceilings, the timed rows, the report files."""
from __future__ import annotations

import os
import platform
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import fastconv

from . import cases as case_list
from . import ops
from .measure import (Budget, compiler_description, cpu_description, git_revision,
                      measure_ceilings, median_seconds)
from .report import ReferenceRow, Row, bar_chart, markdown

REPO = Path(__file__).resolve().parent.parent
TORCH_LAYOUT = {"NCHW": "NCHW", "NHWC": "channels_last"}


def time_row(case, pass_, layouts, budget: Budget) -> Row:
    """fastconv and PyTorch in each layout, interleaved; fastconv's outputs checked against
    PyTorch's on the first (warm-up) call."""
    inputs = ops.make_inputs(case)
    runners = {("fastconv", layout): ops.numpy_runner(fastconv, case, pass_, inputs, layout)
               for layout in layouts}
    runners.update({("torch", TORCH_LAYOUT[layout]):
                    ops.torch_runner(case, pass_, inputs, layout == "NHWC") for layout in layouts})
    outputs = {key: convert(run()) for key, (run, convert) in runners.items()}
    expected = outputs[("torch", TORCH_LAYOUT[layouts[0]])]
    error = max(ops.max_relative_error(outputs[("fastconv", layout)], expected)
                for layout in layouts)
    del outputs
    seconds = median_seconds({key: run for key, (run, _) in runners.items()}, budget)
    by_lib = lambda lib: {layout: s for (name, layout), s in seconds.items() if name == lib}
    return Row(case, pass_, fastconv=by_lib("fastconv"), torch=by_lib("torch"), error=error)


def time_reference_row(case, pass_, budget: Budget) -> ReferenceRow:
    inputs = ops.make_inputs(case)
    fast_run, fast_out = ops.numpy_runner(fastconv, case, pass_, inputs, "NCHW")
    ref_run, ref_out = ops.numpy_runner(fastconv.reference, case, pass_, inputs, "NCHW")
    error = ops.max_relative_error(fast_out(fast_run()), ref_out(ref_run()))
    seconds = median_seconds({"reference": ref_run, "fastconv": fast_run}, budget)
    return ReferenceRow(case, pass_, seconds["reference"], seconds["fastconv"], error)


def _progress(row: Row) -> str:
    return (f"{row.case.label:<24} {row.case.shape:<16} {row.pass_}: fastconv "
            f"{row.fastconv[row.best] * 1e3:8.2f} ms ({row.best}), torch "
            f"{row.torch[row.peer] * 1e3:8.2f} ms ({row.peer}) -> {row.ratio:5.2f}x "
            f"(goal {row.goal.minimum:g}x: {'met' if row.met else 'NOT met'}, "
            f"err {row.error:.1e})")


def header(args, command, date, layouts, blas_threads, ceilings, budget, loads) -> list:
    torch_config = (f"PyTorch {torch.__version__} (oneDNN available: "
                    f"{torch.backends.mkldnn.is_available()})")
    return [
        f"- Command: `{command}`" + (" (quick: a development run, not the goal run)"
                                     if args.quick else ""),
        f"- Date: {date}",
        f"- Machine: {cpu_description()}; fastconv kernels: {fastconv.isa()} "
        f"({fastconv._cpu.isa_reason()}), Winograd {'on' if fastconv.winograd() else 'off'}",
        f"- Versions: Python {platform.python_version()}, NumPy {np.__version__}, "
        f"{torch_config}, fastconv {fastconv.__version__} (git {git_revision(REPO)}), "
        f"compiler: {compiler_description(REPO)}",
        f"- Threads: {args.threads} for fastconv and PyTorch; NumPy's BLAS: {blas_threads}",
        f"- Layouts: fastconv {' and '.join(layouts)}, PyTorch "
        f"{' and '.join(TORCH_LAYOUT[layout] for layout in layouts)}; batch "
        f"{args.batch or (16 if args.quick else 128)} unless the input column says otherwise",
        f"- Ceilings, the fastest of several repetitions at the start of this run: sgemm {ceilings.sgemm_gflops:.1f} "
        f"GFLOP/s (NumPy's BLAS, {ceilings.sgemm_n}^3), copy {ceilings.copy_gbs:.1f} GB/s "
        f"(a {ceilings.copy_mib} MiB np.copyto on {ceilings.copy_threads} thread(s), bytes "
        f"read + written), FMA peak {ceilings.fma_gflops:.1f} GFLOP/s (fastconv's "
        f"register-only FMA probe, {fastconv.isa()} build, {args.threads} thread(s); "
        f"compute-bound rows are shares of it)",
        f"- Timing: median of {budget.min_reps}-{budget.max_reps} repetitions after "
        f"{budget.warmup + 1} warm-up calls, implementations interleaved round by round, about "
        f"{budget.seconds:g} s per row; PyTorch forward under no_grad, backward = "
        f"torch.autograd.grad of the op (graph built outside the timed call) for dx, dw and dbias; "
        f"fastconv backward returns dx, dw and dbias too",
        f"- Noise: timings vary from run to run when other processes share the cores; the "
        f"ratios come from one run with the contenders interleaved. Load average (1 min) at "
        f"start {loads[0]:.2f}, at end {loads[1]:.2f} on {os.cpu_count()} logical CPUs",
    ] + ([f"- Note: {args.note}"] if args.note else [])


def run(args, command: str, blas_threads: str):
    torch.set_num_threads(args.threads)
    fastconv.set_num_threads(args.threads)
    layouts = ["NCHW", "NHWC"] if args.layout == "both" else [args.layout]
    batch = args.batch or (16 if args.quick else None)
    budget = Budget(args.seconds or (0.3 if args.quick else 4.0),
                    min_reps=2 if args.quick else 3, max_reps=5 if args.quick else 25)
    load_start = os.getloadavg()[0]
    ceilings = (measure_ceilings(args.threads, sgemm_n=1024, copy_mib=64,
                                 budget=Budget(0.2, min_reps=3, max_reps=10)) if args.quick
                else measure_ceilings(args.threads))
    ceilings = replace(ceilings, fma_gflops=max(
        fastconv._cpu.fma_peak(fastconv.isa(), args.threads) for _ in range(3)))
    print(f"ceilings: sgemm {ceilings.sgemm_gflops:.1f} GFLOP/s, FMA peak "
          f"{ceilings.fma_gflops:.1f} GFLOP/s, copy {ceilings.copy_gbs:.1f} "
          f"GB/s", flush=True)

    def selected(cases, rebatch=True):
        cases = [c.with_batch(batch) if batch and rebatch else c for c in cases]
        text = args.filter.lower()
        return [c for c in cases if text in f"{c.label} {c.shape} {c.group}".lower()]

    started = time.perf_counter()
    rows = []
    for case in selected(case_list.all_cases()):
        for pass_ in case_list.PASSES:
            rows.append(time_row(case, pass_, layouts, budget))
            print(_progress(rows[-1]), flush=True)
    reference_rows = [time_reference_row(case, pass_, Budget(1.0, max_reps=10))
                      for case in selected(case_list.REFERENCE_CASES, rebatch=False)
                      for pass_ in case_list.PASSES]
    print(f"timed in {time.perf_counter() - started:.0f} s", flush=True)

    date = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    lines = header(args, command, date, layouts, blas_threads, ceilings, budget,
                   (load_start, os.getloadavg()[0]))
    text = markdown(lines, rows, reference_rows, ceilings)
    print("\n" + text)
    if args.out is not None and rows:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cpu.md").write_text(text)
        bar_chart(rows, args.out / "cpu.png",
                  f"fastconv vs PyTorch CPU, {args.threads} threads, {date}")
        print(f"wrote {args.out / 'cpu.md'} and {args.out / 'cpu.png'}")

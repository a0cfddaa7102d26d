"""The run behind `fastconv bench`: ceilings, the timed rows, the report files."""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import median

import numpy as np
import torch

import fastconv

from . import cases as layer_list
from . import runners
from .measure import (
    Budget,
    compiler_description,
    cpu_description,
    git_revision,
    measure_ceilings,
    median_seconds,
    sample_seconds,
)
from .report import BASELINE, MAX_RELATIVE_ERROR, ReferenceRow, Row, bar_chart, markdown

REPO = Path(__file__).resolve().parent.parent
TORCH_LAYOUT = {"NCHW": False, "channels_last": True}
BASELINE_MODULE = "fastconv_baseline"  # the name the --baseline package is imported under


def load_baseline(path: Path):
    """Another installed build of the fastconv package (say main's, from `pip install
    --target DIR .`: the folder DIR/fastconv), imported under a private name, so that its
    own Python layer calls its own kernels: builds whose bindings differ compare too."""
    init = Path(path) / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"--baseline {path}: not a fastconv package folder (no __init__.py)")
    spec = importlib.util.spec_from_file_location(
        BASELINE_MODULE, init, submodule_search_locations=[str(path)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[BASELINE_MODULE] = package  # its relative imports resolve under the private name
    spec.loader.exec_module(package)
    return package


def _with_isa(isa, run):
    def timed():
        fastconv._cpu.set_isa(isa)
        return run()

    return timed


def _baseline_run(baseline, case, direction, expected):
    """(run, convert) of `case` through the baseline package's functional API, or None
    where that build cannot run it (an op or argument it lacks) or disagrees with PyTorch."""
    try:
        run, convert = runners.fastconv_runner(case, direction, lib=baseline.functional)
        error = runners.max_relative_error(convert(run()), expected)
    except (AttributeError, TypeError, ValueError) as e:
        print(f"baseline: {case.op.name} {direction} not timed ({type(e).__name__}: {e})")
        return None
    if error > MAX_RELATIVE_ERROR:
        print(f"baseline: {case.op.name} {direction} not timed (error {error:.1e})")
        return None
    return run, convert


def time_row(layer, direction, isas, layouts, budget: Budget, baseline=None) -> Row:
    """fastconv with each ISA (and the baseline build), fastconv's kernels of the first ISA
    from PyTorch tensors (fastconv.torch) and PyTorch, each in each layout, interleaved; every
    fastconv route's outputs checked against PyTorch's on the first (warm-up) call."""
    case = layer.case()
    runs = {}
    for layout in layouts:
        run, convert = runners.fastconv_runner(case.in_layout(layout), direction)
        for isa in isas:
            runs[("fastconv", isa, layout)] = (_with_isa(isa, run), convert)
            if isa == isas[0]:  # the operator route right after the same kernels called directly
                route, route_convert = runners.fastconv_torch_runner(
                    case.in_layout(layout), direction
                )
                runs[("fastconv.torch", isa, layout)] = (_with_isa(isa, route), route_convert)
    for name, channels_last in TORCH_LAYOUT.items():
        if name == "NCHW" or "NHWC" in layouts:
            runs[("torch", None, name)] = runners.torch_runner(case, direction, channels_last)
    expected_run, expected_convert = runs[("torch", None, "NCHW")]
    expected = expected_convert(expected_run())
    if baseline is not None:
        for layout in layouts:
            base = _baseline_run(baseline, case.in_layout(layout), direction, expected)
            if base is not None:
                runs[("fastconv", BASELINE, layout)] = base
    error = max(
        runners.max_relative_error(convert(run()), expected)
        for key, (run, convert) in runs.items()
        if key[0] != "torch" and key[1] != BASELINE
    )
    samples = sample_seconds({key: run for key, (run, _) in runs.items()}, budget)
    fastconv._cpu.set_isa(isas[0])
    row = Row(
        layer,
        direction,
        flops=case.op.flops(case, direction),
        bytes=case.op.bytes(case, direction),
        algorithms={
            layout: layer_list.conv_algorithms(case.in_layout(layout), direction)
            for layout in layouts
        },
        error=error,
    )
    for (lib, isa, layout), times in samples.items():
        if lib == "fastconv":
            row.fastconv.setdefault(isa, {})[layout] = median(times)
        elif lib == "fastconv.torch":
            row.fastconv_torch[layout] = median(times)
            # paired with the direct call of the same round: load from other processes
            # between rounds cancels out of the ratio
            direct = samples[("fastconv", isa, layout)]
            row.route_ratio[layout] = median(r / d for r, d in zip(times, direct))
        else:
            row.torch[layout] = median(times)
    return row


def time_reference_row(layer, direction, budget: Budget) -> ReferenceRow:
    case = layer.case()
    fast_run, fast_out = runners.fastconv_runner(case, direction)
    ref_run, ref_out = runners.fastconv_runner(case, direction, lib=fastconv.reference)
    error = runners.max_relative_error(fast_out(fast_run()), ref_out(ref_run()))
    seconds = median_seconds({"reference": ref_run, "fastconv": fast_run}, budget)
    return ReferenceRow(layer, direction, seconds["reference"], seconds["fastconv"], error)


def _progress(row: Row) -> str:
    layout, seconds = row.best()
    return (
        f"{row.layer.label:<26} {row.layer.shape:<16} {layer_list.SHORT[row.direction]}: "
        + ", ".join(f"fastconv {isa} {row.best(isa)[1] * 1e3:7.2f} ms" for isa in row.fastconv)
        + f", torch {row.peer[1] * 1e3:7.2f} ms ({row.peer[0]}) -> {row.ratio():5.2f}x "
        f"(goal {row.goal:g}x: {'met' if row.met else 'NOT met'}, err {row.error:.1e})"
    )


def header(
    args, command, date, isas, isa_choice, baseline, blas_threads, ceilings, budget, loads
) -> list:
    torch_config = (
        f"PyTorch {torch.__version__} (oneDNN available: {torch.backends.mkldnn.is_available()})"
    )
    peaks = ", ".join(f"{isa} {peak:.1f} GFLOP/s" for isa, peak in ceilings.fma_gflops.items())
    lines = [
        f"- Command: `{command}`"
        + (" (quick: a development run, not the goal run)" if args.quick else ""),
        f"- Date: {date}",
        f"- Machine: {cpu_description()}; fastconv kernels timed: {', '.join(isas)} (import "
        f"chose {isa_choice}); Winograd {'on' if fastconv.winograd() else 'off'}",
        f"- Versions: Python {platform.python_version()}, NumPy {np.__version__}, "
        f"{torch_config}, fastconv {fastconv.__version__} (git {git_revision(REPO)}), "
        f"compiler: {compiler_description(REPO)}",
        f"- Threads: {args.threads} for fastconv and PyTorch; NumPy's BLAS: {blas_threads}",
        f"- Memory: fastconv's outputs of 1 MiB or more come from its block cache (limit "
        f"{fastconv.array_cache_stats()['limit'] / 2**20:g} MiB), so a repeated call writes into "
        f"pages it already owns; PyTorch's come from its CPU allocator",
        f"- Layouts: fastconv NCHW and NHWC, PyTorch NCHW and channels_last; batch "
        f"{args.batch or (16 if args.quick else 128)} unless the input column says otherwise",
        f"- Ceilings, the fastest of several repetitions at the start and at the end of this run "
        f"(the higher of the two): register-only "
        f"FMA peak {peaks} ({args.threads} threads); copy {ceilings.copy_gbs:.1f} GB/s (a "
        f"{ceilings.copy_mib} MiB np.copyto on {ceilings.copy_threads} thread(s), bytes read + "
        f"written); NumPy's sgemm {ceilings.sgemm_gflops:.1f} GFLOP/s ({ceilings.sgemm_n}^3)",
        f"- Timing: median of {budget.min_reps}-{budget.max_reps} repetitions after "
        f"{budget.warmup + 1} warm-up calls, every contender interleaved round by round, each "
        f"timed call after {budget.settle * 1e3:g} ms of the same contender's untimed calls (so "
        f"that no library's idle OpenMP workers still spin on the cores), about "
        f"{budget.seconds:g} s per row; PyTorch forward under no_grad, backward = "
        f"torch.autograd.grad of the op (graph built outside the timed call); fastconv backward "
        f"returns every gradient too",
        f"- Noise: timings vary from run to run when other processes share the cores; the "
        f"ratios come from one run with the contenders interleaved. Load average (1 min) at "
        f"start {loads[0]:.2f}, at end {loads[1]:.2f} on {os.cpu_count()} logical CPUs",
    ]
    if baseline is not None:
        lines.append(
            f"- Baseline build ('{BASELINE}' columns): the fastconv package at {args.baseline}, "
            f"through its own Python layer, with its kernels {baseline._cpu.isa()}"
        )
    if args.note:
        lines.append(f"- Note: {args.note}")
    return lines


def run(args, command: str, blas_threads: str):
    isa_choice = fastconv._cpu.isa_reason()  # before the rows switch ISAs
    torch.set_num_threads(args.threads)
    fastconv.set_num_threads(args.threads)
    isas = (
        args.isas
        or [i for i in fastconv._cpu.supported_isas() if i != "generic"][:2]
        or ["generic"]
    )
    layouts = ["NCHW", "NHWC"] if args.layout == "both" else [args.layout]
    batch = args.batch or (16 if args.quick else None)
    budget = Budget(
        args.seconds or (0.3 if args.quick else 4.0),
        min_reps=2 if args.quick else 3,
        max_reps=5 if args.quick else 25,
    )
    baseline = load_baseline(args.baseline) if args.baseline else None
    if baseline is not None:
        baseline.set_num_threads(args.threads)
        print(f"baseline: {args.baseline}, kernels {baseline._cpu.isa()}", flush=True)
    load_start = os.getloadavg()[0]

    def ceilings_now():
        found = (
            measure_ceilings(
                args.threads,
                isas,
                sgemm_n=1024,
                copy_mib=64,
                budget=Budget(0.2, min_reps=3, max_reps=10),
            )
            if args.quick
            else measure_ceilings(args.threads, isas)
        )
        print(
            "ceilings: "
            + ", ".join(f"{isa} FMA {p:.1f} GFLOP/s" for isa, p in found.fma_gflops.items())
            + f", copy {found.copy_gbs:.1f} GB/s",
            flush=True,
        )
        return found

    ceilings = ceilings_now()

    def selected(layers, rebatch=True):
        layers = [layer.with_batch(batch) if batch and rebatch else layer for layer in layers]
        text = args.filter.lower()
        return [
            layer
            for layer in layers
            if text in f"{layer.label} {layer.shape} {layer.group}".lower()
        ]

    started = time.perf_counter()
    rows = []
    for layer in selected(layer_list.all_layers()):
        for direction in layer_list.DIRECTIONS:
            rows.append(time_row(layer, direction, isas, layouts, budget, baseline))
            print(_progress(rows[-1]), flush=True)
    reference_rows = [
        time_reference_row(layer, direction, Budget(1.0, max_reps=10))
        for layer in selected(layer_list.REFERENCE_LAYERS, rebatch=False)
        for direction in layer_list.DIRECTIONS
    ]
    print(f"timed in {time.perf_counter() - started:.0f} s", flush=True)
    ceilings = ceilings.highest(ceilings_now())

    date = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    loads = (load_start, os.getloadavg()[0])
    lines = header(
        args, command, date, isas, isa_choice, baseline, blas_threads, ceilings, budget, loads
    )
    text = markdown(lines, rows, reference_rows, ceilings)
    print("\n" + text)
    if args.out is not None and rows:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cpu.md").write_text(text)
        bar_chart(
            rows,
            args.out / "cpu.png",
            f"fastconv ({isas[0]}) vs PyTorch CPU, {args.threads} threads, {date}",
        )
        print(f"wrote {args.out / 'cpu.md'} and {args.out / 'cpu.png'}")

"""`python -m bench.isa`: fastconv's kernel builds (AVX-512, AVX2, portable) side by side, with
PyTorch and, optionally, another build of fastconv._cpu (say main's) in the same process.

Every contender runs every row in both layouts, interleaved round by round (bench/measure.py),
so that load from other processes slows them alike; each reports its faster layout. A build
is switched with fastconv._cpu.set_isa() before each call; `--baseline path/to/_cpu*.so`
loads another compiled fastconv._cpu under a private name and routes the functional API to
it for its calls (its AVX2 kernels: the ones it picks on this machine).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.isa", description=__doc__.split("\n")[0])
    p.add_argument("--filter", default="", help="cases whose name, shape or group has this")
    p.add_argument("--isas", default="avx512,avx2", help="builds to time (avx512,avx2)")
    p.add_argument("--baseline", type=Path, default=None,
                   help="another fastconv _cpu*.so to time as 'base' (e.g. main's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per row (4)")
    p.add_argument("--batch", type=int, default=None, help="override the batch size (128)")
    p.add_argument("--passes", default="fwd,bwd")
    return p.parse_args(argv)


def load_baseline(path: Path):
    spec = importlib.util.spec_from_file_location("fastconv_baseline._cpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    from .cpu import _import_installed_fastconv
    _import_installed_fastconv()
    import torch

    import fastconv
    from fastconv import _backend

    from . import cases as case_list
    from . import ops
    from .measure import Budget, cpu_description, median_seconds

    torch.set_num_threads(args.threads)
    fastconv.set_num_threads(args.threads)
    isas = [i for i in args.isas.split(",") if i]
    default_isa = fastconv._cpu.isa()
    base = load_baseline(args.baseline) if args.baseline else None
    if base is not None:
        base.set_num_threads(args.threads)
    peaks = {isa: max(fastconv._cpu.fma_peak(isa, args.threads) for _ in range(3))
             for isa in isas}
    print(f"# {cpu_description()}; {args.threads} threads; load {os.getloadavg()[0]:.2f}")
    print("# FMA peak (GFLOP/s, best of 3): "
          + ", ".join(f"{isa} {peak:.1f}" for isa, peak in peaks.items()))

    def with_isa(isa, fn):
        def run():
            fastconv._cpu.set_isa(isa)
            return fn()
        return run

    def with_baseline(fn):
        def run():
            _backend._cpu = base
            try:
                return fn()
            finally:
                _backend._cpu = fastconv._cpu
        return run

    names = isas + (["base"] if base is not None else []) + ["torch"]
    header = ("| op | input | pass | " + " | ".join(f"{n} ms" for n in names) + " | "
              + " | ".join(f"torch/{i}" for i in isas)
              + (" | base/avx2" if base is not None and "avx2" in isas else "")
              + f" | {isas[0]} GFLOP/s | of {isas[0]} peak | max rel err |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    cases = [c.with_batch(args.batch) if args.batch else c for c in case_list.all_cases()]
    text = args.filter.lower()
    for case in [c for c in cases if text in f"{c.label} {c.shape} {c.group}".lower()]:
        for pass_ in args.passes.split(","):
            inputs = ops.make_inputs(case)
            runners = {}
            for layout in ("NCHW", "NHWC"):
                run, convert = ops.numpy_runner(fastconv, case, pass_, inputs, layout)
                for isa in isas:
                    runners[(isa, layout)] = (with_isa(isa, run), convert)
                if base is not None:
                    runners[("base", layout)] = (with_baseline(run), convert)
                runners[("torch", layout)] = ops.torch_runner(case, pass_, inputs,
                                                              layout == "NHWC")
            expected = runners[("torch", "NCHW")][1](runners[("torch", "NCHW")][0]())
            error = max(ops.max_relative_error(convert(run()), expected)
                        for (name, _), (run, convert) in runners.items() if name in isas)
            seconds = median_seconds({k: r for k, (r, _) in runners.items()},
                                     Budget(args.seconds))
            best = {n: min(s for (name, _), s in seconds.items() if name == n) for n in names}
            work = case_list.flops(case, pass_)
            rate = work / best[isas[0]] / 1e9
            cells = [f"{best[n] * 1e3:.3g}" for n in names]
            ratios = [f"{best['torch'] / best[i]:.2f}x" for i in isas]
            if base is not None and "avx2" in isas:
                ratios.append(f"{best['base'] / best['avx2']:.2f}x")
            print(f"| {case.label} | {case.shape} | {pass_} | " + " | ".join(cells + ratios)
                  + f" | {rate:.1f} | {rate / peaks[isas[0]]:.0%} | {error:.1e} |", flush=True)
    fastconv._cpu.set_isa(default_isa)


if __name__ == "__main__":
    sys.exit(main())

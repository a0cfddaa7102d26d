"""`fastconv bench`: fastconv against PyTorch's CPU kernels (oneDNN), side by side.

In one process: measures the machine's ceilings (each ISA's register-only FMA peak, a large
copy, NumPy's sgemm), then times every layer of bench/cases.py forward and backward with
fastconv (NCHW and NHWC, with the kernels of each ISA asked for: by default the best this
CPU runs and AVX2 beside it on an AVX-512 machine) and PyTorch (NCHW and channels_last),
interleaved, median of repetitions after warm-up, the same thread count for all; then a few
small cases against the NumPy reference. Prints the table and the goal summary and writes
cpu.md and cpu.png to --out.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="fastconv bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="batch 16 and a short timing budget, for development; writes files "
        "only when --out is given",
    )
    p.add_argument(
        "--filter",
        default="",
        help="only layers whose name, input shape or group contains this substring",
    )
    p.add_argument("--threads", type=int, default=2, help="threads for every library (2)")
    p.add_argument(
        "--isas",
        type=lambda text: [i for i in text.split(",") if i],
        default=None,
        help="fastconv kernels to time, e.g. avx512,avx2 (default: the best this CPU "
        "runs, and avx2 beside avx512)",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another build of the fastconv package to time as 'base': its folder, say "
        "DIR/fastconv after `pip install --target DIR .` in a checkout of main",
    )
    p.add_argument(
        "--layout",
        choices=("both", "NCHW", "NHWC"),
        default="both",
        help="layouts to time; NHWC is channels_last for PyTorch (both)",
    )
    p.add_argument("--batch", type=int, default=None, help="override the batch size (128)")
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="timed seconds per row, all contenders together (4, quick 0.3)",
    )
    p.add_argument("--note", default="", help="a line of context for the report's header")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for cpu.md and cpu.png (default: bench/results in a source "
        "checkout, else ./fastconv-bench)",
    )
    args = p.parse_args(argv)
    if args.threads < 1 or (args.batch is not None and args.batch < 1):
        p.error("--threads and --batch must be at least 1")
    if args.out is None and not args.quick:
        results = Path("bench/results")
        args.out = results if results.is_dir() else Path("fastconv-bench")
    return args


def main(argv=None):
    args = parse_args(argv)
    from .runner import run

    try:  # NumPy's BLAS serves the sgemm ceiling: the same thread count as the kernels
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(limits=args.threads, user_api="blas")  # noqa: F841
        blas_threads = str(args.threads)
    except ImportError:
        blas_threads = "NumPy's default (threadpoolctl is not installed)"
    words = sys.argv[1:] if argv is None else argv
    run(
        args,
        command=" ".join(["fastconv bench", shlex.join(words)]).strip(),
        blas_threads=blas_threads,
    )


if __name__ == "__main__":
    main()

"""Timing (interleaved medians, bounded by time), the machine's ceilings and its description."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import numpy as np


@dataclass(frozen=True)
class Budget:
    """Timed repetitions per measurement: at least min_reps, then more while the measurement
    has used less than seconds, never more than max_reps."""
    seconds: float
    min_reps: int = 3
    max_reps: int = 25
    warmup: int = 1


def median_seconds(fns: dict, budget: Budget) -> dict:
    """Median wall time of each callable."""
    return {name: median(times) for name, times in sample_seconds(fns, budget).items()}


def sample_seconds(fns: dict, budget: Budget) -> dict:
    """Wall times of each callable. Calls are interleaved round by round, so a burst of load
    from other processes slows every contender alike and the ratios stay fair."""
    for fn in fns.values():
        for _ in range(budget.warmup):
            fn()
    samples = {name: [] for name in fns}
    start = time.perf_counter()
    for rep in range(budget.max_reps):
        if rep >= budget.min_reps and time.perf_counter() - start >= budget.seconds:
            break
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return samples


@dataclass(frozen=True)
class Ceilings:
    sgemm_gflops: float
    copy_gbs: float
    sgemm_n: int
    copy_mib: int
    copy_threads: int
    fma_gflops: float = 0.0  # fastconv's register-only FMA probe, all threads; 0: not measured

    @property
    def compute(self) -> tuple:
        """(GFLOP/s, name) that compute-bound rows are measured against: the FMA peak where
        measured (what the kernels' instructions can do at best), else NumPy's sgemm."""
        return (self.fma_gflops, "FMA peak") if self.fma_gflops else (self.sgemm_gflops, "sgemm")

    @property
    def balance(self) -> float:
        """FLOP per byte above which an op is compute-bound on this machine (the roofline knee)."""
        return self.sgemm_gflops / self.copy_gbs


def _threaded_copy(dst, src, threads):
    """np.copyto in `threads` slices; NumPy releases the GIL while it copies."""
    parts = np.array_split(np.arange(src.size), threads)
    workers = [threading.Thread(target=np.copyto, args=(dst[p[0]:p[-1] + 1], src[p[0]:p[-1] + 1]))
               for p in parts if p.size]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def measure_ceilings(threads: int, sgemm_n: int = 2048, copy_mib: int = 256,
                     budget: Budget = Budget(1.0, min_reps=5, max_reps=10)) -> Ceilings:
    """sgemm GFLOP/s of NumPy's BLAS on an n x n product, and copy GB/s (bytes read + bytes
    written) of the faster of a 1-thread and a `threads`-thread copy of copy_mib MiB; each
    from its fastest repetition, as a ceiling is what the machine can do at best."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((sgemm_n, sgemm_n), dtype=np.float32)
    b = rng.standard_normal((sgemm_n, sgemm_n), dtype=np.float32)
    src = np.ones(copy_mib * 2 ** 20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    copies = {1: lambda: np.copyto(dst, src)}
    if threads > 1:
        copies[threads] = lambda: _threaded_copy(dst, src, threads)
    sgemm = min(sample_seconds({"sgemm": lambda: a @ b}, budget)["sgemm"])
    copy = {name: min(times) for name, times in sample_seconds(copies, budget).items()}
    copy_threads = min(copy, key=copy.get)
    return Ceilings(2 * sgemm_n ** 3 / sgemm / 1e9, 2 * src.nbytes / copy[copy_threads] / 1e9,
                    sgemm_n, copy_mib, copy_threads)


def cpu_description() -> str:
    """'model, N cores, flags' from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs"
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    flags = set(re.search(r"^flags\s*:\s*(.*)$", info, re.M).group(1).split())
    wanted = [f for f in ("avx2", "fma", "avx512f") if f in flags]
    return (f"{model.group(1).strip() if model else platform.machine()}, "
            f"{os.cpu_count()} logical CPUs, flags: {' '.join(wanted) or 'no avx2/fma/avx512f'}")


def compiler_description(repo: Path) -> str:
    """The C++ compiler of the extension's CMake build, when a build folder is at hand."""
    for cache in sorted(repo.glob("build/*/CMakeCache.txt")):
        found = re.search(r"^CMAKE_CXX_COMPILER:\w+=(.+)$", cache.read_text(), re.M)
        if found:
            try:
                out = subprocess.run([found.group(1), "--version"], capture_output=True,
                                     text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                return found.group(1)
            return out.splitlines()[0] if out else found.group(1)
    return "unknown (no CMake build folder found)"


def git_revision(repo: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"

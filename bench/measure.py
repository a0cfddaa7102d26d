"""Timing (interleaved medians, bounded by time), the machine's ceilings and its description."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import median

import numpy as np

import fastconv


@dataclass(frozen=True)
class Budget:
    """Timed repetitions per measurement: at least min_reps, then more while the measurement
    has used less than seconds, never more than max_reps."""

    seconds: float
    min_reps: int = 3
    max_reps: int = 25
    warmup: int = 1
    settle: float = 0.02  # seconds of untimed calls before each timed call


def median_seconds(fns: dict, budget: Budget) -> dict:
    """Median wall time of each callable."""
    return {name: median(times) for name, times in sample_seconds(fns, budget).items()}


def sample_seconds(fns: dict, budget: Budget) -> dict:
    """Wall times of each callable. Calls are interleaved round by round, so a burst of load
    from other processes slows every contender alike and the ratios stay fair.

    Each timed call follows `budget.settle` seconds of untimed calls of the same callable: an
    OpenMP runtime's workers keep spinning on the cores for milliseconds after a parallel
    region (libgomp's default wait policy; PyTorch bundles its own libgomp), so the call right
    after another library's would share the cores with that library's idle workers. Settled,
    each contender is timed as it runs in a program of its own, op after op."""
    for fn in fns.values():
        for _ in range(budget.warmup):
            fn()
    samples = {name: [] for name in fns}
    start = time.perf_counter()
    for rep in range(budget.max_reps):
        if rep >= budget.min_reps and time.perf_counter() - start >= budget.seconds:
            break
        for name, fn in fns.items():
            settled = time.perf_counter() + budget.settle
            while time.perf_counter() < settled:
                fn()
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
    fma_gflops: dict = field(default_factory=dict)  # ISA -> register-only FMA peak, all threads

    def highest(self, other: "Ceilings") -> "Ceilings":
        """Each ceiling at the higher of two measurements: on a shared machine a measurement
        can catch the cores at half speed, and a ceiling is what the machine can do at best."""
        copy_gbs, copy_threads = max(
            (self.copy_gbs, self.copy_threads), (other.copy_gbs, other.copy_threads)
        )
        return replace(
            self,
            sgemm_gflops=max(self.sgemm_gflops, other.sgemm_gflops),
            copy_gbs=copy_gbs,
            copy_threads=copy_threads,
            fma_gflops={
                isa: max(peak, other.fma_gflops.get(isa, peak))
                for isa, peak in self.fma_gflops.items()
            },
        )

    def balance(self, isa: str) -> float:
        """FLOP per byte above which an op is compute-bound with `isa`'s kernels (the roofline
        knee)."""
        return self.fma_gflops.get(isa, self.sgemm_gflops) / self.copy_gbs


def _threaded_copy(dst, src, threads):
    """np.copyto in `threads` slices; NumPy releases the GIL while it copies."""
    parts = np.array_split(np.arange(src.size), threads)
    workers = [
        threading.Thread(target=np.copyto, args=(dst[p[0] : p[-1] + 1], src[p[0] : p[-1] + 1]))
        for p in parts
        if p.size
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def measure_ceilings(
    threads: int,
    isas=(),
    sgemm_n: int = 2048,
    copy_mib: int = 256,
    budget: Budget = Budget(1.0, min_reps=5, max_reps=10),
) -> Ceilings:
    """sgemm GFLOP/s of NumPy's BLAS on an n x n product, copy GB/s (bytes read + bytes
    written) of the faster of a 1-thread and a `threads`-thread copy of copy_mib MiB, and the
    register-only FMA peak of each ISA's kernels on `threads` threads; each from its fastest
    repetition, as a ceiling is what the machine can do at best."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((sgemm_n, sgemm_n), dtype=np.float32)
    b = rng.standard_normal((sgemm_n, sgemm_n), dtype=np.float32)
    src = np.ones(copy_mib * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    copies = {1: lambda: np.copyto(dst, src)}
    if threads > 1:
        copies[threads] = lambda: _threaded_copy(dst, src, threads)
    sgemm = min(sample_seconds({"sgemm": lambda: a @ b}, budget)["sgemm"])
    copy = {name: min(times) for name, times in sample_seconds(copies, budget).items()}
    copy_threads = min(copy, key=copy.get)
    fma = {isa: max(fastconv._cpu.fma_peak(isa, threads) for _ in range(3)) for isa in isas}
    return Ceilings(
        2 * sgemm_n**3 / sgemm / 1e9,
        2 * src.nbytes / copy[copy_threads] / 1e9,
        sgemm_n,
        copy_mib,
        copy_threads,
        fma,
    )


def cpu_description() -> str:
    """'model, N logical CPUs, flags' of this machine."""
    from fastconv.info import cpu_model

    try:
        flags = set(
            re.search(r"^flags\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
            .group(1)
            .split()
        )
    except (OSError, AttributeError):
        flags = set()
    wanted = [
        f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl") if f in flags
    ]
    return (
        f"{cpu_model()}, {os.cpu_count()} logical CPUs, flags: "
        f"{' '.join(wanted) or 'no avx2/fma/avx512'}"
    )


def compiler_description(repo: Path) -> str:
    """The C++ compiler of the extension's CMake build, when a build folder is at hand."""
    for cache in sorted(repo.glob("build/*/CMakeCache.txt")):
        found = re.search(r"^CMAKE_CXX_COMPILER:\w+=(.+)$", cache.read_text(), re.M)
        if found:
            try:
                out = subprocess.run(
                    [found.group(1), "--version"], capture_output=True, text=True, timeout=10
                ).stdout
            except (OSError, subprocess.TimeoutExpired):
                return found.group(1)
            return out.splitlines()[0] if out else found.group(1)
    return "unknown (no CMake build folder found)"


def git_revision(repo: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"

"""`fastconv info`: what fastconv runs with on this machine (paste it into a bug report)."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import numpy as np

from . import _build_info, _cpu
from ._gpu import available as cuda_available


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, the platform's answer elsewhere)."""
    try:
        found = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        found = None
    return found.group(1).strip() if found else (platform.processor() or platform.machine())


def _blas() -> str:
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # the config layout differs between NumPy versions
        return "unknown"


def _cuda_lines() -> list:
    ok, why = cuda_available()
    lines = [f"CUDA:       {'available: ' + why if ok else 'not available: ' + why}"]
    try:
        import cupy
    except ImportError:
        return lines + ["CuPy:       not installed"]
    lines.append(
        f"CuPy:       {cupy.__version__} (built for CUDA "
        f"{_cuda_version(cupy.cuda.runtime.runtimeGetVersion())})"
    )
    if ok:
        runtime = cupy.cuda.runtime
        name = runtime.getDeviceProperties(0)["name"]
        lines.append(f"GPU:        {name.decode() if isinstance(name, bytes) else name}")
        driver = runtime.driverGetVersion()
        lines.append(f"driver:     supports CUDA {_cuda_version(driver)}")
        if driver // 1000 < runtime.runtimeGetVersion() // 1000:
            lines.append(
                "WARNING:    CuPy was built for a newer CUDA than the driver supports: "
                "install the CuPy of your driver's CUDA major version "
                "(fastconv[gpu-cuda12] or fastconv[gpu-cuda13])"
            )
    return lines


def _cuda_version(code: int) -> str:
    return f"{code // 1000}.{code % 1000 // 10}"


def report() -> str:
    lines = [
        f"fastconv:   {_build_info.VERSION} (git {_build_info.GIT_REVISION}), built with "
        f"{_build_info.COMPILER}; CUDA module {'built' if _build_info.CUDA_BUILT else 'not built'}",
        f"installed:  {Path(__file__).resolve().parent}",
        f"Python:     {platform.python_version()} on {platform.system()} {platform.machine()}",
        f"CPU:        {cpu_model()}, {os.cpu_count()} logical CPUs",
        f"kernels:    {_cpu.isa_reason()}; this CPU runs: {', '.join(_cpu.supported_isas())}",
        f"threads:    {_cpu.get_num_threads()}",
        f"Winograd:   {'on' if _cpu.winograd() else 'off'}",
        f"NumPy:      {np.__version__}, BLAS {_blas()}",
    ]
    return "\n".join(lines + _cuda_lines())

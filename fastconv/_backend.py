"""Picks the kernels for a call: `fastconv._cpu` for NumPy arrays, `fastconv._cuda` for
CuPy arrays (or anything exposing __cuda_array_interface__ or a CUDA DLPack capsule)."""
from __future__ import annotations

import numpy as np

from . import _cpu


def _on_gpu(a) -> bool:
    if isinstance(a, np.ndarray):
        return False
    if hasattr(a, "__cuda_array_interface__"):
        return True
    device = getattr(a, "__dlpack_device__", None)
    return device is not None and device()[0] == 2  # kDLCUDA


def resolve(*arrays):
    """(kernel module, array module) for the arrays of one call; None entries are ignored."""
    given = [a for a in arrays if a is not None]
    on_gpu = [_on_gpu(a) for a in given]
    if not any(on_gpu):
        return _cpu, np
    if not all(on_gpu):
        kinds = ", ".join(type(a).__name__ for a in given)
        raise TypeError(f"all arrays of one call must live on the same device, got {kinds}; "
                        f"move them with cupy.asarray(...) or cupy.asnumpy(...)")
    from . import _gpu  # imported lazily: CPU-only machines never load CUDA
    return _gpu.kernels(), _gpu.cupy()

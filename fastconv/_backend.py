"""Where a call runs: the one rule for "is this array on the GPU", the array module (NumPy or
CuPy) that owns an array, and the kernels for a call: `fastconv._cpu` for host arrays, the
CUDA kernels (`fastconv._gpu`) for device arrays.

An array is on the GPU when its DLPack device is CUDA or it exposes
`__cuda_array_interface__` (CuPy, Numba, a PyTorch CUDA tensor, ...). CuPy is imported only
when such an array appears, so CPU-only machines never load CUDA.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from . import _cpu
from .memory import cached_empty

_DLPACK_CUDA = (2, 13)  # kDLCUDA, kDLCUDAManaged


def on_gpu(a) -> bool:
    if a is None or type(a) is np.ndarray or isinstance(a, np.generic):
        return False
    dlpack_device = getattr(a, "__dlpack_device__", None)
    if dlpack_device is not None:
        try:
            return dlpack_device()[0] in _DLPACK_CUDA
        except Exception:  # a foreign library's refusal: fall back to the array interface
            pass
    try:
        return getattr(a, "__cuda_array_interface__", None) is not None
    except (AttributeError, RuntimeError):  # PyTorch raises RuntimeError for grad tensors
        return False


def array_module(a):
    """numpy for host arrays, cupy for device arrays."""
    if not on_gpu(a):
        return np
    import cupy

    return cupy


def to_numpy(a):
    """A NumPy array of a host or device array (a copy from the device)."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


@dataclass(frozen=True)
class Backend:
    """The kernels and array module of one call."""

    kernels: object
    xp: object

    def empty(self, shape, dtype=np.float32):
        """An uninitialised output of this backend: 64-byte aligned from fastconv's cache on
        the host (memory.cached_empty), 256-byte aligned from CuPy's pool on the GPU."""
        if self.xp is np:
            return cached_empty(shape, dtype)
        return self.xp.empty(tuple(shape), dtype=dtype)

    def device(self, a):
        """Context in which arrays are allocated beside `a` (its GPU; nothing on the host)."""
        if self.xp is np:
            return contextlib.nullcontext()
        return self.xp.cuda.Device(a.device.id)


CPU = Backend(_cpu, np)


def resolve(*arrays) -> Backend:
    """The backend of the arrays of one call; None entries are ignored."""
    given = [a for a in arrays if a is not None]
    on_gpu_flags = [on_gpu(a) for a in given]
    if not any(on_gpu_flags):
        return CPU
    if not all(on_gpu_flags):
        kinds = ", ".join(type(a).__name__ for a in given)
        raise TypeError(
            f"all arrays of one call must live on the same device, got {kinds}; "
            f"move them with cupy.asarray(...) or cupy.asnumpy(...)"
        )
    from . import _gpu  # imported lazily: CPU-only machines never load CUDA

    return Backend(_gpu.kernels(), _gpu.cupy())

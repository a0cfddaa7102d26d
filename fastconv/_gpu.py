"""The GPU backend: device arrays in, the CUDA kernels of `fastconv._cuda` on the device of
the arrays and CuPy's current stream there.

`fastconv._backend.resolve` loads this module only for CUDA arrays, and nothing here imports
CuPy or the CUDA module until a GPU call (or `available()`) asks for them, so `import
fastconv` works on machines without a GPU, driver or CuPy.

`kernels()` returns an object with the ops of `fastconv._cpu` (see csrc/op_bindings.h, which
checks every buffer): each call runs under the device its arrays live on, with that device's
current CuPy stream. Nothing synchronizes.
"""

from __future__ import annotations

import functools


def available() -> tuple[bool, str]:
    """(True, description) if the GPU path can run here, else (False, why not)."""
    try:
        from . import _cuda  # noqa: F401
    except ImportError as err:
        return False, (
            f"fastconv was built without its CUDA module ({err}); rebuild on a "
            f"machine with nvcc: pip install --no-build-isolation ."
        )
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed: pip install 'fastconv[gpu]'"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDARuntimeError without a driver; its type lives in cupy
        return False, f"no usable CUDA driver or device: {err}"
    if count == 0:
        return False, "no CUDA device found"
    return True, f"{count} CUDA device(s), CuPy {cupy.__version__}"


@functools.lru_cache(maxsize=None)
def _modules():
    ok, why = available()
    if not ok:
        raise RuntimeError(f"fastconv got CUDA arrays but cannot run on the GPU: {why}")
    import cupy

    from . import _cuda

    return cupy, _cuda


def cupy():
    """The CuPy module (the array library of GPU calls)."""
    return _modules()[0]


def kernels():
    """The CUDA kernels behind the `fastconv._cpu` interface, for CuPy arrays."""
    return _Kernels(*_modules())


class _Kernels:
    def __init__(self, cp, native):
        self._cp, self._native = cp, native

    def _device(self, arrays):
        """The one GPU that every CuPy array of a call lives on."""
        devices = {a.device.id for a in arrays if isinstance(a, self._cp.ndarray)}
        if len(devices) > 1:
            raise ValueError(
                f"the arrays of one call are on GPUs {sorted(devices)}; move them "
                f"to one with cupy.asarray under `with cupy.cuda.Device(n):`"
            )
        return devices.pop() if devices else self._cp.cuda.Device().id

    def __getattr__(self, name):
        native, cp = getattr(self._native, name), self._cp

        def call(*args):
            with cp.cuda.Device(self._device(args)):
                native(*args, stream=cp.cuda.get_current_stream().ptr)

        return call

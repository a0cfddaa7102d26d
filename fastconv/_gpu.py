"""The GPU backend: CuPy arrays in, the CUDA kernels of `fastconv._cuda` on the current stream.

`fastconv._backend.resolve` loads this module only for CUDA arrays, and nothing here imports
CuPy or the CUDA module until a GPU call (or `available()`) asks for them, so `import
fastconv` works on machines without a GPU, driver or CuPy.

`kernels()` returns an object with the functions and signatures of `fastconv._cpu`, on CuPy
arrays. Each checks every buffer (CuPy, float32, C-contiguous, the size its geometry says, on
one device) before passing raw pointers, the device's current CuPy stream and, for the
reductions, a workspace from CuPy's memory pool to the kernels. Nothing synchronizes.
"""
from __future__ import annotations

import functools

import numpy as np

from ._args import ConvGeometry, PoolGeometry


def available() -> tuple[bool, str]:
    """(True, description) if the GPU path can run here, else (False, why not)."""
    try:
        from . import _cuda  # noqa: F401
    except ImportError as err:
        return False, (f"fastconv was built without its CUDA module ({err}); rebuild on a "
                       f"machine with nvcc: pip install --no-build-isolation .")
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

    # -- checks ----------------------------------------------------------------------------
    def _pointers(self, *buffers):
        """Device pointers of (array, name, size) triples; arrays may be None (no bias).
        Returns (pointers, device id)."""
        cp, device, pointers = self._cp, None, []
        for a, name, size in buffers:
            if a is None:
                pointers.append(0)
                continue
            if not isinstance(a, cp.ndarray):
                raise TypeError(f"{name} must be a CuPy array, got {type(a).__name__}")
            if a.dtype != np.float32:
                raise TypeError(f"{name} must be float32, got {a.dtype}")
            if not a.flags.c_contiguous:
                raise ValueError(f"{name} must be C-contiguous: pass cupy.ascontiguousarray({name})")
            if a.size != size:
                raise ValueError(f"{name} has {a.size} elements, the geometry needs {size}")
            if device is None:
                device = a.device.id
            elif a.device.id != device:
                raise ValueError(f"{name} is on GPU {a.device.id} but the other arrays are on GPU "
                                 f"{device}; run the call under `with cupy.cuda.Device(n):` with "
                                 f"all arrays on device n")
            pointers.append(a.data.ptr)
        return pointers, device

    def _run(self, device, launch, workspace_floats=None):
        """Runs launch(stream, workspace pointer) on `device` and its current CuPy stream."""
        cp = self._cp
        with cp.cuda.Device(device):
            workspace = None
            if workspace_floats:
                workspace = cp.empty(workspace_floats, dtype=cp.float32)
            launch(cp.cuda.get_current_stream().ptr, 0 if workspace is None else workspace.data.ptr)
            # workspace goes back to CuPy's pool here; the pool only hands it out again to
            # work queued after this call on the same stream.

    @staticmethod
    def _conv(g):
        geometry = ConvGeometry(*g)
        cin_g = geometry.c_in // max(geometry.groups, 1)
        sizes = dict(x=geometry.n * geometry.c_in * geometry.h * geometry.w,
                     y=geometry.n * geometry.c_out * geometry.oh * geometry.ow,
                     w=geometry.c_out * cin_g * geometry.kh * geometry.kw)
        return geometry, sizes, tuple(int(v) for v in g)

    @staticmethod
    def _pool(g):
        geometry = PoolGeometry(*g)
        sizes = dict(x=geometry.n * geometry.c * geometry.h * geometry.w,
                     y=geometry.n * geometry.c * geometry.oh * geometry.ow)
        return geometry, sizes, tuple(int(v) for v in g)

    @staticmethod
    def _channels(shape):
        """Batch norm's (outer, channels, inner): the shape as ints, the size of x and of
        the per-channel vectors."""
        shape = tuple(int(v) for v in shape)
        outer, channels, inner = shape
        return shape, outer * channels * inner, channels

    # -- the fastconv._cpu interface -------------------------------------------------------
    def conv2d_forward(self, x, w, bias, y, g):
        geometry, size, g = self._conv(g)
        (px, pw, pb, py), device = self._pointers(
            (x, "x", size["x"]), (w, "w", size["w"]), (bias, "bias", geometry.c_out),
            (y, "y", size["y"]))
        if geometry.n:
            self._run(device, lambda s, _: self._native.conv2d_forward(px, pw, pb, py, g, s))

    def conv2d_backward_input(self, dy, w, dx, g):
        geometry, size, g = self._conv(g)
        (pdy, pw, pdx), device = self._pointers(
            (dy, "dy", size["y"]), (w, "w", size["w"]), (dx, "dx", size["x"]))
        if geometry.n:
            self._run(device, lambda s, _: self._native.conv2d_backward_input(pdy, pw, pdx, g, s))

    def conv2d_backward_weight(self, dy, x, dw, g):
        geometry, size, g = self._conv(g)
        (pdy, px, pdw), device = self._pointers(
            (dy, "dy", size["y"]), (x, "x", size["x"]), (dw, "dw", size["w"]))
        if not geometry.n:
            dw.fill(0)
            return
        self._run(device, lambda s, ws: self._native.conv2d_backward_weight(pdy, px, pdw, ws, g, s),
                  self._native.conv2d_backward_weight_workspace(g))

    def bias_backward(self, dy, dbias, g):
        geometry, size, g = self._conv(g)
        (pdy, pdb), device = self._pointers((dy, "dy", size["y"]), (dbias, "dbias", geometry.c_out))
        if not geometry.n:
            dbias.fill(0)
            return
        self._run(device, lambda s, ws: self._native.bias_backward(pdy, pdb, ws, g, s),
                  self._native.bias_backward_workspace(g))

    def pool2d_forward(self, x, y, g):
        geometry, size, g = self._pool(g)
        (px, py), device = self._pointers((x, "x", size["x"]), (y, "y", size["y"]))
        if geometry.n:
            self._run(device, lambda s, _: self._native.pool2d_forward(px, py, g, s))

    def pool2d_backward(self, dy, x, dx, g):
        geometry, size, g = self._pool(g)
        (pdy, px, pdx), device = self._pointers(
            (dy, "dy", size["y"]), (x, "x", size["x"]), (dx, "dx", size["x"]))
        if geometry.n:
            self._run(device, lambda s, ws: self._native.pool2d_backward(pdy, px, pdx, ws, g, s),
                      self._native.pool2d_backward_workspace(g))

    def batch_norm_forward(self, x, gamma, beta, eps, activation, y, mean, var, shape):
        shape, size, c = self._channels(shape)
        (px, pg, pb, py, pm, pv), device = self._pointers(
            (x, "x", size), (gamma, "gamma", c), (beta, "beta", c), (y, "y", size),
            (mean, "mean", c), (var, "var", c))
        self._run(device, lambda s, ws: self._native.batch_norm_forward(
            px, pg, pb, eps, activation, py, pm, pv, ws, shape, s),
            self._native.batch_norm_forward_workspace(shape))

    def batch_norm_inference(self, x, mean, var, gamma, beta, eps, activation, y, shape):
        shape, size, c = self._channels(shape)
        (px, pm, pv, pg, pb, py), device = self._pointers(
            (x, "x", size), (mean, "mean", c), (var, "var", c), (gamma, "gamma", c),
            (beta, "beta", c), (y, "y", size))
        self._run(device, lambda s, ws: self._native.batch_norm_inference(
            px, pm, pv, pg, pb, eps, activation, py, ws, shape, s),
            self._native.batch_norm_inference_workspace(shape))

    def batch_norm_backward(self, dy, x, mean, var, gamma, beta, eps, activation, dx, dgamma,
                            dbeta, shape):
        shape, size, c = self._channels(shape)
        (pdy, px, pm, pv, pg, pb, pdx, pdg, pdb), device = self._pointers(
            (dy, "dy", size), (x, "x", size), (mean, "mean", c), (var, "var", c),
            (gamma, "gamma", c), (beta, "beta", c), (dx, "dx", size), (dgamma, "dgamma", c),
            (dbeta, "dbeta", c))
        self._run(device, lambda s, ws: self._native.batch_norm_backward(
            pdy, px, pm, pv, pg, pb, eps, activation, pdx, pdg, pdb, ws, shape, s),
            self._native.batch_norm_backward_workspace(shape))

"""PyTorch tensors as fastconv arrays and back, without copies.

A 4-D tensor is NCHW-shaped whatever its memory format. Contiguous memory is fastconv's NCHW
layout; channels_last memory is NHWC, so permuting the tensor to (N, H, W, C) gives a
contiguous view of it that fastconv reads as NHWC. `memory_order` names that permutation (or
None), `to_array` hands the memory to NumPy (CPU) or CuPy (CUDA, through DLPack, whose
handshake orders the streams) and applies it there, and `to_tensor` does the reverse.
`permuted` and `restored` do the same to tensors, for the fake kernels.

On the GPU a call runs under `on_device`: PyTorch's and CuPy's current device is the
tensors' device and CuPy's current stream is PyTorch's current stream there, so fastconv's
kernels are queued behind the PyTorch work that produced their inputs and ahead of the work
that reads their outputs, as a PyTorch operator's would be, whatever device the caller's
`torch.cuda.device(...)` selects.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .. import _gpu

CHANNELS_LAST = (0, 2, 3, 1)  # NCHW-shaped dims in NHWC memory order
_FROM_CHANNELS_LAST = (0, 3, 1, 2)


def memory_order(x: torch.Tensor):
    """CHANNELS_LAST for a 4-D tensor in channels_last memory, None for any other (a tensor
    that is both, such as one with a single channel, counts as contiguous)."""
    if (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        return CHANNELS_LAST
    return None


def permuted(t: torch.Tensor, order):
    """t's dims in memory order (a view)."""
    return t if order is None else t.permute(order)


def restored(t: torch.Tensor, order):
    """A tensor in memory order (as permuted made it) back in NCHW dims (a view)."""
    return t if order is None else t.permute(_FROM_CHANNELS_LAST)


def to_array(t: torch.Tensor, order=None):
    """A NumPy (CPU) or CuPy (CUDA) view of `t`'s memory, dims permuted by `order`. The
    functional API copies it only where it is not contiguous: memory in neither order (a
    gradient of another memory format, a slice)."""
    t = t.detach()
    a = t.numpy() if t.device.type == "cpu" else _gpu.cupy().from_dlpack(t)
    return a if order is None else a.transpose(order)


def to_tensor(a, order=None) -> torch.Tensor:
    """The tensor sharing array `a`'s memory, with `order` undone."""
    if order is not None:
        a = a.transpose(_FROM_CHANNELS_LAST)
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.from_dlpack(a)


def check(what: str, tensors: dict) -> torch.device:
    """The one device of a call's tensors; float32 only."""
    device = None
    for name, t in tensors.items():
        if t is None:
            continue
        if t.dtype != torch.float32:
            raise TypeError(
                f"fastconv.torch.{what}: {name} has dtype {t.dtype}; fastconv computes "
                f"in float32 only: pass {name}.float()"
            )
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(
                f"fastconv.torch.{what}: all tensors must be on one device, got "
                f"{device} and {t.device} ({name})"
            )
    return device


_ON_CPU = contextlib.nullcontext()


def on_device(device: torch.device):
    """The context of a fastconv call on `device`'s tensors (see the module's docstring);
    nothing to do for the CPU, the common case, kept cheap."""
    if device.type == "cpu":
        return _ON_CPU
    if device.type != "cuda":
        raise TypeError(f"fastconv runs on CPU and CUDA tensors, got a tensor on {device}")
    return _on_gpu(device)


@contextlib.contextmanager
def _on_gpu(device: torch.device):
    """PyTorch's current device too, so that the DLPack handshakes (which consult it) pair
    the streams of `device`."""
    cupy = _gpu.cupy()
    stream = torch.cuda.current_stream(device).cuda_stream
    with (
        torch.cuda.device(device),
        cupy.cuda.Device(device.index),
        cupy.cuda.ExternalStream(stream, device.index),
    ):
        yield

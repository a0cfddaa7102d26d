"""fastconv: hand-written CPU (AVX2/FMA) and CUDA kernels for 2-D convolution and pooling.

The functional API lives in `fastconv.functional` and is re-exported here; the NumPy oracle
is `fastconv.reference`. See README.md for conventions.
"""
try:
    from ._cpu import get_num_threads, isa, set_num_threads, set_winograd, winograd
except ImportError as error:  # pragma: no cover - only a broken install gets here
    raise ImportError(
        f"fastconv's compiled kernels (fastconv._cpu) are missing from {__path__[0]}. If that is "
        "a source checkout shadowing the installed package (python -m pytest puts the current "
        "folder first on sys.path), run `pytest` instead, or build in place with "
        "`pip install --no-build-isolation -e .`") from error
from . import reference
from ._gpu import available as cuda_available
from .functional import (
    avg_pool2d,
    avg_pool2d_backward,
    batch_norm,
    batch_norm_backward,
    batch_norm_inference,
    conv2d,
    conv2d_backward,
    depthwise_conv2d,
    depthwise_conv2d_backward,
    global_avg_pool2d,
    global_avg_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
    min_pool2d,
    min_pool2d_backward,
    pointwise_conv2d,
    pointwise_conv2d_backward,
    separable_conv2d,
    separable_conv2d_backward,
    sum_pool2d,
    sum_pool2d_backward,
)
from .memory import array_cache, array_cache_stats

__version__ = "0.1.0"

__all__ = [
    "array_cache", "array_cache_stats", "avg_pool2d", "avg_pool2d_backward", "batch_norm",
    "batch_norm_backward", "batch_norm_inference", "conv2d", "conv2d_backward", "cuda_available",
    "depthwise_conv2d", "depthwise_conv2d_backward", "get_num_threads", "global_avg_pool2d",
    "global_avg_pool2d_backward", "isa", "max_pool2d", "max_pool2d_backward", "min_pool2d",
    "min_pool2d_backward", "pointwise_conv2d", "pointwise_conv2d_backward", "reference",
    "separable_conv2d", "separable_conv2d_backward", "set_num_threads", "set_winograd",
    "sum_pool2d", "sum_pool2d_backward", "winograd",
]

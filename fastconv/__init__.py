"""fastconv: hand-written CPU (AVX2/FMA) and CUDA kernels for 2-D convolution and pooling.

The functional API lives in `fastconv.functional` and is re-exported here; the NumPy oracle
is `fastconv.reference`; `fastconv.ops` describes every op. See README.md for conventions.
"""

try:
    from ._cpu import get_num_threads, isa, set_num_threads, set_winograd, winograd
except ImportError as error:  # pragma: no cover - only a broken install gets here
    raise ImportError(
        f"fastconv's compiled kernels (fastconv._cpu) are missing from {__path__[0]}. If that is "
        "a source checkout shadowing the installed package (python -m puts the current folder "
        "first on sys.path), use the `fastconv` command or run from another folder, or build "
        "in place with `pip install --no-build-isolation -e .`"
    ) from error
from . import _build_info, functional, reference
from ._gpu import available as cuda_available
from .functional import *  # noqa: F403 - the API, listed once in functional.__all__
from .memory import array_cache, array_cache_stats, empty_cache, set_cache_limit

__version__ = _build_info.VERSION
__all__ = [
    *functional.__all__,
    "array_cache",
    "array_cache_stats",
    "cuda_available",
    "empty_cache",
    "get_num_threads",
    "isa",
    "reference",
    "set_cache_limit",
    "set_num_threads",
    "set_winograd",
    "winograd",
]

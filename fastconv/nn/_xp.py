"""The array module (NumPy or CuPy) that owns an array, so layer maths runs where the data is."""
from __future__ import annotations

import numpy as np


def array_module(a):
    """numpy for NumPy arrays, cupy for CuPy arrays (CuPy is imported only when one appears)."""
    if isinstance(a, np.ndarray) or not hasattr(a, "__cuda_array_interface__"):
        return np
    import cupy
    return cupy


def to_numpy(a):
    """A NumPy copy of a NumPy or CuPy array (for saving and printing)."""
    return a if isinstance(a, np.ndarray) else a.get()

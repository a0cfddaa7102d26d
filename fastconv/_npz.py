"""Writing and reading .npz files of named arrays (weights, checkpoints, the dataset cache):
writes are atomic (a file that exists is whole), and a file that is not a readable .npz
raises one clear ValueError naming it instead of an error from deep inside NumPy."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np


class FileFormatError(ValueError):
    """A file that is not what it should be: not an .npz, truncated, or written for another
    model."""


def npz_path(path) -> Path:
    """The path np.savez writes: `.npz` appended unless already there."""
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def stale_partial(path) -> Path:
    """Where save() writes before the rename; left behind only by a killed write."""
    return npz_path(path).with_name(npz_path(path).name + ".tmp.npz")


def save(path, arrays: dict) -> Path:
    final, tmp = npz_path(path), stale_partial(path)
    np.savez(tmp, **arrays)
    os.replace(tmp, final)  # a crash mid-write never leaves a half file
    return final


def load(path, what="arrays") -> dict:
    """{name: array} of an .npz file; FileFormatError if it is truncated or not an .npz."""
    path = Path(path)
    try:
        with open(path, "rb") as f:  # ours to close, whatever np.load raises
            data = np.load(f, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("a single array (.npy), not an .npz archive of named arrays")
            with data:
                return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} file at {path}") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FileFormatError(f"{path} is not a readable {what} file (.npz): {reason}") from None

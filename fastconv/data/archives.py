"""Reading image datasets: image-folder trees (in a folder or a .tar/.tar.gz) and the official
CIFAR-10 python and binary batches, unpickled safely. Decoding errors become DatasetError."""

from __future__ import annotations

import contextlib
import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DatasetError(ValueError):
    """A data archive or folder that is missing pieces, corrupt or not in a known format."""


def _decode(data, name, size=None):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(
            f"cannot decode image {name}: {e}; the file is corrupt or not an image"
        ) from None


def _folder_entries(names):
    """[(split or None, class, name)] for image paths shaped .../[split/]class/file."""
    out = []
    for name in names:
        parts = Path(name).parts
        if not name.lower().endswith(IMAGE_SUFFIXES) or len(parts) < 2:
            continue
        split = next((p for p in parts[:-2] if p in ("train", "test")), None)
        out.append((split, parts[-2], name))
    return out


def _stack(images, labels, what):
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DatasetError(
            f"{what}: images have different sizes {sorted(shapes)[:3]}...; pass "
            f"image_size=(H, W) to resize them"
        )
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _read_tree(entries, read, image_size, what, classes=None):
    """{split: (x, y)} and the class names from entries [(split, class, name)]."""
    classes = list(classes or sorted({c for _, c, _ in entries}))
    index = {c: i for i, c in enumerate(classes)}
    splits: dict = {}
    for split, cls, name in sorted(entries):
        if cls in index:
            x, y = splits.setdefault(split, ([], []))
            x.append(_decode(read(name), f"{name} in {what}", image_size))
            y.append(index[cls])
    if not splits:
        raise DatasetError(
            f"{what}: no images found in class folders (expected [train|test/]<class>/<image>.jpg)"
        )
    return {s: _stack(x, y, what) for s, (x, y) in splits.items()}, classes


_ARCHIVE_MAGIC = ((0, b"\x1f\x8b"), (0, b"BZh"), (0, b"\xfd7zXZ\x00"), (257, b"ustar"))
EXPECTED = (
    "expected a CIFAR-10 archive (cifar10-jpeg.tar.gz, cifar-10-python.tar.gz or "
    "cifar-10-binary.tar.gz) or a folder of either"
)


def _looks_like_archive(path) -> bool:
    """True if the file starts like a gzip, bzip2, xz or tar archive."""
    with open(path, "rb") as f:
        head = f.read(512)
    return any(head[at : at + len(magic)] == magic for at, magic in _ARCHIVE_MAGIC)


@contextlib.contextmanager
def _tar(path):
    """An open tar archive, {name: member} of its files; read errors become DatasetError."""
    if Path(path).stat().st_size == 0:
        raise DatasetError(f"{path} is an empty file; {EXPECTED}")
    if not _looks_like_archive(path):
        raise DatasetError(f"{path} is not a .tar/.tar.gz archive; {EXPECTED}")
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            yield tar, members
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(
            f"{path} is truncated or corrupt ({first_line}); copy or download it again"
        ) from None


def _read_tar_tree(path, image_size=None, classes=None):
    with _tar(path) as (tar, members):
        return _read_tree(
            _folder_entries(members),
            lambda n: tar.extractfile(members[n]).read(),
            image_size,
            str(path),
            classes,
        )


def _read_dir_tree(root, image_size=None, classes=None):
    root = Path(root)
    names = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    return _read_tree(
        _folder_entries(names), lambda n: (root / n).read_bytes(), image_size, str(root), classes
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the official batches (dicts of bytes, lists and NumPy arrays) and refuses any
    other class, so a tampered archive cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise DatasetError(f"unexpected object {module}.{name} in a CIFAR-10 batch file")
        return super().find_class(module, name)


def _python_batch(data):
    batch = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return x, np.asarray(batch[b"labels"], dtype=np.int64)


def _binary_batch(data):
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, 1 + 3072)
    x = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), records[:, 0].astype(np.int64)


def _official(read, names, what):
    """{'train': (x, y), 'test': (x, y)} from the official python or binary batches."""
    python = {Path(n).name: n for n in names if "cifar-10-batches-py" in n}
    binary = {Path(n).name: n for n in names if "cifar-10-batches-bin" in n}
    if python:
        files, parse = python, _python_batch
        train, test = [f"data_batch_{i}" for i in range(1, 6)], "test_batch"
    else:
        files, parse = binary, _binary_batch
        train, test = [f"data_batch_{i}.bin" for i in range(1, 6)], "test_batch.bin"
    missing = [n for n in (*train, test) if n not in files]
    if missing:
        raise DatasetError(f"{what}: the CIFAR-10 archive lacks {missing}")
    try:
        parts = [parse(read(files[n])) for n in train]
        test_xy = parse(read(files[test]))
    except (
        pickle.UnpicklingError,
        KeyError,
        ValueError,
        EOFError,
        zlib.error,
        tarfile.TarError,
    ) as e:
        raise DatasetError(f"{what}: corrupt CIFAR-10 batch ({e}); download it again") from None
    return {
        "train": (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])),
        "test": test_xy,
    }

"""CIFAR-10: the image-folder .tar.gz or the official archives, decoded once with Pillow and
cached as .npz under ~/.cache/fastconv ($FASTCONV_CACHE); without a path, the cached official
archive or a download of it (checked by MD5)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .archives import EXPECTED, DatasetError, _official, _read_dir_tree, _read_tar_tree, _tar

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published on the CIFAR-10 page
CIFAR10_MEAN = (125.3, 122.9, 113.9)  # training-set channel means on the 0..255 scale
CIFAR10_STD = (62.5, 61.9, 66.5)  # measured on the shared JPEG copy


def cache_dir():
    path = Path(os.environ.get("FASTCONV_CACHE", Path.home() / ".cache" / "fastconv"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _hash(path, algorithm="sha256"):
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_cifar(path):
    path = Path(path)
    if path.is_dir():
        names = [str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()]
        if any("cifar-10-batches" in n for n in names):
            return _official(lambda n: (path / n).read_bytes(), names, str(path))
        return _read_dir_tree(path, classes=CIFAR10_CLASSES)[0]
    with _tar(path) as (tar, members):
        if any("cifar-10-batches" in n for n in members):
            return _official(lambda n: tar.extractfile(members[n]).read(), list(members), str(path))
    return _read_tar_tree(path, classes=CIFAR10_CLASSES)[0]


def download(url=CIFAR10_URL, md5=CIFAR10_MD5, dest=None, timeout=30):
    """Download `url` into the cache (once) and check its MD5; a clear error when offline."""
    import urllib.error
    import urllib.request

    dest = Path(dest or cache_dir() / Path(url).name)
    if not dest.exists():
        tmp = dest.with_suffix(".part")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
                for block in iter(lambda: r.read(1 << 20), b""):
                    f.write(block)
        except (urllib.error.URLError, OSError) as e:
            tmp.unlink(missing_ok=True)
            raise DatasetError(
                f"could not download {url} ({e}); this machine looks offline: "
                f"pass the archive explicitly, e.g. --data "
                f"../shared/datasets/cifar10-jpeg.tar.gz"
            ) from None
        tmp.replace(dest)
    digest = _hash(dest, "md5")
    if digest != md5:
        dest.unlink()
        raise DatasetError(
            f"{url} downloaded with MD5 {digest}, expected {md5}: the file is "
            f"corrupt (deleted it; try again)"
        )
    return dest


def load_cifar10(path=None, *, cache=True, download_if_missing=True, verbose=True):
    """((x_train, y_train), (x_test, y_test)): uint8 (N, 32, 32, 3) images, int64 labels.

    path: the image-folder .tar.gz, an official archive, or an unpacked folder of either.
    Without a path: the cached official archive, else a download (checked by MD5).
    Decoded arrays are cached under cache_dir(), keyed by the archive's SHA-256."""
    if path is None:
        official = cache_dir() / Path(CIFAR10_URL).name
        if not official.exists() and not download_if_missing:
            raise DatasetError("no CIFAR-10 path given and none cached; pass the archive path")
        path = official if official.exists() else download()
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"CIFAR-10 data not found at {path}; pass the path of "
            f"cifar10-jpeg.tar.gz (e.g. ../shared/datasets/cifar10-jpeg.tar.gz) "
            f"or cifar-10-python.tar.gz"
        )
    key = (
        _hash(path)[:16]
        if path.is_file()
        else hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    )
    cached = cache_dir() / f"cifar10-{key}.npz"
    if cache and cached.exists():
        with np.load(cached) as d:
            return (d["x_train"], d["y_train"]), (d["x_test"], d["y_test"])
    if verbose:
        print(f"decoding {path} once (cached afterwards in {cached})")
    splits = _read_cifar(path)
    if "train" not in splits or "test" not in splits:
        found = ", ".join(sorted(map(str, splits))) or "none"
        raise DatasetError(
            f"{path} holds no CIFAR-10 train/ and test/ splits (found: {found}); {EXPECTED}"
        )
    (x_tr, y_tr), (x_te, y_te) = splits["train"], splits["test"]
    if cache:
        tmp = cached.with_suffix(".tmp.npz")
        np.savez(tmp, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
        tmp.replace(cached)
    return (x_tr, y_tr), (x_te, y_te)

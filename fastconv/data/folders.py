"""Image folders of your own classes: root/<class>/<image>, loaded whole or streamed in batches."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .archives import (
    DatasetError,
    _decode,
    _folder_entries,
    _read_dir_tree,
    _read_tar_tree,
)
from .batches import default_preprocess


def load_image_folder(root, image_size=None, classes=None):
    """(x, y, class_names) from root/<class>/<image> (a folder or a .tar/.tar.gz); images of
    any size are resized to image_size=(H, W) when given. Classes are sorted by name unless
    given. (A root with train/ and test/ folders returns both splits merged; use
    load_image_folder(root / 'train') for one.)"""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    size = None if image_size is None else tuple(image_size)
    splits, names = (_read_dir_tree(root, size, classes) if root.is_dir()
                     else _read_tar_tree(root, size, classes))
    xs, ys = zip(*(splits[k] for k in sorted(splits, key=str)))
    return np.concatenate(xs), np.concatenate(ys), names

class ImageFolderStream:
    """Batches decoded from disk on the fly, for image folders larger than memory:
    root/<class>/<image>, resized to image_size. Iterating yields (inputs, labels)."""

    def __init__(self, root, batch_size, image_size, *, classes=None, shuffle=True, seed=0,
                 augment=None, preprocess=None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder of class folders")
        entries = _folder_entries(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        self.classes = list(classes or sorted({c for _, c, _ in entries}))
        index = {c: i for i, c in enumerate(self.classes)}
        self.files = [(root / n, index[c]) for _, c, n in sorted(entries) if c in index]
        if not self.files:
            raise DatasetError(f"{root}: no images in class folders")
        self.batch_size, self.image_size = batch_size, tuple(image_size)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.augment, self.preprocess = augment, preprocess or default_preprocess

    def __len__(self):
        return -(-len(self.files) // self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = rng.permutation(len(self.files)) if self.shuffle else np.arange(len(self.files))
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            chosen = [self.files[i] for i in index]
            xb = np.stack([_decode(p.read_bytes(), str(p), self.image_size) for p, _ in chosen])
            yb = np.array([label for _, label in chosen], dtype=np.int64)
            if self.augment is not None:
                xb = self.augment(xb, rng, index=index, epoch=self.epoch - 1)
            yield self.preprocess(xb), yb

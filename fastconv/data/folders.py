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
    splits, names = (
        _read_dir_tree(root, size, classes)
        if root.is_dir()
        else _read_tar_tree(root, size, classes)
    )
    xs, ys = zip(*(splits[k] for k in sorted(splits, key=str)))
    return np.concatenate(xs), np.concatenate(ys), names


def load_image(path, target_size=None):
    """One image file as a uint8 (H, W, 3) RGB array, resized to target_size=(H, W) when
    given (Keras' load_img and img_to_array in one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    size = None if target_size is None else tuple(target_size)
    return _decode(path.read_bytes(), str(path), size)


def _keras_subset(names, validation_split, subset):
    """Keras' split of one class's sorted files: the first validation_split of them are the
    'validation' subset, the rest the 'training' subset."""
    n_val = int(validation_split * len(names))
    return {None: names, "validation": names[:n_val], "training": names[n_val:]}[subset]


class ImageFolderStream:
    """Batches decoded from disk on the fly, for image folders larger than memory:
    root/<class>/<image>, resized to image_size; only the file names are held. Iterating
    yields one epoch of (inputs, labels): labels are class indices (class_mode='sparse') or
    one-hot float32 rows ('categorical'). subset='training' or 'validation' with
    validation_split takes Keras' split (see ImageAugmenter.flow_from_directory, which builds
    these streams with Keras' argument names)."""

    def __init__(
        self,
        root,
        batch_size,
        image_size,
        *,
        classes=None,
        shuffle=True,
        seed=0,
        augment=None,
        preprocess=None,
        class_mode="sparse",
        validation_split=0.0,
        subset=None,
    ):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder of class folders")
        if class_mode not in ("sparse", "categorical"):
            raise ValueError(f"class_mode must be 'sparse' or 'categorical', got {class_mode!r}")
        if subset not in (None, "training", "validation"):
            raise ValueError(f"subset must be None, 'training' or 'validation', got {subset!r}")
        if subset is not None and not 0 < validation_split < 1:
            raise ValueError(
                f"subset={subset!r} needs a validation_split in (0, 1), got {validation_split!r}"
            )
        entries = _folder_entries(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        self.classes = list(classes or sorted({c for _, c, _ in entries}))
        names = {c: [] for c in self.classes}
        for _, c, n in sorted(entries):
            if c in names:
                names[c].append(n)
        self.files = [
            (root / n, label)
            for label, c in enumerate(self.classes)
            for n in _keras_subset(names[c], validation_split, subset)
        ]
        if not self.files:
            raise DatasetError(
                f"{root}: no images in class folders"
                + (f" for subset {subset!r}" if subset else "")
            )
        self.batch_size, self.image_size = batch_size, tuple(image_size)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.augment, self.preprocess = augment, preprocess or default_preprocess
        self.class_mode = class_mode

    @property
    def class_indices(self):
        """{class name: label}, as Keras' DirectoryIterator."""
        return {c: i for i, c in enumerate(self.classes)}

    def __len__(self):
        return -(-len(self.files) // self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = rng.permutation(len(self.files)) if self.shuffle else np.arange(len(self.files))
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            chosen = [self.files[i] for i in index]
            xb = np.stack([_decode(p.read_bytes(), str(p), self.image_size) for p, _ in chosen])
            yb = np.array([label for _, label in chosen], dtype=np.int64)
            if self.class_mode == "categorical":
                yb = np.eye(len(self.classes), dtype=np.float32)[yb]
            if self.augment is not None:
                xb = self.augment(xb, rng, index=index, epoch=self.epoch - 1)
            yield self.preprocess(xb), yb

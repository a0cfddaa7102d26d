"""Batches: splitting, preprocessing, iteration (with augmentation of the training batches),
background prefetch and a progress bar."""

from __future__ import annotations

import contextvars
import queue
import threading

import numpy as np

from .. import _args
from .cifar import CIFAR10_MEAN, CIFAR10_STD


def train_val_split(x, y, val_fraction=0.1, seed=0):
    """Shuffle once and split: ((x_train, y_train), (x_val, y_val)). Augment only the first."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(round(len(x) * val_fraction)))
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])


class Normalize:
    """uint8 NHWC batch -> float32 (x - mean) / std, in NHWC or transposed to NCHW."""

    def __init__(self, mean=CIFAR10_MEAN, std=CIFAR10_STD, layout="NHWC"):
        self.scale = (1.0 / np.asarray(std, np.float32)).astype(np.float32)
        self.shift = (-np.asarray(mean, np.float32) * self.scale).astype(np.float32)
        self.layout = layout

    def __call__(self, batch):
        out = batch.astype(np.float32)
        out *= self.scale
        out += self.shift
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2)) if self.layout == "NCHW" else out


def default_preprocess(batch):
    """uint8 images -> float32 in [0, 1]; float arrays -> contiguous float32."""
    if batch.dtype == np.uint8:
        return batch.astype(np.float32) / np.float32(255)
    return np.ascontiguousarray(batch, dtype=np.float32)


def batches(
    x,
    y,
    batch_size,
    *,
    rng=None,
    shuffle=True,
    augment=None,
    preprocess=None,
    drop_last=False,
    epoch=0,
):
    """Yield (inputs, labels) batches. `augment(batch, rng, index=, epoch=)` (the signature of
    every augmentation: `index` holds the images' indices into x, for per-image choices such
    as alternating flips) runs on the raw batch first, then `preprocess`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    rng = rng or np.random.default_rng(0)
    preprocess = preprocess or default_preprocess
    order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
    stop = len(x) - len(x) % batch_size if drop_last else len(x)
    for start in range(0, stop, batch_size):
        idx = (
            np.sort(order[start : start + batch_size])
            if not shuffle
            else order[start : start + batch_size]
        )
        xb = x[idx]
        if augment is not None:
            xb = augment(xb, rng, index=idx, epoch=epoch)
        yield preprocess(xb), y[idx]


def prefetch(iterable, depth=1):
    """Iterate `iterable` on a background thread, up to `depth` items ahead, so that preparing
    the next batch (NumPy work that mostly runs without the GIL) overlaps the training step.
    Items and their order are those of `iterable`; its exceptions re-raise here."""
    return _prefetched(iterable, _args.positive_int(depth, "depth"))


def _prefetched(iterable, depth):
    items, stop, end = queue.Queue(maxsize=depth), threading.Event(), object()

    def put(item):
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            for item in iterable:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as error:  # handed to the consumer, raised there
            put((end, error))

    # the copied context carries the caller's NumPy memory handler (fastconv.array_cache)
    thread = threading.Thread(target=contextvars.copy_context().run, args=(produce,), daemon=True)
    thread.start()
    try:
        while True:
            item, error = items.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()


def progress(iterable, total=None, desc=None, disable=False):
    """A tqdm bar when tqdm is installed, else the iterable itself."""
    if disable:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)

"""Augmentation of uint8 (or float) NHWC training batches, after Keras' ImageDataGenerator."""
from __future__ import annotations

import numpy as np

from .._backend import array_module

_PAD_MODES = {"nearest": "edge", "reflect": "reflect", "constant": "constant"}


def shift_batch(x, dy, dx, axis_w=2, fill_mode="nearest"):
    """Translate every image by (dy, dx) pixels (NHWC: axis_w=2, NCHW: axis_w=3), filling
    the uncovered border as ImageAugmenter does: 'nearest' repeats the edge pixels,
    'reflect' mirrors the image about them, 'constant' writes zeros."""
    axis_h = axis_w - 1
    pad = [(0, 0)] * x.ndim
    pad[axis_h], pad[axis_w] = (abs(dy), abs(dy)), (abs(dx), abs(dx))
    padded = array_module(x).pad(x, pad, mode=_PAD_MODES[fill_mode])
    h, w = x.shape[axis_h], x.shape[axis_w]
    sl = [slice(None)] * x.ndim
    sl[axis_h] = slice(abs(dy) - dy, abs(dy) - dy + h)
    sl[axis_w] = slice(abs(dx) - dx, abs(dx) - dx + w)
    return padded[tuple(sl)]


def _translate(x, dys, dxs, fill_mode):
    """Per-image translation of an NHWC batch by integer offsets, one copy per distinct offset."""
    m = int(max(np.abs(dys).max(initial=0), np.abs(dxs).max(initial=0)))
    if m == 0:
        return x
    padded = np.pad(x, ((0, 0), (m, m), (m, m), (0, 0)), mode=_PAD_MODES[fill_mode])
    out = np.empty_like(x)
    h, w = x.shape[1:3]
    for dy in np.unique(dys):
        for dx in np.unique(dxs[dys == dy]):
            sel = np.flatnonzero((dys == dy) & (dxs == dx))
            out[sel] = padded[sel, m - dy:m - dy + h, m - dx:m - dx + w]
    return out


def _rotate(x, degrees, fill_mode):
    """Rotate each NHWC image about its centre by its angle (nearest-neighbour sampling)."""
    n, h, w = x.shape[:3]
    yy, xx = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    theta = np.deg2rad(degrees)[:, None, None]
    cos, sin = np.cos(theta), np.sin(theta)
    sy = np.rint(cos * yy + sin * xx + (h - 1) / 2).astype(np.int64)
    sx = np.rint(-sin * yy + cos * xx + (w - 1) / 2).astype(np.int64)
    outside = (sy < 0) | (sy >= h) | (sx < 0) | (sx >= w)
    out = x[np.arange(n)[:, None, None], np.clip(sy, 0, h - 1), np.clip(sx, 0, w - 1)]
    if fill_mode == "constant":
        out[outside] = 0
    return out


def _hash_bits(index, seed):
    """A fixed pseudo-random bit per (index, seed): splitmix64's finaliser."""
    z = (np.asarray(index, np.uint64) + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((z ^ (z >> np.uint64(31))) & np.uint64(1)).astype(bool)


class ImageAugmenter:
    """Random augmentation of uint8 (or float) NHWC training batches, after Keras'
    ImageDataGenerator: horizontal_flip, width/height_shift_range (a fraction of the size if
    < 1, else pixels), rotation_range (degrees), brightness_range (lo, hi) factors, and
    crop_padding (pad by p and take a random crop, i.e. shifts of up to p pixels).
    Call as augmenter(batch, rng) with a NumPy Generator.

    horizontal_flip="alternate" is airbench's alternating flip: a fixed random half of the
    images is mirrored in even epochs and the other half in odd ones, so that every two
    epochs show each image both ways (random flips repeat a view half of the time). It needs
    the images' dataset indices and the epoch, which `batches` passes; without them it flips
    at random."""

    def __init__(self, horizontal_flip=False, width_shift_range=0.0, height_shift_range=0.0,
                 rotation_range=0.0, brightness_range=None, crop_padding=0, fill_mode="reflect",
                 flip_seed=0):
        if fill_mode not in ("nearest", "reflect", "constant"):
            raise ValueError(f"fill_mode must be 'nearest', 'reflect' or 'constant', got {fill_mode!r}")
        if horizontal_flip not in (True, False, "alternate"):
            raise ValueError(f"horizontal_flip must be True, False or 'alternate', "
                             f"got {horizontal_flip!r}")
        self.horizontal_flip, self.flip_seed = horizontal_flip, int(flip_seed)
        self.width_shift_range, self.height_shift_range = width_shift_range, height_shift_range
        self.rotation_range, self.brightness_range = rotation_range, brightness_range
        self.crop_padding, self.fill_mode = int(crop_padding), fill_mode

    @staticmethod
    def _pixels(r, size):
        return int(round(r * size)) if r < 1 else int(r)

    def _flips(self, n, rng, index, epoch):
        if self.horizontal_flip == "alternate" and index is not None:
            return _hash_bits(index, self.flip_seed) ^ bool(epoch % 2)
        return rng.random(n) < 0.5

    def __call__(self, x, rng, *, index=None, epoch=0):
        x = np.asarray(x)
        n, h, w = x.shape[:3]
        if index is not None and len(index) != n:
            raise ValueError(f"index has {len(index)} entries for a batch of {n} images")
        if self.horizontal_flip:
            flip = self._flips(n, rng, index, epoch)
            x = x.copy()
            x[flip] = x[flip, :, ::-1]
        if self.rotation_range:
            x = _rotate(x, rng.uniform(-self.rotation_range, self.rotation_range, n),
                        "constant" if self.fill_mode == "constant" else "nearest")
        max_dy = self._pixels(self.height_shift_range, h) + self.crop_padding
        max_dx = self._pixels(self.width_shift_range, w) + self.crop_padding
        if max_dy or max_dx:
            x = _translate(x, rng.integers(-max_dy, max_dy + 1, n),
                           rng.integers(-max_dx, max_dx + 1, n), self.fill_mode)
        if self.brightness_range is not None:
            lo, hi = self.brightness_range
            factor = rng.uniform(lo, hi, n).reshape(n, 1, 1, 1)
            bright = x.astype(np.float32) * factor
            x = np.clip(bright, 0, 255).astype(np.uint8) if x.dtype == np.uint8 else bright.astype(x.dtype)
        return x

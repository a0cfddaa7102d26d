"""Augmentation of uint8 (or float) NHWC training batches, after Keras' ImageDataGenerator."""

from __future__ import annotations

import functools

import numpy as np

from .._backend import array_module
from .batches import default_preprocess
from .folders import ImageFolderStream

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
            out[sel] = padded[sel, m - dy : m - dy + h, m - dx : m - dx + w]
    return out


def _affine(x, matrices, fill_mode):
    """Resample each NHWC image through its 2x2 matrix (nearest-neighbour sampling): output
    pixel p takes the input pixel nearest to centre + M (p - centre), in (row, column)
    coordinates about the image centre ((H-1)/2, (W-1)/2), so that a 90-degree rotation is
    exact (Keras' ImageDataGenerator centres half a pixel lower and to the right). Samples
    outside the image are 0 ('constant') or the nearest edge pixel."""
    n, h, w = x.shape[:3]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
    m = matrices[:, :, :, None, None]
    sy = np.rint(m[:, 0, 0] * yy + m[:, 0, 1] * xx + cy).astype(np.int64)
    sx = np.rint(m[:, 1, 0] * yy + m[:, 1, 1] * xx + cx).astype(np.int64)
    outside = (sy < 0) | (sy >= h) | (sx < 0) | (sx >= w)
    out = x[np.arange(n)[:, None, None], np.clip(sy, 0, h - 1), np.clip(sx, 0, w - 1)]
    if fill_mode == "constant":
        out[outside] = 0
    return out


def _rotation(degrees):
    """(n, 2, 2) matrices turning each image counter-clockwise by its angle, as np.rot90."""
    theta = np.deg2rad(degrees)
    cos, sin = np.cos(theta), np.sin(theta)
    return np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)


def _shear(degrees):
    """Keras' shear matrices: input (row, column) = (r - sin(a) c, cos(a) c) about the centre,
    so each column slides along the rows in proportion to its distance from the centre."""
    a = np.deg2rad(degrees)
    zero = np.zeros_like(a)
    return np.stack(
        [np.stack([np.ones_like(a), -np.sin(a)], -1), np.stack([zero, np.cos(a)], -1)], -2
    )


def _zoom(rows, cols):
    """Keras' zoom matrices: factor z samples the input z times as far from the centre, so
    z < 1 enlarges (zooms in) and z > 1 shrinks."""
    zero = np.zeros_like(rows)
    return np.stack([np.stack([rows, zero], -1), np.stack([zero, cols], -1)], -2)


def _zoom_bounds(zoom_range):
    """Keras' zoom_range: a float z means factors in [1 - z, 1 + z], a pair is (lo, hi)."""
    if isinstance(zoom_range, (int, float)) and not isinstance(zoom_range, bool):
        lo, hi = 1 - zoom_range, 1 + zoom_range
    elif isinstance(zoom_range, (tuple, list)) and len(zoom_range) == 2:
        lo, hi = (float(z) for z in zoom_range)
    else:
        raise TypeError(f"zoom_range must be a float or a pair (lo, hi), got {zoom_range!r}")
    if not 0 < lo <= hi:
        raise ValueError(
            f"zoom_range must give factors 0 < lo <= hi, got {zoom_range!r} ({lo}, {hi})"
        )
    return lo, hi


def _as_dtype_of(values, x):
    """Float `values` computed from the batch x, in x's dtype: uint8 rounded and clipped."""
    if x.dtype == np.uint8:
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return values.astype(x.dtype)


def _hash_bits(index, seed):
    """A fixed pseudo-random bit per (index, seed): splitmix64's finaliser."""
    z = (np.asarray(index, np.uint64) + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((z ^ (z >> np.uint64(31))) & np.uint64(1)).astype(bool)


class ImageAugmenter:
    """Random augmentation of uint8 (or float) NHWC training batches, after Keras'
    ImageDataGenerator, with its argument names: horizontal_flip, vertical_flip,
    width/height_shift_range (a fraction of the size if < 1, else pixels), rotation_range
    (degrees), shear_range (degrees), zoom_range (a float z for factors in [1 - z, 1 + z], or
    (lo, hi); one factor per axis, drawn separately), brightness_range (lo, hi) factors,
    channel_shift_range (one value in [-r, r] per image added to every channel and clipped to
    the image's own range, as Keras does), fill_mode, rescale, preprocessing_function and
    validation_split (see flow_from_directory); plus crop_padding (pad by p and take a random
    crop, i.e. shifts of up to p pixels). Rotation, shear and zoom are one resampling.
    Call as augmenter(batch, rng, index=..., epoch=...) with a NumPy Generator, like every
    augmentation.

    Hooks for other augmentation libraries, both given the batch's dtype (uint8 images stay
    uint8): `preprocessing_function(image) -> image` runs on each (H, W, C) image as in Keras
    (an albumentations transform: `lambda im: transform(image=im)["image"]`), and
    `batch_function(batch) -> batch` on the whole NHWC batch after the random transforms (an
    imgaug sequence: `lambda b: seq(images=b)`). Their randomness is their own, not `rng`'s.
    The order is Keras': random transforms, batch_function, then `standardize`
    (preprocessing_function, then multiplication by `rescale`, which makes the batch float32).

    horizontal_flip="alternate" is airbench's alternating flip: a fixed random half of the
    images is mirrored in even epochs and the other half in odd ones, so that every two
    epochs show each image both ways (random flips repeat a view half of the time). It needs
    the images' dataset indices and the epoch, which `batches` passes; without them it flips
    at random."""

    def __init__(
        self,
        horizontal_flip=False,
        width_shift_range=0.0,
        height_shift_range=0.0,
        rotation_range=0.0,
        brightness_range=None,
        crop_padding=0,
        fill_mode="reflect",
        flip_seed=0,
        *,
        vertical_flip=False,
        shear_range=0.0,
        zoom_range=0.0,
        channel_shift_range=0.0,
        rescale=None,
        preprocessing_function=None,
        batch_function=None,
        validation_split=0.0,
    ):
        if fill_mode not in ("nearest", "reflect", "constant"):
            raise ValueError(
                f"fill_mode must be 'nearest', 'reflect' or 'constant', got {fill_mode!r}"
            )
        if horizontal_flip not in (True, False, "alternate"):
            raise ValueError(
                f"horizontal_flip must be True, False or 'alternate', got {horizontal_flip!r}"
            )
        for name, value in (
            ("shear_range", shear_range),
            ("channel_shift_range", channel_shift_range),
        ):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not 0 <= validation_split < 1:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
        self.horizontal_flip, self.flip_seed = horizontal_flip, int(flip_seed)
        self.vertical_flip = bool(vertical_flip)
        self.width_shift_range, self.height_shift_range = width_shift_range, height_shift_range
        self.rotation_range, self.brightness_range = rotation_range, brightness_range
        self.shear_range, self.zoom_range = shear_range, _zoom_bounds(zoom_range)
        self.channel_shift_range, self.rescale = channel_shift_range, rescale
        self.preprocessing_function, self.batch_function = preprocessing_function, batch_function
        self.crop_padding, self.fill_mode = int(crop_padding), fill_mode
        self.validation_split = validation_split

    @staticmethod
    def _pixels(r, size):
        return int(round(r * size)) if r < 1 else int(r)

    def _flips(self, n, rng, index, epoch):
        if self.horizontal_flip == "alternate" and index is not None:
            return _hash_bits(index, self.flip_seed) ^ bool(epoch % 2)
        return rng.random(n) < 0.5

    def _geometry(self, n, rng):
        """The (n, 2, 2) rotation @ shear @ zoom matrices of a batch (Keras' order), or None
        when none of the three is asked for."""
        parts = []
        if self.rotation_range:
            parts.append(_rotation(rng.uniform(-self.rotation_range, self.rotation_range, n)))
        if self.shear_range:
            parts.append(_shear(rng.uniform(-self.shear_range, self.shear_range, n)))
        if self.zoom_range != (1, 1):
            parts.append(_zoom(*rng.uniform(*self.zoom_range, (2, n))))
        return functools.reduce(np.matmul, parts) if parts else None

    def __call__(self, x, rng, *, index=None, epoch=0):
        x = np.asarray(x)
        n, h, w = x.shape[:3]
        if index is not None and len(index) != n:
            raise ValueError(f"index has {len(index)} entries for a batch of {n} images")
        if self.horizontal_flip:
            flip = self._flips(n, rng, index, epoch)
            x = x.copy()
            x[flip] = x[flip, :, ::-1]
        if self.vertical_flip:
            flip = rng.random(n) < 0.5
            x = x.copy()
            x[flip] = x[flip, ::-1]
        matrices = self._geometry(n, rng)
        if matrices is not None:
            x = _affine(x, matrices, "constant" if self.fill_mode == "constant" else "nearest")
        max_dy = self._pixels(self.height_shift_range, h) + self.crop_padding
        max_dx = self._pixels(self.width_shift_range, w) + self.crop_padding
        if max_dy or max_dx:
            x = _translate(
                x,
                rng.integers(-max_dy, max_dy + 1, n),
                rng.integers(-max_dx, max_dx + 1, n),
                self.fill_mode,
            )
        if self.brightness_range is not None:
            lo, hi = self.brightness_range
            factor = rng.uniform(lo, hi, n).reshape(n, 1, 1, 1)
            x = _as_dtype_of(x.astype(np.float32) * factor, x)
        if self.channel_shift_range:
            x = self._channel_shift(
                x, rng.uniform(-self.channel_shift_range, self.channel_shift_range, n)
            )
        if self.batch_function is not None:
            x = np.asarray(self.batch_function(x))
        return self.standardize(x)

    @staticmethod
    def _channel_shift(x, shifts):
        """Add shifts[i] to every channel of image i, clipped to that image's min and max."""
        lo, hi = x.min(axis=(1, 2, 3), keepdims=True), x.max(axis=(1, 2, 3), keepdims=True)
        shifted = x.astype(np.float32) + shifts.reshape(-1, 1, 1, 1)
        return _as_dtype_of(np.clip(shifted, lo, hi), x)

    def standardize(self, x):
        """The deterministic part, which also applies to validation batches:
        preprocessing_function on each image, then multiplication by `rescale`."""
        if self.preprocessing_function is not None:
            x = np.stack([np.asarray(self.preprocessing_function(image)) for image in x])
        if self.rescale is not None:
            x = x.astype(np.float32) * np.float32(self.rescale)
        return x

    def flow_from_directory(
        self,
        directory,
        target_size=(256, 256),
        classes=None,
        class_mode="sparse",
        batch_size=32,
        shuffle=True,
        seed=0,
        subset=None,
        preprocess=None,
    ):
        """Keras' flow_from_directory: batches of directory/<class>/<image>, resized to
        target_size, decoded from disk one batch at a time (a fastconv.data.ImageFolderStream;
        iterating it runs one epoch). class_mode 'sparse' gives int labels (fastconv's losses
        take them), 'categorical' one-hot rows. With validation_split, subset='training' or
        'validation' takes the last or first validation_split of each class's sorted files, as
        Keras does; unlike Keras, the validation subset is only standardized (never
        augmented): split before you augment."""
        augment = self
        if subset == "validation":
            base = preprocess or default_preprocess
            augment, preprocess = None, lambda batch: base(self.standardize(batch))
        return ImageFolderStream(
            directory,
            batch_size,
            target_size,
            classes=classes,
            shuffle=shuffle,
            seed=seed,
            augment=augment,
            preprocess=preprocess,
            class_mode=class_mode,
            validation_split=self.validation_split,
            subset=subset,
        )

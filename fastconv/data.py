"""Data for fastconv.nn: CIFAR-10 and image-folder loaders, batch iteration, augmentation.

Images are uint8 NHWC arrays until a batch is formed; augmentation runs on uint8 training
batches only, then `preprocess` turns a batch into the float32 input the model expects.
CIFAR-10 is read from the image-folder .tar.gz (train/<class>/*.jpg, test/<class>/*.jpg), the
official cifar-10-python.tar.gz or cifar-10-binary.tar.gz (or their unpacked folders),
decoded once with Pillow and cached as .npz under ~/.cache/fastconv ($FASTCONV_CACHE).
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import io
import os
import pickle
import queue
import tarfile
import threading
import zlib
from pathlib import Path

import numpy as np

from . import _args

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published on the CIFAR-10 page
CIFAR10_MEAN = (125.3, 122.9, 113.9)  # training-set channel means on the 0..255 scale
CIFAR10_STD = (62.5, 61.9, 66.5)  # measured on the shared JPEG copy
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DatasetError(ValueError):
    """A data archive or folder that is missing pieces, corrupt or not in a known format."""


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


# ---------------------------------------------------------------------------------------
# Decoding

def _decode(data, name, size=None):
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"cannot decode image {name}: {e}; the file is corrupt or not an "
                           f"image") from None


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
        raise DatasetError(f"{what}: images have different sizes {sorted(shapes)[:3]}...; pass "
                           f"image_size=(H, W) to resize them")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _read_tree(entries, read, image_size, what, classes=None):
    """{split: (x, y)} and the class names from entries [(split, class, name)]."""
    classes = list(classes or sorted({c for _, c, _ in entries}))
    index = {c: i for i, c in enumerate(classes)}
    splits: dict = {}
    for split, cls, name in sorted(entries):
        if cls in index:
            x, y = splits.setdefault(split, ([], []))
            x.append(_decode(read(name), name, image_size))
            y.append(index[cls])
    if not splits:
        raise DatasetError(f"{what}: no images found in class folders (expected "
                           f"[train|test/]<class>/<image>.jpg)")
    return {s: _stack(x, y, what) for s, (x, y) in splits.items()}, classes


@contextlib.contextmanager
def _tar(path):
    """An open tar archive, {name: member} of its files; read errors become DatasetError."""
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            yield tar, members
    except tarfile.ReadError as e:
        raise DatasetError(f"{path} is not a readable .tar/.tar.gz archive ({e}); copy or "
                           f"download it again") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DatasetError(f"{path} is truncated or corrupt ({e}); copy or download it "
                           f"again") from None


def _read_tar_tree(path, image_size=None, classes=None):
    with _tar(path) as (tar, members):
        return _read_tree(_folder_entries(members), lambda n: tar.extractfile(members[n]).read(),
                          image_size, str(path), classes)


def _read_dir_tree(root, image_size=None, classes=None):
    root = Path(root)
    names = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    return _read_tree(_folder_entries(names), lambda n: (root / n).read_bytes(), image_size,
                      str(root), classes)


# ---------------------------------------------------------------------------------------
# Official CIFAR-10 archives

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the official batches (dicts of bytes, lists and NumPy arrays) and refuses any
    other class, so a tampered archive cannot run code."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

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
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, zlib.error,
            tarfile.TarError) as e:
        raise DatasetError(f"{what}: corrupt CIFAR-10 batch ({e}); download it again") from None
    return {"train": (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])),
            "test": test_xy}


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
            raise DatasetError(f"could not download {url} ({e}); this machine looks offline: "
                               f"pass the archive explicitly, e.g. --data "
                               f"../shared/datasets/cifar10-jpeg.tar.gz") from None
        tmp.replace(dest)
    digest = _hash(dest, "md5")
    if digest != md5:
        dest.unlink()
        raise DatasetError(f"{url} downloaded with MD5 {digest}, expected {md5}: the file is "
                           f"corrupt (deleted it; try again)")
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
        raise FileNotFoundError(f"CIFAR-10 data not found at {path}; pass the path of "
                                f"cifar10-jpeg.tar.gz (e.g. ../shared/datasets/cifar10-jpeg.tar.gz) "
                                f"or cifar-10-python.tar.gz")
    key = _hash(path)[:16] if path.is_file() else hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    cached = cache_dir() / f"cifar10-{key}.npz"
    if cache and cached.exists():
        with np.load(cached) as d:
            return (d["x_train"], d["y_train"]), (d["x_test"], d["y_test"])
    if verbose:
        print(f"decoding {path} once (cached afterwards in {cached})")
    splits = _read_cifar(path)
    if "train" not in splits or "test" not in splits:
        raise DatasetError(f"{path}: expected train/ and test/ folders, found {sorted(map(str, splits))}")
    (x_tr, y_tr), (x_te, y_te) = splits["train"], splits["test"]
    if cache:
        tmp = cached.with_suffix(".tmp.npz")
        np.savez(tmp, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
        tmp.replace(cached)
    return (x_tr, y_tr), (x_te, y_te)


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


def train_val_split(x, y, val_fraction=0.1, seed=0):
    """Shuffle once and split: ((x_train, y_train), (x_val, y_val)). Augment only the first."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(round(len(x) * val_fraction)))
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])


# ---------------------------------------------------------------------------------------
# Batches

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


def batches(x, y, batch_size, *, rng=None, shuffle=True, augment=None, preprocess=None,
            drop_last=False, epoch=0):
    """Yield (inputs, labels) batches; `augment(batch, rng)` runs on the raw batch first (an
    ImageAugmenter also gets the images' indices into x and `epoch`, for alternating flips)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    rng = rng or np.random.default_rng(0)
    preprocess = preprocess or default_preprocess
    order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
    stop = len(x) - len(x) % batch_size if drop_last else len(x)
    for start in range(0, stop, batch_size):
        idx = np.sort(order[start:start + batch_size]) if not shuffle else order[start:start + batch_size]
        xb = x[idx]
        if isinstance(augment, ImageAugmenter):
            xb = augment(xb, rng, index=idx, epoch=epoch)
        elif augment is not None:
            xb = augment(xb, rng)
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
            chosen = [self.files[i] for i in order[start:start + self.batch_size]]
            xb = np.stack([_decode(p.read_bytes(), str(p), self.image_size) for p, _ in chosen])
            yb = np.array([label for _, label in chosen], dtype=np.int64)
            if self.augment is not None:
                xb = self.augment(xb, rng)
            yield self.preprocess(xb), yb


# ---------------------------------------------------------------------------------------
# Augmentation

_PAD_MODES = {"nearest": "edge", "reflect": "reflect", "constant": "constant"}


def shift_batch(x, dy, dx, axis_w=2, fill_mode="nearest"):
    """Translate every image by (dy, dx) pixels (NHWC: axis_w=2, NCHW: axis_w=3), filling
    the uncovered border as ImageAugmenter does: 'nearest' repeats the edge pixels,
    'reflect' mirrors the image about them, 'constant' writes zeros."""
    axis_h = axis_w - 1
    pad = [(0, 0)] * x.ndim
    pad[axis_h], pad[axis_w] = (abs(dy), abs(dy)), (abs(dx), abs(dx))
    from .nn._xp import array_module
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

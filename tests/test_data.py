"""fastconv.data on tiny archives built in a temporary folder."""

import io
import pickle
import tarfile
import time
import urllib.error

import numpy as np
import pytest
from PIL import Image

from fastconv import data as fcdata


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_CACHE", str(tmp_path / "cache"))


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")  # lossless, so pixels can be compared
    return buf.getvalue()


def _add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def make_image_tree(path, per_class=2, classes=("airplane", "cat"), size=(32, 32)):
    """cifar10-jpeg-style tar.gz; returns {split: (images, labels)} in the loader's order."""
    rng = np.random.default_rng(0)
    expected = {}
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            xs, ys = [], []
            for cls in classes:
                for i in range(per_class):
                    img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                    _add(tar, f"cifar10-jpeg/{split}/{cls}/{i:04d}.png", _png(img))
                    xs.append(img)
                    ys.append(fcdata.CIFAR10_CLASSES.index(cls))
            expected[split] = (np.stack(xs), np.array(ys))
    return expected


def test_image_folder_archive_is_decoded_and_cached(tmp_path, monkeypatch):
    archive = tmp_path / "tiny.tar.gz"
    expected = make_image_tree(archive)
    (x_tr, y_tr), (x_te, y_te) = fcdata.load_cifar10(archive, verbose=False)
    np.testing.assert_array_equal(x_tr, expected["train"][0])
    np.testing.assert_array_equal(y_tr, [0, 0, 3, 3])
    np.testing.assert_array_equal(x_te, expected["test"][0])
    assert list((tmp_path / "cache").glob("cifar10-*.npz"))

    def no_decoding(path):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(fcdata.cifar, "_read_cifar", no_decoding)
    (x2, _), _ = fcdata.load_cifar10(archive, verbose=False)
    np.testing.assert_array_equal(x2, x_tr)


def _official_tar(path, binary=False):
    rng = np.random.default_rng(1)
    batches = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            x = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
            y = rng.integers(0, 10, 3)
            batches[name] = (x.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1), y)
            if binary:
                _add(
                    tar,
                    f"cifar-10-batches-bin/{name}.bin",
                    np.column_stack([y.astype(np.uint8), x]).tobytes(),
                )
            else:
                _add(
                    tar,
                    f"cifar-10-batches-py/{name}",
                    pickle.dumps({b"data": x, b"labels": list(map(int, y))}),
                )
    return batches


@pytest.mark.parametrize("binary", [False, True])
def test_official_archives(tmp_path, binary):
    batches = _official_tar(tmp_path / "cifar.tar.gz", binary)
    (x_tr, y_tr), (x_te, y_te) = fcdata.load_cifar10(tmp_path / "cifar.tar.gz", verbose=False)
    np.testing.assert_array_equal(x_tr[3:6], batches["data_batch_2"][0])
    np.testing.assert_array_equal(y_tr[3:6], batches["data_batch_2"][1])
    np.testing.assert_array_equal(x_te, batches["test_batch"][0])
    assert x_tr.shape == (15, 32, 32, 3)


def test_missing_and_corrupt_archives(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar10-jpeg.tar.gz"):
        fcdata.load_cifar10(tmp_path / "nope.tar.gz")
    archive = tmp_path / "tiny.tar.gz"
    make_image_tree(archive)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[:400])
    with pytest.raises(fcdata.DatasetError, match="truncated or corrupt"):
        fcdata.load_cifar10(truncated)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(fcdata.DatasetError, match="is not a .tar/.tar.gz archive; expected"):
        fcdata.load_cifar10(junk)
    bad_image = tmp_path / "bad.tar.gz"
    with tarfile.open(bad_image, "w:gz") as tar:
        _add(tar, "train/cat/0.jpg", b"garbage")
    with pytest.raises(fcdata.DatasetError, match="cannot decode"):
        fcdata.load_cifar10(bad_image)


def test_download_fails_clearly_offline_and_on_bad_checksum(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(fcdata.DatasetError, match="offline"):
        fcdata.load_cifar10(None)

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: io.BytesIO(b"wrong bytes"))
    with pytest.raises(fcdata.DatasetError, match="MD5"):
        fcdata.download(dest=tmp_path / "x.tar.gz")
    assert not (tmp_path / "x.tar.gz").exists()


def test_image_folder_resizes_and_streams(tmp_path):
    root = tmp_path / "photos"
    sizes = {"defect": [(20, 30), (40, 10)], "ok": [(25, 25), (12, 18), (30, 30)]}
    for cls, shapes in sizes.items():
        (root / cls).mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            (root / cls / f"{i}.png").write_bytes(_png(np.full((h, w, 3), 10 * i, np.uint8)))
    with pytest.raises(fcdata.DatasetError, match="image_size"):
        fcdata.load_image_folder(root)
    x, y, classes = fcdata.load_image_folder(root, image_size=(16, 16))
    assert x.shape == (5, 16, 16, 3) and classes == ["defect", "ok"]
    np.testing.assert_array_equal(y, [0, 0, 1, 1, 1])
    assert x[3].min() == x[3].max() == 10  # a flat image stays flat after resizing

    stream = fcdata.ImageFolderStream(root, batch_size=2, image_size=(16, 16), shuffle=True, seed=1)
    got = list(stream)
    assert len(got) == len(stream) == 3
    assert sorted(np.concatenate([b[1] for b in got]).tolist()) == [0, 0, 1, 1, 1]
    assert got[0][0].dtype == np.float32 and got[0][0].shape == (2, 16, 16, 3)


def test_split_then_augment_training_batches_only():
    x = np.arange(20 * 4 * 4 * 3, dtype=np.uint8).reshape(20, 4, 4, 3)
    y = np.arange(20)
    (xt, yt), (xv, yv) = fcdata.train_val_split(x, y, 0.25, seed=0)
    assert len(yv) == 5 and not set(yt) & set(yv)
    seen = []
    flip_all = lambda b, rng, index, epoch: b[:, :, ::-1]
    for xb, yb in fcdata.batches(xt, yt, 4, augment=flip_all, preprocess=lambda b: b):
        np.testing.assert_array_equal(xb, x[yb][:, :, ::-1])
        seen += yb.tolist()
    assert sorted(seen) == sorted(yt.tolist())
    for xb, yb in fcdata.batches(xv, yv, 4, shuffle=False, preprocess=lambda b: b):
        np.testing.assert_array_equal(xb, x[yb])


class UpperBound:
    """Stands in for a Generator whose uniform draws all give the upper bound (the lower
    bound with lower=True): a known transform."""

    def __init__(self, lower=False):
        self.lower = lower

    def uniform(self, lo, hi, size):
        return np.full(size, lo if self.lower else hi, np.float64)


def test_augmentations():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    flipped = fcdata.ImageAugmenter(horizontal_flip=True)(img, np.random.default_rng(1))
    for a, b in zip(img, flipped):
        assert np.array_equal(a, b) or np.array_equal(a[:, ::-1], b)
    shifted = fcdata.ImageAugmenter(crop_padding=2, fill_mode="constant")(
        img, np.random.default_rng(2)
    )
    offsets = np.random.default_rng(2).integers(-2, 3, (2, 6))
    for i in range(6):
        dy, dx = offsets[0][i], offsets[1][i]
        padded = np.pad(img[i], ((2, 2), (2, 2), (0, 0)))
        np.testing.assert_array_equal(shifted[i], padded[2 - dy : 7 - dy, 2 - dx : 7 - dx])
    turned = fcdata.ImageAugmenter(rotation_range=90, fill_mode="nearest")(img, UpperBound())
    np.testing.assert_array_equal(turned, np.rot90(img, 1, axes=(1, 2)))
    dim = fcdata.ImageAugmenter(brightness_range=(0.5, 0.5))(img, rng)
    np.testing.assert_array_equal(dim, np.rint(img * 0.5).astype(np.uint8))
    np.testing.assert_array_equal(fcdata.shift_batch(img, 1, 0)[:, 1:], img[:, :-1])


def test_alternating_flip_mirrors_each_image_every_other_epoch():
    n = 400
    x = np.arange(n * 2 * 3 * 1, dtype=np.int32).reshape(n, 2, 3, 1)
    y = np.arange(n)
    augment = fcdata.ImageAugmenter(horizontal_flip="alternate", flip_seed=7)
    flipped = []
    for epoch in range(3):
        rng = np.random.default_rng([3, epoch])
        mask = np.zeros(n, bool)
        for xb, yb in fcdata.batches(
            x, y, 64, rng=rng, augment=augment, epoch=epoch, preprocess=lambda b: b
        ):
            same, mirrored = (
                (xb == x[yb]).all(axis=(1, 2, 3)),
                (xb == x[yb][:, :, ::-1]).all(axis=(1, 2, 3)),
            )
            assert (same ^ mirrored).all()
            mask[yb] = mirrored
        flipped.append(mask)
    assert 150 < flipped[0].sum() < 250  # a random half in the first epoch
    np.testing.assert_array_equal(flipped[1], ~flipped[0])  # the other half in the next
    np.testing.assert_array_equal(flipped[2], flipped[0])
    other_seed = fcdata.ImageAugmenter(horizontal_flip="alternate", flip_seed=8)
    assert not np.array_equal(
        other_seed(x, None, index=y)[:, :, 0], augment(x, None, index=y)[:, :, 0]
    )
    with pytest.raises(ValueError, match="index has 3 entries"):
        augment(x[:4], np.random.default_rng(0), index=y[:3])
    with pytest.raises(ValueError, match="horizontal_flip"):
        fcdata.ImageAugmenter(horizontal_flip="sometimes")


def test_shift_batch_fill_modes():
    img = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    down_right = fcdata.shift_batch(img, 1, 1, fill_mode="reflect")
    np.testing.assert_array_equal(down_right[:, 1:, 1:], img[:, :-1, :-1])
    np.testing.assert_array_equal(down_right[:, 0, 1:], img[:, 1, :-1])  # mirrored about row 0
    up_left = fcdata.shift_batch(img, -1, -1, fill_mode="constant")
    np.testing.assert_array_equal(up_left[:, :-1, :-1], img[:, 1:, 1:])
    assert not up_left[:, -1].any() and not up_left[:, :, -1].any()
    nchw = fcdata.shift_batch(img.transpose(0, 3, 1, 2), 1, 1, axis_w=3, fill_mode="reflect")
    np.testing.assert_array_equal(nchw, down_right.transpose(0, 3, 1, 2))


def test_prefetch_yields_the_same_batches_in_order():
    x = np.arange(40 * 4 * 4 * 3, dtype=np.uint8).reshape(40, 4, 4, 3)
    y = np.arange(40)
    augment = fcdata.ImageAugmenter(horizontal_flip=True, crop_padding=1)

    def run(wrap):
        rng = np.random.default_rng(5)
        return list(wrap(fcdata.batches(x, y, 8, rng=rng, augment=augment)))

    direct, ahead = run(lambda it: it), run(fcdata.prefetch)
    assert len(direct) == len(ahead) == 5
    for (xa, ya), (xb, yb) in zip(direct, ahead):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_prefetch_reraises_and_stops_early():
    def failing():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(fcdata.prefetch(failing()))
    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    it = fcdata.prefetch(endless(), depth=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # the producer thread stops instead of running on
    time.sleep(0.3)
    count = len(produced)
    time.sleep(0.3)
    assert len(produced) == count <= 3 + 2 + 1


@pytest.mark.parametrize("depth", [0, -1, 1.5, True])
def test_prefetch_rejects_bad_depth(depth):
    with pytest.raises(ValueError, match="depth"):
        fcdata.prefetch(iter(()), depth)


def test_shear_and_zoom_of_a_small_image():
    five = np.arange(25, dtype=np.uint8).reshape(1, 5, 5, 1)
    # 45 degrees: input (row, col) = (r - 0.71 c, 0.71 c) about the centre, nearest pixel;
    # columns 0-1 read the row below, 3-4 the row above; rows beyond the edge repeat it
    sheared = fcdata.ImageAugmenter(shear_range=45, fill_mode="nearest")(five, UpperBound())
    np.testing.assert_array_equal(
        sheared[0, :, :, 0],
        [
            [6, 6, 2, 3, 3],
            [11, 11, 7, 3, 3],
            [16, 16, 12, 8, 8],
            [21, 21, 17, 13, 13],
            [21, 21, 22, 18, 18],
        ],
    )
    # zoom factor 2 reads pixels twice as far from the centre: every other pixel, shrunk
    zoom_out = fcdata.ImageAugmenter(zoom_range=(2, 2), fill_mode="constant")
    np.testing.assert_array_equal(
        zoom_out(five, np.random.default_rng(0))[0, :, :, 0],
        [[0, 0, 0, 0, 0], [0, 0, 2, 4, 0], [0, 10, 12, 14, 0], [0, 20, 22, 24, 0], [0, 0, 0, 0, 0]],
    )
    # factor 0.5 enlarges the central 2x2 of a 4x4 image to the whole image
    four = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    zoom_in = fcdata.ImageAugmenter(zoom_range=(0.5, 0.5))(four, np.random.default_rng(0))
    np.testing.assert_array_equal(
        zoom_in[0, :, :, 0], [[5, 5, 6, 6], [5, 5, 6, 6], [9, 9, 10, 10], [9, 9, 10, 10]]
    )
    assert fcdata.ImageAugmenter(zoom_range=0.25).zoom_range == (0.75, 1.25)
    with pytest.raises(ValueError, match="0 < lo <= hi"):
        fcdata.ImageAugmenter(zoom_range=1.5)
    with pytest.raises(TypeError, match="zoom_range"):
        fcdata.ImageAugmenter(zoom_range="big")


def test_random_zoom_draws_one_factor_per_axis_within_the_range():
    # a 9x9 image with a 1-pixel dot: zoom z spreads it over the pixels p with
    # |z (p - 4)| < 0.5, 1 for z > 0.5 and 3 for 0.25 < z < 0.5 (5 only below 0.25)
    dot = np.zeros((300, 9, 9, 1), np.float32)
    dot[:, 4, 4] = 1
    out = fcdata.ImageAugmenter(zoom_range=(0.25, 1.0), fill_mode="constant")(
        dot, np.random.default_rng(1)
    )
    rows, cols = out[..., 0].any(axis=2).sum(axis=1), out[..., 0].any(axis=1).sum(axis=1)
    assert set(rows) == set(cols) == {1, 3}
    assert (rows != cols).any()


def test_vertical_flip():
    img = np.random.default_rng(0).integers(0, 256, (40, 3, 3, 1), dtype=np.uint8)
    out = fcdata.ImageAugmenter(vertical_flip=True)(img, np.random.default_rng(1))
    same = (out == img).all(axis=(1, 2, 3))
    upside_down = (out == img[:, ::-1]).all(axis=(1, 2, 3))
    assert (same | upside_down).all() and same.sum() > 5 and upside_down.sum() > 5


def test_channel_shift_is_one_value_per_image_clipped_to_the_image():
    img = np.array([0, 100, 250, 30, 60, 90], np.uint8).reshape(1, 1, 2, 3)
    shift = fcdata.ImageAugmenter(channel_shift_range=20)
    np.testing.assert_array_equal(shift(img, UpperBound()).ravel(), [20, 120, 250, 50, 80, 110])
    np.testing.assert_array_equal(
        shift(img, UpperBound(lower=True)).ravel(), [0, 80, 230, 10, 40, 70]
    )

    batch = np.random.default_rng(0).integers(0, 256, (200, 4, 4, 3), dtype=np.uint8)
    out = shift(batch, np.random.default_rng(1)).astype(int)
    lo, hi = batch.min(axis=(1, 2, 3)), batch.max(axis=(1, 2, 3))
    assert (out.min(axis=(1, 2, 3)) >= lo).all() and (out.max(axis=(1, 2, 3)) <= hi).all()
    for i in range(len(batch)):  # unclipped pixels all moved by the image's one shift
        inside = (out[i] > lo[i]) & (out[i] < hi[i])
        moved = np.unique((out[i] - batch[i])[inside])
        assert len(moved) == 1 and abs(moved[0]) <= 20
    shifts = [
        np.unique((out[i] - batch[i])[(out[i] > lo[i]) & (out[i] < hi[i])])[0]
        for i in range(len(batch))
    ]
    assert min(shifts) < -15 and max(shifts) > 15


def test_rescale_and_the_hooks_run_in_keras_order():
    pixels = np.array([0, 51, 255], np.uint8).reshape(1, 1, 3, 1)
    rescaled = fcdata.ImageAugmenter(rescale=1 / 255)(pixels, np.random.default_rng(0))
    assert rescaled.dtype == np.float32
    np.testing.assert_allclose(rescaled.ravel(), [0.0, 0.2, 1.0], rtol=1e-6)

    calls = []

    def halve(batch):  # batch level, imgaug-style: first, on the uint8 batch
        calls.append(("batch", batch.dtype, batch.shape))
        return batch // 2

    def invert(image):  # per image, albumentations-style: then, still uint8
        calls.append(("image", image.dtype, image.shape))
        return 255 - image

    augment = fcdata.ImageAugmenter(
        rescale=1 / 255, preprocessing_function=invert, batch_function=halve
    )
    out = augment(np.concatenate([pixels, pixels]), np.random.default_rng(0))
    assert calls == [
        ("batch", np.uint8, (2, 1, 3, 1)),
        ("image", np.uint8, (1, 3, 1)),
        ("image", np.uint8, (1, 3, 1)),
    ]
    # 0, 51, 255 -> halved 0, 25, 127 -> inverted 255, 230, 128 -> / 255
    np.testing.assert_allclose(out[1].ravel(), [1.0, 230 / 255, 128 / 255], rtol=1e-6)
    # standardize alone (what validation batches get): 0, 51, 255 -> 255, 204, 0 -> / 255
    np.testing.assert_allclose(augment.standardize(pixels).ravel(), [1.0, 0.8, 0.0], rtol=1e-6)


def test_flow_from_directory_splits_before_it_augments_and_reads_lazily(tmp_path, monkeypatch):
    root = tmp_path / "pets"
    for label, cls in enumerate(["cat", "dog"]):
        (root / cls).mkdir(parents=True)
        for i in range(5):  # flat images: cat 10, 30, ..., 90; dog 110, ..., 190
            value = 10 + 100 * label + 20 * i
            (root / cls / f"{i}.png").write_bytes(_png(np.full((8, 8, 3), value, np.uint8)))
    augment = fcdata.ImageAugmenter(
        brightness_range=(0.5, 0.5), rescale=1 / 255, validation_split=0.4
    )
    train = augment.flow_from_directory(
        root, target_size=(8, 8), batch_size=3, class_mode="categorical", subset="training"
    )
    val = augment.flow_from_directory(
        root, target_size=(8, 8), batch_size=3, shuffle=False, subset="validation"
    )
    assert train.class_indices == {"cat": 0, "dog": 1} and len(train) == 2 and len(val) == 2

    decoded = []
    decode = fcdata.folders._decode
    monkeypatch.setattr(
        fcdata.folders, "_decode", lambda *args: decoded.append(args[1]) or decode(*args)
    )
    seen = {}
    for count, (xb, yb) in enumerate(train, start=1):
        assert len(decoded) == 3 * count  # one batch read at a time, never the whole set
        assert xb.dtype == np.float32 and yb.shape == (len(xb), 2)
        for image, onehot in zip(xb, yb):
            seen[round(float(image.max()) * 255)] = onehot.tolist()
    # the last 3 of each class, halved in brightness, with one-hot labels
    assert seen == {25: [1, 0], 35: [1, 0], 45: [1, 0], 75: [0, 1], 85: [0, 1], 95: [0, 1]}
    # the first 2 of each class, only rescaled; sparse labels
    values = [
        (round(float(xb[i].max()) * 255), int(yb[i])) for xb, yb in val for i in range(len(xb))
    ]
    assert values == [(10, 0), (30, 0), (110, 1), (130, 1)]

    with pytest.raises(ValueError, match="validation_split in \\(0, 1\\)"):
        fcdata.ImageAugmenter().flow_from_directory(root, subset="validation")
    with pytest.raises(ValueError, match="class_mode"):
        augment.flow_from_directory(root, class_mode="binary")

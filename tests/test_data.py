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
                _add(tar, f"cifar-10-batches-bin/{name}.bin",
                     np.column_stack([y.astype(np.uint8), x]).tobytes())
            else:
                _add(tar, f"cifar-10-batches-py/{name}",
                     pickle.dumps({b"data": x, b"labels": list(map(int, y))}))
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


def test_augmentations():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    flipped = fcdata.ImageAugmenter(horizontal_flip=True)(img, np.random.default_rng(1))
    for a, b in zip(img, flipped):
        assert np.array_equal(a, b) or np.array_equal(a[:, ::-1], b)
    shifted = fcdata.ImageAugmenter(crop_padding=2, fill_mode="constant")(img, np.random.default_rng(2))
    offsets = np.random.default_rng(2).integers(-2, 3, (2, 6))
    for i in range(6):
        dy, dx = offsets[0][i], offsets[1][i]
        padded = np.pad(img[i], ((2, 2), (2, 2), (0, 0)))
        np.testing.assert_array_equal(shifted[i], padded[2 - dy:7 - dy, 2 - dx:7 - dx])
    np.testing.assert_array_equal(fcdata.augment._rotate(img, np.full(6, 90.0), "nearest"),
                                  np.rot90(img, 1, axes=(1, 2)))
    dim = fcdata.ImageAugmenter(brightness_range=(0.5, 0.5))(img, rng)
    np.testing.assert_array_equal(dim, (img * 0.5).astype(np.uint8))
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
        for xb, yb in fcdata.batches(x, y, 64, rng=rng, augment=augment, epoch=epoch,
                                     preprocess=lambda b: b):
            same, mirrored = (xb == x[yb]).all(axis=(1, 2, 3)), (xb == x[yb][:, :, ::-1]).all(axis=(1, 2, 3))
            assert (same ^ mirrored).all()
            mask[yb] = mirrored
        flipped.append(mask)
    assert 150 < flipped[0].sum() < 250              # a random half in the first epoch
    np.testing.assert_array_equal(flipped[1], ~flipped[0])   # the other half in the next
    np.testing.assert_array_equal(flipped[2], flipped[0])
    other_seed = fcdata.ImageAugmenter(horizontal_flip="alternate", flip_seed=8)
    assert not np.array_equal(other_seed(x, None, index=y)[:, :, 0], augment(x, None, index=y)[:, :, 0])
    with pytest.raises(ValueError, match="index has 3 entries"):
        augment(x[:4], np.random.default_rng(0), index=y[:3])
    with pytest.raises(ValueError, match="horizontal_flip"):
        fcdata.ImageAugmenter(horizontal_flip="sometimes")


def test_shift_batch_fill_modes():
    img = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    down_right = fcdata.shift_batch(img, 1, 1, fill_mode="reflect")
    np.testing.assert_array_equal(down_right[:, 1:, 1:], img[:, :-1, :-1])
    np.testing.assert_array_equal(down_right[:, 0, 1:], img[:, 1, :-1])   # mirrored about row 0
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

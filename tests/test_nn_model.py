"""Sequential: save/load, PyTorch and Keras weight import, fit/resume/NaN stop, metrics files."""

import importlib.util
import json

import numpy as np
import pytest

from fastconv import data as fcdata
from fastconv import nn, optim
from fastconv.nn.fit import TrainingDiverged, predict_logits


def small_model(seed=0):
    return nn.Sequential(
        [
            nn.Conv2D(4, 3, padding="same", input_shape=(8, 8, 3), name="stem", trainable=False),
            nn.Conv2D(6, 3, padding="same", use_bias=False),
            nn.BatchNormalization(momentum=0.8),  # Keras' 0.99 needs far more steps than a test has
            nn.ReLU(),
            nn.MaxPooling2D(2),
            nn.Dropout(0.2),
            nn.Flatten(),
            nn.Dense(3, activation="softmax"),
        ],
        seed=seed,
    ).build()


def synthetic(n=96, seed=0):
    """Three classes told apart by which colour channel is brightest."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 120, (n, 8, 8, 3)).astype(np.uint8)
    x[np.arange(n), :, :, y] += 100
    return x, y


def test_save_load_round_trip(tmp_path):
    a, b = small_model(seed=1), small_model(seed=2)
    x = np.random.default_rng(0).standard_normal((5, 8, 8, 3)).astype(np.float32)
    assert not np.allclose(a.predict(x), b.predict(x))
    a.save_weights(tmp_path / "w.npz")
    b.load_weights(tmp_path / "w.npz")
    np.testing.assert_array_equal(a.predict(x), b.predict(x))


def test_load_weights_rejects_another_architecture(tmp_path):
    small_model().save_weights(tmp_path / "w.npz")
    other = nn.Sequential([nn.Dense(2, input_shape=(4,))]).build()
    with pytest.raises(ValueError, match="do not match"):
        other.load_weights(tmp_path / "w.npz")


def test_torch_state_dict_gives_torch_outputs():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.Conv2d(4, 6, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(6),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Dropout(0.2),
        torch.nn.Flatten(),
        torch.nn.Linear(96, 3),
    )
    with torch.no_grad():
        net[2].running_mean.uniform_(-1, 1)
        net[2].running_var.uniform_(0.5, 2)
        net[2].weight.uniform_(0.5, 2)
    net.eval()
    model = small_model()
    model.load_torch_state_dict(net.state_dict())
    x = np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
    expected = torch.softmax(net(torch.from_numpy(x)), 1).detach().numpy()
    # torch's BN epsilon is 1e-5, Keras' 1e-3: match it for the comparison
    model.layers[2].epsilon = 1e-5
    got = model.predict(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_keras_arrays_follow_keras_semantics():
    """Keras kernels (KH, KW, C_in, C_out) and depthwise (KH, KW, C, M), checked against
    direct sums written from Keras' definitions."""
    rng = np.random.default_rng(2)
    model = nn.Sequential(
        [
            nn.Conv2D(4, 2, input_shape=(5, 5, 3)),
            nn.DepthwiseConv2D(2, depth_multiplier=2, use_bias=False),
        ]
    ).build()
    k1, b1 = rng.standard_normal((2, 2, 3, 4)), rng.standard_normal(4)
    k2 = rng.standard_normal((2, 2, 4, 2))
    model.set_weights([k1, b1, k2])
    x = rng.standard_normal((2, 5, 5, 3)).astype(np.float32)
    h = np.zeros((2, 4, 4, 4))
    for a in range(2):
        for b in range(2):
            h += np.einsum("nijc,co->nijo", x[:, a : a + 4, b : b + 4], k1[a, b])
    h += b1
    y = np.zeros((2, 3, 3, 4, 2))
    for a in range(2):
        for b in range(2):
            y += h[:, a : a + 3, b : b + 3, :, None] * k2[a, b]
    np.testing.assert_allclose(model.predict(x), y.reshape(2, 3, 3, 8), rtol=1e-4, atol=1e-4)


def _compile(model, steps):
    sgd = optim.SGD(
        0.05, momentum=0.9, nesterov=True, weight_decay=1e-4, schedule=optim.OneCycle(steps)
    )
    return model.compile(
        optimizer=optim.Lookahead(sgd, k=3),
        loss=nn.SparseCategoricalCrossentropy(label_smoothing=0.1),
    )


FIT = dict(
    batch_size=16,
    seed=3,
    augment=fcdata.ImageAugmenter(horizontal_flip="alternate", crop_padding=1),
    verbose=False,
    print_fn=lambda s: None,
)


def test_fit_learns_and_frozen_layer_stays(tmp_path):
    x, y = synthetic()
    model = _compile(small_model(), steps=8 * 6)
    stem = model.layers[0].params["kernel"].copy()
    assert not model.layers[0].need_input_grad and not model.layers[1].need_input_grad
    history = model.fit(x, y, epochs=8, validation_data=synthetic(48, seed=9), **FIT)
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["test_acc"] >= 0.9
    np.testing.assert_array_equal(model.layers[0].params["kernel"], stem)


def test_validation_split_holds_out_unaugmented_data():
    x, y = synthetic(40)
    seen = []
    record = lambda batch, rng, index, epoch: seen.append(len(batch)) or batch
    model = _compile(small_model(), steps=3)
    history = model.fit(x, y, epochs=1, validation_split=0.25, **{**FIT, "augment": record})
    assert sum(seen) == 30 and history[0]["test_acc"] is not None


def test_resume_matches_uninterrupted_run(tmp_path):
    x, y = synthetic()
    val = synthetic(32, seed=5)
    straight = _compile(small_model(), steps=3 * 6)
    h_straight = straight.fit(
        x, y, epochs=3, validation_data=val, checkpoint=str(tmp_path / "a.npz"), **FIT
    )
    first = _compile(small_model(), steps=3 * 6)
    first.fit(x, y, epochs=2, validation_data=val, checkpoint=str(tmp_path / "b.npz"), **FIT)
    resumed = _compile(
        small_model(seed=7), steps=3 * 6
    )  # different init: all comes from the checkpoint
    h_resumed = resumed.fit(
        x, y, epochs=3, validation_data=val, checkpoint=str(tmp_path / "b.npz"), resume=True, **FIT
    )
    a, b = straight.get_weight_dict(), resumed.get_weight_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert [h["loss"] for h in h_straight] == [h["loss"] for h in h_resumed]


def test_multicrop_tta_is_airbench_weighted_mean_of_views():
    x, _ = synthetic(12)
    model = small_model()
    logits = lambda v: predict_logits(model, v.astype(np.float32) / 255, batch_size=5)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    mirror = lambda v: v[:, :, ::-1]
    pair = lambda v: 0.5 * logits(v) + 0.5 * logits(mirror(v))
    shifted = 0.5 * pair(padded[:, :8, :8]) + 0.5 * pair(padded[:, 2:, 2:])
    np.testing.assert_allclose(
        predict_logits(model, x, batch_size=5, tta="multicrop"),
        0.5 * pair(x) + 0.5 * shifted,
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        predict_logits(model, x, batch_size=5, tta="flip"), pair(x), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="tta must be"):
        model.predict(x, tta="fivecrop")


def test_validation_freq_evaluates_every_nth_and_the_final_epoch(tmp_path):
    x, y = synthetic(32)
    model = _compile(small_model(), steps=5 * 2)
    history = model.fit(
        x,
        y,
        epochs=5,
        validation_data=synthetic(16, 1),
        validation_freq=2,
        output_dir=str(tmp_path),
        **FIT,
    )
    assert [h["test_acc"] is not None for h in history] == [False, True, False, True, True]
    rows = [line.split(",") for line in (tmp_path / "metrics.csv").read_text().splitlines()[1:]]
    assert [r[4] != "" for r in rows] == [False, True, False, True, True]  # test_acc column
    with pytest.raises(ValueError, match="validation_freq"):
        model.fit(x, y, epochs=1, validation_freq=0, **FIT)


def test_nan_loss_stops_with_a_clear_error():
    x, y = synthetic(32)
    model = small_model().compile(optimizer=optim.SGD(1e30), loss="sparse_categorical_crossentropy")
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        model.fit(x, y, epochs=3, **FIT)


def test_metrics_files(tmp_path):
    x, y = synthetic(32)
    model = _compile(small_model(), steps=4)
    history = model.fit(
        x, y, epochs=2, validation_data=synthetic(16, 1), output_dir=str(tmp_path), **FIT
    )
    assert json.loads((tmp_path / "metrics.json").read_text()) == history
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,loss") and len(lines) == 3
    if importlib.util.find_spec("matplotlib"):  # optional dependency: the PNG needs it
        assert (tmp_path / "curves.png").stat().st_size > 1000


def test_label_smoothing_loss_value():
    logits = np.array([[2.0, 0.0, -1.0]], np.float32)
    loss, grad = nn.SparseCategoricalCrossentropy(label_smoothing=0.3)(logits, np.array([0]))
    log_p = logits[0] - np.log(np.exp(logits[0]).sum())
    target = np.array([0.8, 0.1, 0.1])
    assert loss == pytest.approx(-(target * log_p).sum(), rel=1e-6)
    np.testing.assert_allclose(grad[0], np.exp(log_p) - target, rtol=1e-5)


def test_sgd_nesterov_and_adam_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for ours, make_theirs in [
        (
            optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
        ),
        (
            optim.Adam(0.01, epsilon=1e-8, weight_decay=0.01, decoupled=True),
            lambda p: torch.optim.AdamW(p, lr=0.01, eps=1e-8, weight_decay=0.01),
        ),
    ]:
        model = nn.Sequential([nn.Dense(3, input_shape=(4,))]).build()
        w0 = model.layers[0].params["kernel"].copy()
        tw = torch.tensor(w0, requires_grad=True)
        theirs = make_theirs([tw])
        for _ in range(3):
            g = rng.standard_normal(w0.shape).astype(np.float32)
            model.layers[0].grads = {"kernel": g}
            ours.step(model)
            tw.grad = torch.from_numpy(g.copy())
            theirs.step()
        np.testing.assert_allclose(
            model.layers[0].params["kernel"], tw.detach().numpy(), rtol=1e-5, atol=1e-6
        )


def test_lookahead_takes_a_step_dependent_alpha():
    schedule = optim.airbench_alpha(100)
    assert schedule(0) == 1.0 and schedule(200) == schedule(100) == pytest.approx(1 - 0.95**5)
    x, y = synthetic(32)
    runs = {}
    for name, alpha in [
        ("plain", None),
        ("alpha 1", lambda step: 1.0),
        ("alpha 0", lambda step: 0.0),
    ]:
        model = small_model()
        initial = {k: v.copy() for k, v in model.get_weight_dict().items()}
        sgd = optim.SGD(0.05, momentum=0.9)
        model.compile(
            optimizer=sgd
            if alpha is None
            else optim.Lookahead(sgd, k=2, alpha=alpha, include_state=True),
            loss=nn.SparseCategoricalCrossentropy(),
        )
        model.fit(x, y, epochs=1, **{**FIT, "augment": None})  # 2 steps: one Lookahead sync
        runs[name] = (initial, model.get_weight_dict())
    for k, v in runs["plain"][1].items():
        np.testing.assert_allclose(runs["alpha 1"][1][k], v, rtol=1e-6, atol=1e-7)  # fast weights
    trained = [k for k, v in runs["plain"][1].items() if not np.array_equal(v, runs["plain"][0][k])]
    params = [k for k in trained if "moving" not in k]
    assert params and len(params) < len(trained)
    for k in params:  # alpha 0: back to the slow (initial) weights after k steps
        np.testing.assert_array_equal(runs["alpha 0"][1][k], runs["alpha 0"][0][k])
    for k in set(trained) - set(params):  # BN statistics are held back too (to the first step's)
        assert not np.array_equal(runs["alpha 0"][1][k], runs["plain"][1][k])


def test_weight_files_that_do_not_fit_fail_clearly(tmp_path):
    """Truncated, foreign or mismatched weight files: one ValueError naming the file, or the
    layer and both shapes; never an error from deep inside NumPy."""
    model = small_model()
    path = tmp_path / "w.npz"
    model.save_weights(path)
    raw = path.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.npz").write_text("not an archive")
    np.save(tmp_path / "single.npy", np.zeros(3))
    for name in ("truncated.npz", "text.npz", "single.npy"):
        with pytest.raises(ValueError, match=f"{name} is not a readable weights file"):
            model.load_weights(tmp_path / name)
    weights = dict(np.load(path))
    weights["conv2d/kernel"] = np.zeros((6, 4, 5, 5), np.float32)
    np.savez(tmp_path / "shapes.npz", **weights)
    with pytest.raises(
        ValueError,
        match=r"conv2d/kernel: expected shape \(6, 4, 3, 3\), got "
        r"\(6, 4, 5, 5\)",
    ):
        model.load_weights(tmp_path / "shapes.npz")
    with pytest.raises(FileNotFoundError, match="no weights file"):
        model.load_weights(tmp_path / "missing.npz")


def test_saving_weights_is_atomic(tmp_path, monkeypatch):
    """A write that dies midway leaves the previous file whole."""
    model = small_model()
    path = tmp_path / "w.npz"
    model.save_weights(path)
    before = path.read_bytes()

    def dies(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", dies)
    with pytest.raises(OSError, match="disk full"):
        model.save_weights(path)
    assert path.read_bytes() == before

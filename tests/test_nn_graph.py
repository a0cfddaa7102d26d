"""Keras' functional API: DAG forward and backward (gradients added where a tensor feeds
several layers) against finite differences and PyTorch autograd, frozen layers and nested
models, Keras' layer order, summary and parameter counts, graph models in fit/save/load."""

import numpy as np
import pytest

from fastconv import _cpu, nn, optim
from fastconv.nn.layers import KerasTensor


def dense_dag(seed=0):
    """x feeds three layers and h two: two inputs, two outputs, a skip, a concatenation."""
    nn.set_random_seed(seed)
    x, z = nn.Input((4,), name="x"), nn.Input((2,), name="z")
    h = nn.Dense(5, activation="tanh", name="h")(x)
    skip = nn.Dense(5, name="skip")(x)
    s = nn.Add(name="sum")([h, skip, h])
    joined = nn.Concatenate(name="joined")([s, x, z])
    y1 = nn.Dense(3, name="y1")(joined)
    y2 = nn.Dense(2, activation="sigmoid", name="y2")(h)
    return nn.Model([x, z], [y1, y2], name="dag")


def test_dag_forward_is_the_hand_computed_function():
    model = dense_dag()
    w = model.get_weight_dict()
    rng = np.random.default_rng(1)
    x, z = rng.standard_normal((6, 4)), rng.standard_normal((6, 2))
    h = np.tanh(x @ w["h/kernel"] + w["h/bias"])
    s = 2 * h + x @ w["skip/kernel"] + w["skip/bias"]
    y1 = np.concatenate([s, x, z], axis=1) @ w["y1/kernel"] + w["y1/bias"]
    y2 = 1 / (1 + np.exp(-(h @ w["y2/kernel"] + w["y2/bias"])))
    got1, got2 = model([x.astype(np.float32), z.astype(np.float32)])
    np.testing.assert_allclose(got1, y1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got2, y2, rtol=1e-5, atol=1e-6)


def test_dag_backward_adds_gradients_of_every_consumer():
    """float64 weights and inputs: analytic gradients of L = sum(y1 r1) + sum(y2 r2) against
    central differences, for the inputs and every weight."""
    model = dense_dag()
    for layer in model.leaf_layers():
        layer.params = {k: v.astype(np.float64) for k, v in layer.params.items()}
    model.need_input_grad = True  # ask for dx and dz too
    rng = np.random.default_rng(2)
    x, z = rng.standard_normal((3, 4)), rng.standard_normal((3, 2))
    r1, r2 = rng.standard_normal((3, 3)), rng.standard_normal((3, 2))

    def loss():
        y1, y2 = model.forward([x, z], training=True)
        return float((y1 * r1).sum() + (y2 * r2).sum())

    loss()
    dx, dz = model.backward([r1, r2])
    targets = [("x", x, dx), ("z", z, dz)] + [
        (f"{layer.name}/{k}", layer.params[k], layer.grads[k])
        for layer in model.leaf_layers()
        for k in layer.params
    ]
    for name, array, analytic in targets:
        numeric = np.zeros_like(array)
        for idx in np.ndindex(array.shape):
            old = array[idx]
            array[idx] = old + 1e-6
            plus = loss()
            array[idx] = old - 1e-6
            numeric[idx] = (plus - loss()) / 2e-6
            array[idx] = old
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8, err_msg=name)


def residual_block(filters=6, seed=0, shape=(6, 6, 4)):
    nn.set_random_seed(seed)
    inp = nn.Input(shape)
    shortcut = nn.Conv2D(filters, 1, strides=2, name="shortcut")(inp)
    x = nn.Conv2D(filters, 3, strides=2, padding="same", name="c1")(inp)
    x = nn.BatchNormalization(epsilon=1e-5, name="bn1")(x)
    x = nn.Activation("relu")(x)
    x = nn.Conv2D(filters, 3, padding="same", use_bias=False, name="c2")(x)
    x = nn.BatchNormalization(epsilon=1e-5, activation="relu", name="bn2")(x)
    x = nn.Add()([x, shortcut])
    x = nn.ReLU()(x)
    x = nn.GlobalAveragePooling2D()(x)
    return nn.Model(inp, nn.Dense(3, name="head")(x))


def test_residual_block_gradients_match_torch_autograd():
    torch = pytest.importorskip("torch")
    model = residual_block()
    model.need_input_grad = True
    w = {
        k: torch.tensor(v, requires_grad=True)
        for k, v in model.get_weight_dict().items()
        if "moving" not in k
    }
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6, 6, 4)).astype(np.float32)
    dy = rng.standard_normal((4, 3)).astype(np.float32)
    y = model.forward(x, training=True)
    dx = model.backward(dy)

    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    bn = lambda t, name: torch.nn.functional.batch_norm(
        t, None, None, w[f"{name}/gamma"], w[f"{name}/beta"], training=True, eps=1e-5
    )
    short = torch.nn.functional.conv2d(tx, w["shortcut/kernel"], w["shortcut/bias"], stride=2)
    # Keras' "same" at stride 2 on an even size pads bottom/right only
    h = torch.nn.functional.conv2d(
        torch.nn.functional.pad(tx, (0, 1, 0, 1)), w["c1/kernel"], w["c1/bias"], stride=2
    )
    h = torch.relu(bn(h, "bn1"))
    h = torch.relu(bn(torch.nn.functional.conv2d(h, w["c2/kernel"], padding=1), "bn2"))
    out = torch.relu(h + short).mean(dim=(2, 3)) @ w["head/kernel"] + w["head/bias"]
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-4, atol=1e-5)
    out.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-3, atol=1e-5)
    grads = {
        f"{layer.name}/{k}": g for layer in model.leaf_layers() for k, g in layer.grads.items()
    }
    assert set(grads) == set(w)
    for k, g in grads.items():
        np.testing.assert_allclose(g, w[k].grad.numpy(), rtol=1e-3, atol=1e-5, err_msg=k)


def frozen_base_model(trainable_bn_stats=False):
    nn.set_random_seed(4)
    base_in = nn.Input((8, 8, 3))
    x = nn.Conv2D(4, 3, padding="same", name="base_conv")(base_in)
    # tanh: smooth, so central differences of the base converge (a ReLU's kinks would not)
    x = nn.BatchNormalization(momentum=0.5, activation="tanh", name="base_bn")(x)
    x = nn.Conv2D(4, 3, name="base_conv2")(x)
    base = nn.Model(base_in, x, name="base")
    base.trainable = trainable_bn_stats
    inp = nn.Input((8, 8, 3))
    y = base(inp, training=False)
    y = nn.GlobalAveragePooling2D()(y)
    return base, nn.Model(inp, nn.Dense(3, activation="softmax", name="head")(y))


def synthetic(n=64, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 120, (n, 8, 8, 3)).astype(np.uint8)
    x[np.arange(n), :, :, y] += 100
    return x, y


def test_frozen_base_gets_no_update_no_backward_and_keeps_bn_statistics(monkeypatch):
    base, model = frozen_base_model()
    before = base.get_weight_dict()
    model.compile(optimizer=optim.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy")
    head = model.get_weight_dict()["head/kernel"]

    def no_conv_backward(*_args):
        raise AssertionError("a conv backward ran below the first trainable layer")

    for op in ("conv2d_backward", "conv2d_backward_input", "conv2d_backward_weight"):
        monkeypatch.setattr(_cpu, op, no_conv_backward)
    model.fit(*synthetic(), batch_size=16, epochs=2, verbose=False, print_fn=lambda _: None)
    after = base.get_weight_dict()
    for k in before:  # kernels, biases, gamma, beta and the moving statistics
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert not np.array_equal(model.get_weight_dict()["head/kernel"], head)
    summary = model.summary(print_fn=lambda _: None)
    assert "Trainable params: 15" in summary  # the head: 4 * 3 + 3


def test_unfrozen_base_called_with_training_false_learns_in_inference_mode():
    """Keras' fine-tuning: the base unfrozen but called with training=False keeps its BN in
    inference mode (moving statistics fixed) while gamma and beta learn; their gradient
    against central differences of the inference-mode function."""
    base, model = frozen_base_model(trainable_bn_stats=True)
    bn = next(layer for layer in base.layers if layer.name == "base_bn")
    bn.state["moving_mean"][:] = [0.1, -0.2, 0.3, 0.0]
    bn.state["moving_variance"][:] = [0.5, 2.0, 1.0, 1.5]
    x = np.random.default_rng(5).standard_normal((2, 8, 8, 3)).astype(np.float32)
    r = np.random.default_rng(6).standard_normal((2, 3)).astype(np.float32)
    loss = lambda: float((model.forward(x, training=True, logits=True) * r).sum(dtype=np.float64))
    loss()
    model.backward(r, from_logits=True)
    stats = {k: v.copy() for k, v in bn.state.items()}
    for name in ("gamma", "beta"):
        array = bn.params[name]
        numeric = np.zeros_like(array)
        for i in range(array.size):
            old = array[i]
            array[i] = old + 1e-2
            plus = loss()
            array[i] = old - 1e-2
            numeric[i] = (plus - loss()) / 2e-2
            array[i] = old
        # float32 kernels: as in test_nn_layers, eps 1e-2 keeps rounding noise small
        np.testing.assert_allclose(bn.grads[name], numeric, rtol=1e-2, atol=1e-3, err_msg=name)
    for k, v in bn.state.items():
        np.testing.assert_array_equal(v, stats[k])
    assert set(base.layers[1].grads) == {"kernel", "bias"}


def test_layers_follow_keras_order_and_summary_shows_connections():
    model = residual_block()
    names = [layer.name for layer in model.layers]
    # Keras' order (by depth from the output, then first visit from the output): the
    # shortcut conv sits at the depth of bn2, after it (keras.Model lists the same)
    assert names == [
        "input_layer",
        "c1",
        "bn1",
        "activation",
        "c2",
        "bn2",
        "shortcut",
        "add",
        "re_lu",
        "global_average_pooling2d",
        "head",
    ]
    text = model.summary(print_fn=lambda _: None)
    add_row = next(line for line in text.splitlines() if line.startswith("add (Add)"))
    assert add_row.split()[-1] == "bn2[0][0]"
    next_line = text.splitlines()[text.splitlines().index(add_row) + 1]
    assert next_line.strip() == "shortcut[0][0]"
    # conv 3*3*4*6+6, BN 4*6 (moving statistics included), conv 3*3*6*6, BN 4*6,
    # shortcut 4*6+6, head 6*3+3
    total = 222 + 24 + 324 + 24 + 30 + 21
    assert f"Total params: {total:,}" in text
    assert f"Non-trainable params: {2 * 12}" in text


def test_graph_model_fit_save_load_and_resume(tmp_path):
    x, y = synthetic(48)
    model = residual_block(shape=(8, 8, 3))
    model.compile(optimizer=optim.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy")
    history = model.fit(
        x,
        y,
        batch_size=16,
        epochs=3,
        verbose=False,
        print_fn=lambda _: None,
        checkpoint=str(tmp_path / "c.npz"),
    )
    assert history[-1]["loss"] < history[0]["loss"]
    model.save_weights(tmp_path / "w.npz")
    other = residual_block(seed=9, shape=(8, 8, 3))
    assert not np.allclose(other.predict(x), model.predict(x))
    other.load_weights(tmp_path / "w.npz")
    np.testing.assert_array_equal(other.predict(x), model.predict(x))


def test_keras_weight_list_round_trip_and_layouts():
    """get_weights gives Keras' layouts: a 1x1 conv kernel (1, 1, C_in, C_out) computes
    x @ kernel[0, 0] at every pixel."""
    model = residual_block()
    arrays = model.get_weights()
    # Keras' order: c1 (kernel, bias), bn1 (4), c2 (kernel), bn2 (4), then the shortcut
    kernel = arrays[11]
    assert kernel.shape == (1, 1, 4, 6)
    arrays[12] = np.arange(6, dtype=np.float32)  # the shortcut's bias
    model.set_weights(arrays)
    x = np.random.default_rng(7).standard_normal((1, 6, 6, 4)).astype(np.float32)
    layer = next(layer for layer in model.leaf_layers() if layer.name == "shortcut")
    np.testing.assert_allclose(
        layer.forward(x), x[:, ::2, ::2] @ kernel[0, 0] + np.arange(6), rtol=1e-5, atol=1e-5
    )
    other = residual_block(seed=1)
    other.set_weights(arrays)
    for k, v in model.get_weight_dict().items():
        np.testing.assert_array_equal(other.get_weight_dict()[k], v)
    with pytest.raises(ValueError, match="left over"):
        other.set_weights(arrays + [np.zeros(3)])


def test_graph_errors_are_explained():
    inp = nn.Input((4,))
    shared = nn.Dense(4)
    with pytest.raises(ValueError, match="called twice"):
        nn.Model(inp, shared(shared(inp)))
    other = nn.Input((4,))
    with pytest.raises(ValueError, match="not among the model's inputs"):
        nn.Model(inp, nn.Add()([nn.Dense(4)(inp), other]))
    with pytest.raises(ValueError, match="one shape"):
        nn.Add()([inp, nn.Input((5,))])
    with pytest.raises(ValueError, match="fit takes models with one input and one output"):
        dense_dag().fit(np.zeros((2, 4)), np.zeros(2))
    with pytest.raises(ValueError, match="unique"):
        nn.Model(inp, nn.Dense(2, name="d")(nn.Dense(4, name="d")(inp)))
    assert isinstance(inp, KerasTensor) and inp.shape == (None, 4)


def test_zero_padding_and_global_max_pooling():
    x = np.random.default_rng(8).standard_normal((2, 3, 4, 2)).astype(np.float32)
    pad = nn.ZeroPadding2D(((1, 2), (0, 1)))
    pad.build((3, 4, 2), None)
    y = pad.forward(x)
    assert pad.output_shape == y.shape[1:] == (6, 5, 2)
    np.testing.assert_array_equal(y[:, 1:4, 0:4], x)
    assert np.count_nonzero(y) == x.size
    np.testing.assert_array_equal(pad.backward(y), x)
    gmp = nn.GlobalMaxPooling2D()
    gmp.build((3, 4, 2), None)
    np.testing.assert_array_equal(gmp.forward(x), x.max(axis=(1, 2)))
    dx = gmp.backward(np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(dx, (x == x.max(axis=(1, 2), keepdims=True)).astype(np.float32))


def write_keras_h5(path, arrays_by_layer, keras3):
    """A Keras weights file in either layout: Keras 3's .weights.h5 (layers/<key>/vars/0..n,
    the layer's name an attribute) or the HDF5 layout of Keras 2 and keras.applications'
    downloads (a group per layer listing its weight_names)."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        if keras3:
            for i, (name, arrays) in enumerate(arrays_by_layer.items()):
                group = f.create_group(f"layers/layer_{i}/vars")
                group.attrs["name"] = name
                for j, a in enumerate(arrays):
                    group[str(j)] = a
            return
        f.attrs["layer_names"] = [name.encode() for name in arrays_by_layer]
        for name, arrays in arrays_by_layer.items():
            group = f.create_group(name)
            weight_names = [f"{name}/w{j}:0" for j in range(len(arrays))]
            group.attrs["weight_names"] = [w.encode() for w in weight_names]
            for w, a in zip(weight_names, arrays):
                group[w] = a


@pytest.mark.parametrize("keras3", [False, True])
def test_load_weights_reads_keras_h5_by_layer_name(tmp_path, keras3):
    """Arrays in Keras' layouts land where get_weights reads them back; a layer in the file
    that the model lacks is ignored, one the model has and the file lacks is an error."""
    model = residual_block()
    rng = np.random.default_rng(8)
    arrays = [rng.standard_normal(a.shape).astype(np.float32) for a in model.get_weights()]
    by_layer, i = {}, 0
    for layer in model.leaf_layers():
        count = len(layer.params) + len(layer.state)
        if count:
            by_layer[layer.name], i = arrays[i : i + count], i + count
    by_layer["predictions"] = [np.zeros((2, 2), np.float32)]
    path = tmp_path / ("w.weights.h5" if keras3 else "w.h5")
    write_keras_h5(path, by_layer, keras3)
    model.load_weights(path)
    for got, expected in zip(model.get_weights(), arrays):
        np.testing.assert_array_equal(got, expected)
    del by_layer["head"]
    write_keras_h5(path, by_layer, keras3)
    with pytest.raises(ValueError, match="no weights for 1 of the model's 6 layers"):
        model.load_weights(path)

"""fastconv.nn.applications against their sources: keras.applications.ResNet50 (Keras 3 on its
PyTorch backend, `pip install ".[keras]"`) through get_weights lists and both .h5 formats, and
torchvision's ResNet-18/50 (the modules written out below with torchvision's names, so their
state_dict keys are torchvision's) through state_dicts; the course's hand-built ResNet-50 and
its summary. Random weights, random BN moving statistics, inference mode."""

import os

import numpy as np
import pytest

from fastconv import nn
from fastconv.nn import applications

# Keras 3.15's variables implement NumPy 1's __array__, which NumPy 2 warns about
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

# Keras' and PyTorch's float32 sums run in other orders through ~50 layers: outputs agree to
# this fraction of their largest magnitude
RTOL = 1e-4


# In training mode the batch norms normalise by statistics of few values (conv5's 2x2 maps of
# two 64x64 images: 8 per channel), which amplifies those differences layer after layer: over
# Keras' random initialisations they reach 2e-4 of the largest output
TRAINING_RTOL = 1e-3


def assert_close(got, expected, rtol=RTOL):
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(got, expected, rtol=0, atol=rtol * scale)


def keras_or_skip():
    os.environ["KERAS_BACKEND"] = "torch"  # Keras 3 runs on PyTorch here (no TensorFlow)
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)  # Keras' initialisers: the same weights every run
    return keras


def randomize_bn(model, x, seed=0):
    """BN moving statistics near the batch's own (activations stay O(1) through 50 layers),
    then scaled and shifted at random, and random gamma / beta."""
    rng = np.random.default_rng(seed)
    bns = [layer for layer in model.leaf_layers() if isinstance(layer, nn.BatchNormalization)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model.forward(x, training=True)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
        c = bn.state["moving_mean"].shape
        std = np.sqrt(bn.state["moving_variance"])
        bn.state["moving_mean"] += (rng.uniform(-0.2, 0.2, c) * std).astype(np.float32)
        bn.state["moving_variance"] *= rng.uniform(0.5, 2, c).astype(np.float32)
        bn.params["gamma"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        bn.params["beta"] = rng.uniform(-0.2, 0.2, c).astype(np.float32)


def images(n=2, size=64, seed=1):
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def test_resnet50_parameter_counts_and_keras_names():
    model = applications.ResNet50()
    text = model.summary(print_fn=lambda _: None)
    assert "Total params: 25,636,712" in text  # as Keras prints for keras.applications.ResNet50
    assert "Trainable params: 25,583,592" in text and "Non-trainable params: 53,120" in text
    names = [layer.name for layer in model.layers]
    assert names[:13] == [
        "input_layer",
        "conv1_pad",
        "conv1_conv",
        "conv1_bn",
        "conv1_relu",
        "pool1_pad",
        "pool1_pool",
        "conv2_block1_1_conv",
        "conv2_block1_1_bn",
        "conv2_block1_1_relu",
        "conv2_block1_2_conv",
        "conv2_block1_2_bn",
        "conv2_block1_2_relu",
    ]
    assert names[-3:] == ["conv5_block3_out", "avg_pool", "predictions"]
    assert model.output_shape == (1000,) and len(names) == 177
    notop = applications.ResNet50(include_top=False, input_shape=(32, 32, 3), pooling="max")
    assert notop.output_shape == (2048,) and notop.count_params() == 23_587_712


def test_resnet50_matches_keras_through_get_weights():
    keras = keras_or_skip()
    theirs = keras.applications.ResNet50(
        weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None
    )
    ours = applications.ResNet50(input_shape=(64, 64, 3), classes=10, classifier_activation=None)
    assert [layer.name for layer in ours.layers] == [layer.name for layer in theirs.layers]
    assert ours.count_params() == theirs.count_params()
    x = images()
    ours.set_weights(theirs.get_weights())
    randomize_bn(ours, x)
    theirs.set_weights(ours.get_weights())
    assert_close(ours.predict(x), theirs.predict(x, verbose=0))


def test_resnet50_loads_keras_h5_files(tmp_path):
    keras = keras_or_skip()
    from keras.src.legacy.saving import legacy_h5_format

    h5py = pytest.importorskip("h5py")
    theirs = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
    donor = applications.ResNet50(input_shape=(64, 64, 3), classes=10)
    x = images()
    donor.set_weights(theirs.get_weights())
    randomize_bn(donor, x)
    theirs.set_weights(donor.get_weights())
    # the layout of keras.applications' ImageNet downloads (Keras 2's HDF5 weights)
    with h5py.File(tmp_path / "resnet50.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, theirs)
    theirs.save_weights(tmp_path / "resnet50.weights.h5")  # Keras 3's own format
    expected = theirs.predict(x, verbose=0)
    for name in ("resnet50.h5", "resnet50.weights.h5"):
        ours = applications.ResNet50(
            weights=str(tmp_path / name), input_shape=(64, 64, 3), classes=10
        )
        assert_close(ours.predict(x), expected)
    # the classifier's weights in the file are ignored by a model without one
    features = keras.Model(theirs.input, theirs.get_layer("avg_pool").output)
    notop = applications.ResNet50(
        include_top=False,
        pooling="avg",
        input_shape=(64, 64, 3),
        weights=str(tmp_path / "resnet50.h5"),
    )
    assert_close(notop.predict(x), features.predict(x, verbose=0))


def torchvision_resnet(torch, bottleneck, layers, num_classes):
    """torchvision.models.resnet's ResNet, BasicBlock and Bottleneck (v1.5: the stride in the
    3x3 conv), module for module, so that state_dict keys are torchvision's."""
    tnn = torch.nn

    class BasicBlock(tnn.Module):
        expansion = 1

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.relu = tnn.ReLU(inplace=True)
            self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class Bottleneck(tnn.Module):
        expansion = 4

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = tnn.BatchNorm2d(planes * 4)
            self.relu = tnn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + identity)

    block = Bottleneck if bottleneck else BasicBlock

    class ResNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.inplanes = 64
            self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = tnn.BatchNorm2d(64)
            self.relu = tnn.ReLU(inplace=True)
            self.maxpool = tnn.MaxPool2d(3, 2, 1)
            for i, (count, planes) in enumerate(zip(layers, (64, 128, 256, 512))):
                setattr(self, f"layer{i + 1}", self._make_layer(planes, count, 1 if i == 0 else 2))
            self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
            self.fc = tnn.Linear(512 * block.expansion, num_classes)

        def _make_layer(self, planes, blocks, stride):
            downsample = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                downsample = tnn.Sequential(
                    tnn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                    tnn.BatchNorm2d(planes * block.expansion),
                )
            stack = [block(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * block.expansion
            stack += [block(self.inplanes, planes) for _ in range(1, blocks)]
            return tnn.Sequential(*stack)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet()


def torch_reference(torch, net, x, seed=0):
    """Random BN statistics (near the batch's own, then perturbed) and the eval-mode output."""
    generator = torch.Generator().manual_seed(seed)
    uniform = lambda t, lo, hi: lo + (hi - lo) * torch.rand(t.shape, generator=generator)
    nchw = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.momentum = 1.0  # running statistics := this batch's
        net.train()(nchw)
        for bn in bns:
            bn.running_mean += uniform(bn.running_mean, -0.2, 0.2) * bn.running_var.sqrt()
            bn.running_var *= uniform(bn.running_var, 0.5, 2.0)
            bn.weight.copy_(uniform(bn.weight, 0.5, 1.5))
            bn.bias.copy_(uniform(bn.bias, -0.2, 0.2))
        return net.eval()(nchw).numpy()


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_matches_torchvision_state_dict(depth, tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(depth)
    net = torchvision_resnet(
        torch, depth == 50, (2, 2, 2, 2) if depth == 18 else (3, 4, 6, 3), num_classes=10
    )
    x = images(size=64, seed=depth)
    expected = torch_reference(torch, net, x)
    path = tmp_path / "resnet.pth"
    torch.save(net.state_dict(), path)
    build = applications.ResNet18 if depth == 18 else applications.ResNet50
    for weights in (net.state_dict(), str(path)):
        ours = build(
            weights=weights, input_shape=(64, 64, 3), classes=10, classifier_activation=None
        )
        assert_close(ours.predict(x), expected)
    assert ours.style == "torchvision"
    with pytest.raises(ValueError, match="style='torchvision'"):
        applications.ResNet50(weights=str(path), style="keras")


# -- the course's ResNet-50, written as the course writes it -----------------------------
def identity_block(X, f, filters, training=True):
    F1, F2, F3 = filters
    X_shortcut = X
    X = nn.Conv2D(filters=F1, kernel_size=1, strides=(1, 1), padding="valid")(X)
    X = nn.BatchNormalization(axis=3)(X, training=training)
    X = nn.Activation("relu")(X)
    X = nn.Conv2D(filters=F2, kernel_size=f, strides=(1, 1), padding="same")(X)
    X = nn.BatchNormalization(axis=3)(X, training=training)
    X = nn.Activation("relu")(X)
    X = nn.Conv2D(filters=F3, kernel_size=1, strides=(1, 1), padding="valid")(X)
    X = nn.BatchNormalization(axis=3)(X, training=training)
    X = nn.Add()([X_shortcut, X])
    return nn.Activation("relu")(X)


def convolutional_block(X, f, filters, s=2, training=True):
    F1, F2, F3 = filters
    X_shortcut = X
    X = nn.Conv2D(filters=F1, kernel_size=1, strides=(s, s), padding="valid")(X)
    X = nn.BatchNormalization(axis=3)(X, training=training)
    X = nn.Activation("relu")(X)
    X = nn.Conv2D(filters=F2, kernel_size=f, strides=(1, 1), padding="same")(X)
    X = nn.BatchNormalization(axis=3)(X, training=training)
    X = nn.Activation("relu")(X)
    X = nn.Conv2D(filters=F3, kernel_size=1, strides=(1, 1), padding="valid")(X)
    X = nn.BatchNormalization(axis=3)(X, training=training)
    X_shortcut = nn.Conv2D(filters=F3, kernel_size=1, strides=(s, s), padding="valid")(X_shortcut)
    X_shortcut = nn.BatchNormalization(axis=3)(X_shortcut, training=training)
    X = nn.Add()([X, X_shortcut])
    return nn.Activation("relu")(X)


def course_resnet50(input_shape=(64, 64, 3), classes=6):
    X_input = nn.Input(input_shape)
    X = nn.ZeroPadding2D((3, 3))(X_input)
    X = nn.Conv2D(64, (7, 7), strides=(2, 2))(X)
    X = nn.BatchNormalization(axis=3)(X)
    X = nn.Activation("relu")(X)
    X = nn.MaxPooling2D((3, 3), strides=(2, 2))(X)
    X = convolutional_block(X, f=3, filters=[64, 64, 256], s=1)
    for _ in range(2):
        X = identity_block(X, 3, [64, 64, 256])
    for filters, blocks in (([128, 128, 512], 3), ([256, 256, 1024], 5), ([512, 512, 2048], 2)):
        X = convolutional_block(X, f=3, filters=filters, s=2)
        for _ in range(blocks):
            X = identity_block(X, 3, filters)
    X = nn.AveragePooling2D(pool_size=(2, 2))(X)
    X = nn.Flatten()(X)
    X = nn.Dense(classes, activation="softmax")(X)
    return nn.Model(inputs=X_input, outputs=X)


def test_course_resnet50_summary_counts():
    model = course_resnet50()
    text = model.summary(print_fn=lambda _: None)
    # Keras' ResNet50 body without its top (23,587,712) and Dense(6) on 2048 features; the
    # 53,120 BN moving statistics are non-trainable
    assert "Total params: 23,600,006" in text
    assert "Trainable params: 23,546,886" in text and "Non-trainable params: 53,120" in text
    assert model.output_shape == (6,)
    assert "activation_2 (Activation)" in text and "add (Add)" in text


def test_course_resnet50_counts_match_keras():
    keras = keras_or_skip()
    ours = course_resnet50()
    layers = keras.layers
    saved = {
        name: getattr(nn, name)
        for name in (
            "Input",
            "ZeroPadding2D",
            "Conv2D",
            "BatchNormalization",
            "Activation",
            "MaxPooling2D",
            "Add",
            "AveragePooling2D",
            "Flatten",
            "Dense",
            "Model",
        )
    }
    try:  # the same course code, run with Keras' layers
        for name in saved:
            setattr(
                nn,
                name,
                getattr(keras, name) if name in ("Input", "Model") else getattr(layers, name),
            )
        theirs = course_resnet50()
    finally:
        for name, value in saved.items():
            setattr(nn, name, value)
    assert ours.count_params() == theirs.count_params()
    assert [type(layer).__name__ for layer in ours.layers] == [
        type(layer).__name__ for layer in theirs.layers
    ]
    x = images(size=64)
    ours.set_weights(theirs.get_weights())
    # the course calls its blocks' BNs with training=True: batch statistics, in both
    expected = theirs(x, training=True).detach().numpy()
    assert_close(ours.forward(x, training=True), expected, rtol=TRAINING_RTOL)

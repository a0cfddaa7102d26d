"""ResNets with Keras' applications interface (keras.applications.ResNet50's arguments),
built from fastconv.nn layers (channels_last), with weights from Keras or torchvision.

Each source's network is reproduced as that source computes it, since its weights only fit
its own arithmetic:

- style="keras" (keras.applications.ResNet50, "ResNet v1"): Keras' layers and names
  (conv1_pad, conv1_conv, conv1_bn, conv1_relu, pool1_pad, pool1_pool,
  conv2_block1_1_conv, ..., conv5_block3_out), conv biases, BN epsilon 1.001e-5, a block's
  stride in its first 1x1 conv, and the stem's max pooling on a ZeroPadding2D output (a
  padded zero can win). Weights: Keras .h5 / .weights.h5 files, matched by layer name.
- style="torchvision" (torchvision.models.resnet50 / resnet18, "v1.5"): torchvision's module
  names as layer names (conv1, bn1, layer1.0.conv1, layer1.0.downsample.0, ..., fc), no conv
  biases, BN epsilon 1e-5 and momentum 0.9 (PyTorch's 0.1), a block's stride in its 3x3
  conv, symmetric padding 3 / 1 in the stem conv and max pooling (a padded cell never wins).
  Weights: a state_dict, or a .pt / .pth file holding one.

`weights` is None (random initialisation), a path, or a state_dict; its kind picks the style.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .layers import (
    Activation,
    Add,
    BatchNormalization,
    Conv2D,
    Dense,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    Input,
    MaxPooling2D,
    ZeroPadding2D,
)
from .model import Model

_TORCH_SUFFIXES = (".pt", ".pth")


@dataclass(frozen=True)
class _Style:
    """Where one source puts a block's stride, what its convs and BNs hold, and its names."""

    keras: bool
    bias: bool
    epsilon: float
    momentum: float
    initializer: str
    stride_in_3x3: bool

    def pad(self, kernel):
        """A block conv's padding: Keras' "same" (its 3x3 convs have stride 1), torchvision's
        symmetric kernel // 2 (its 3x3 convs may have stride 2)."""
        return ("valid" if kernel == 1 else "same") if self.keras else kernel // 2

    def block(self, stage, index):
        return f"conv{stage + 2}_block{index + 1}" if self.keras else f"layer{stage + 1}.{index}"

    def name(self, block, part, i=0):
        """Names of a block's parts: conv / bn / relu number i, the shortcut's conv / bn, the
        sum and the block's output activation."""
        if self.keras:
            return {
                "conv": f"{block}_{i}_conv",
                "bn": f"{block}_{i}_bn",
                "relu": f"{block}_{i}_relu",
                "short_conv": f"{block}_0_conv",
                "short_bn": f"{block}_0_bn",
                "add": f"{block}_add",
                "out": f"{block}_out",
            }[part]
        return {
            "conv": f"{block}.conv{i}",
            "bn": f"{block}.bn{i}",
            "relu": f"{block}.relu{i}",
            "short_conv": f"{block}.downsample.0",
            "short_bn": f"{block}.downsample.1",
            "add": f"{block}.add",
            "out": f"{block}.relu",
        }[part]


KERAS = _Style(
    keras=True,
    bias=True,
    epsilon=1.001e-5,
    momentum=0.99,
    initializer="glorot_uniform",
    stride_in_3x3=False,
)
TORCHVISION = _Style(
    keras=False, bias=False, epsilon=1e-5, momentum=0.9, initializer="he_normal", stride_in_3x3=True
)
STYLES = {"keras": KERAS, "torchvision": TORCHVISION}


def _conv_bn(x, filters, kernel, stride, style, conv_name, bn_name, padding=None):
    padding = style.pad(kernel) if padding is None else padding
    x = Conv2D(
        filters,
        kernel,
        strides=stride,
        padding=padding,
        use_bias=style.bias,
        kernel_initializer=style.initializer,
        name=conv_name,
    )(x)
    return BatchNormalization(epsilon=style.epsilon, momentum=style.momentum, name=bn_name)(x)


def _block(x, filters, stride, bottleneck, style, name):
    """A residual block: 1x1-3x3-1x1 (bottleneck, 4x wider output) or 3x3-3x3 (basic), plus
    the input, through a strided 1x1 conv and BN where the shape changes."""
    kernels, widths = (
        ([1, 3, 1], [filters, filters, 4 * filters]) if bottleneck else ([3, 3], [filters, filters])
    )
    stride_at = 1 if bottleneck and style.stride_in_3x3 else 0
    shortcut = x
    if stride != 1 or x.sample_shape[-1] != widths[-1]:
        shortcut = _conv_bn(
            x,
            widths[-1],
            1,
            stride,
            style,
            style.name(name, "short_conv"),
            style.name(name, "short_bn"),
        )
    for i, (kernel, width) in enumerate(zip(kernels, widths)):
        x = _conv_bn(
            x,
            width,
            kernel,
            stride if i == stride_at else 1,
            style,
            style.name(name, "conv", i + 1),
            style.name(name, "bn", i + 1),
        )
        if i + 1 < len(kernels):
            x = Activation("relu", name=style.name(name, "relu", i + 1))(x)
    x = Add(name=style.name(name, "add"))([shortcut, x])
    return Activation("relu", name=style.name(name, "out"))(x)


def _stem(x, style):
    if style.keras:
        x = ZeroPadding2D(3, name="conv1_pad")(x)
        x = _conv_bn(x, 64, 7, 2, style, "conv1_conv", "conv1_bn", padding="valid")
        x = Activation("relu", name="conv1_relu")(x)
        x = ZeroPadding2D(1, name="pool1_pad")(x)
        return MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    x = Conv2D(
        64,
        7,
        strides=2,
        padding=3,
        use_bias=False,
        kernel_initializer=style.initializer,
        name="conv1",
    )(x)
    x = BatchNormalization(epsilon=style.epsilon, momentum=style.momentum, name="bn1")(x)
    x = Activation("relu", name="relu")(x)
    return MaxPooling2D(3, strides=2, padding=1, name="maxpool")(x)


def _head(x, style, include_top, pooling, classes, classifier_activation):
    keras = style.keras
    if include_top or pooling == "avg":
        x = GlobalAveragePooling2D(name="avg_pool" if keras else "avgpool")(x)
    elif pooling == "max":
        x = GlobalMaxPooling2D(name="max_pool" if keras else "global_maxpool")(x)
    elif pooling is not None:
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if include_top:
        x = Dense(classes, activation=classifier_activation, name="predictions" if keras else "fc")(
            x
        )
    return x


def _style_of(weights, style):
    """The style the weights need (a state_dict or .pt/.pth: torchvision; .h5: keras)."""
    if isinstance(weights, str) and not os.path.exists(weights):
        raise FileNotFoundError(
            f"weights: no file {weights!r}; fastconv downloads nothing: "
            f"give the path of a Keras .h5 file or of a torchvision "
            f"state_dict (.pt/.pth), or weights=None"
        )
    if weights is None:
        source = None
    elif isinstance(weights, dict) or str(weights).endswith(_TORCH_SUFFIXES):
        source = "torchvision"
    elif str(weights).endswith(".h5"):
        source = "keras"
    else:
        raise ValueError(
            f"weights must be None, a Keras .h5 path, a state_dict or a .pt/.pth "
            f"path, got {weights!r}"
        )
    if style is not None and source is not None and style != source:
        raise ValueError(
            f"{source} weights need style={source!r} (each source's ResNet computes "
            f"differently), got style={style!r}"
        )
    chosen = style or source or "keras"
    if chosen not in STYLES:
        raise ValueError(f"style must be 'keras' or 'torchvision', got {style!r}")
    return chosen


def _load_torch(model, weights):
    """A torchvision state_dict (or a file holding one) into a torchvision-style model; the
    modules the model lacks (fc without include_top) are dropped."""
    if not isinstance(weights, dict):
        import torch

        weights = torch.load(weights, map_location="cpu", weights_only=True)
    ours = {layer.name for layer in model.leaf_layers() if layer.params}
    modules = {key.rsplit(".", 1)[0] for key in weights}
    missing = sorted(ours - modules)
    if missing:
        raise ValueError(
            f"the state_dict has no weights for {len(missing)} of the model's layers "
            f"(first: {missing[:3]}): not this ResNet"
        )
    model.load_torch_state_dict({k: v for k, v in weights.items() if k.rsplit(".", 1)[0] in ours})


def _resnet(
    blocks,
    bottleneck,
    name,
    include_top,
    weights,
    input_shape,
    pooling,
    classes,
    classifier_activation,
    style,
):
    style_name = _style_of(weights, style)
    shape = tuple(input_shape or (224, 224, 3))
    if len(shape) != 3 or min(shape[:2]) < 32:
        raise ValueError(f"input_shape must be (H, W, C) with H, W >= 32, got {input_shape}")
    chosen = STYLES[style_name]
    inputs = Input(shape, name="input_layer")
    x = _stem(inputs, chosen)
    for stage, count in enumerate(blocks):
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            x = _block(x, 64 * 2**stage, stride, bottleneck, chosen, chosen.block(stage, index))
    x = _head(x, chosen, include_top, pooling, classes, classifier_activation)
    model = Model(inputs, x, name=name)
    model.style = style_name
    if style_name == "torchvision" and weights is not None:
        _load_torch(model, weights)
    elif weights is not None:
        model.load_weights(weights)
    return model


def ResNet50(
    include_top=True,
    weights=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    *,
    style=None,
    name="resnet50",
):
    """keras.applications.ResNet50 (style="keras", the default) or torchvision's resnet50
    (style="torchvision", chosen by torchvision weights). input_shape defaults to
    (224, 224, 3); every size from 32 up works (32x32 CIFAR images end at 1x1 in conv5)."""
    return _resnet(
        (3, 4, 6, 3),
        True,
        name,
        include_top,
        weights,
        input_shape,
        pooling,
        classes,
        classifier_activation,
        style,
    )


def ResNet18(
    include_top=True,
    weights=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    *,
    name="resnet18",
):
    """torchvision's resnet18 (Keras has none) with keras.applications' arguments."""
    return _resnet(
        (2, 2, 2, 2),
        False,
        name,
        include_top,
        weights,
        input_shape,
        pooling,
        classes,
        classifier_activation,
        "torchvision",
    )


_TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
_TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


def preprocess_input(images, style="keras"):
    """uint8 RGB NHWC images as the pretrained weights of `style` expect them: Keras' ResNet50
    ("caffe": BGR, ImageNet mean subtracted) or torchvision's (ImageNet mean and std)."""
    x = np.asarray(images, np.float32)
    if style == "keras":
        return x[..., ::-1] - _CAFFE_MEAN_BGR
    if style == "torchvision":
        return (x - _TORCH_MEAN) / _TORCH_STD
    raise ValueError(f"style must be 'keras' or 'torchvision', got {style!r}")

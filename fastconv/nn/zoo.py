"""Ready-made networks: the project's reference CIFAR-10 network (airbench-style) and the
seed tutorial's Keras model, built from fastconv.nn layers (channels_last)."""

from __future__ import annotations

import numpy as np

from .layers import (
    Activation,
    BatchNormalization,
    Conv2D,
    Dense,
    Flatten,
    MaxPooling2D,
    Scale,
)
from .model import Sequential


def torch_uniform(shape, rng, kind):
    """PyTorch's default Conv/Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    fan_in = shape[0] if kind == "dense" else int(np.prod(shape[1:]))
    bound = 1 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape)


def identity_uniform(shape, rng, kind):
    """torch_uniform with the first min(C_out, C_in) filters replaced by identity (airbench's
    dirac init on every block conv): the block starts close to passing its input through."""
    w = torch_uniform(shape, rng, kind)
    c_out, c_in, kh, kw = shape
    n = min(c_out, c_in)
    w[:n] = 0
    w[np.arange(n), np.arange(n), kh // 2, kw // 2] = 1
    return w


def _block(width, activation, bn_bias_lr_scale):
    def norm():
        return BatchNormalization(
            momentum=0.4,
            epsilon=1e-12,
            scale=False,
            activation=activation,
            lr_scale={"beta": bn_bias_lr_scale},
        )

    return [
        Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=identity_uniform),
        MaxPooling2D(2),
        norm(),
        Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=identity_uniform),
        norm(),
    ]


REFERENCE_WIDTHS = (64, 128, 256)


def reference_net(
    widths=REFERENCE_WIDTHS,
    whiten_width=24,
    activation="gelu",
    whiten_activation="relu",
    num_classes=10,
    bn_bias_lr_scale=64.0,
    seed=0,
):
    """airbench-style CIFAR-10 network: a frozen 2x2 whitening conv (3 -> whiten_width, see
    init_whitening) -> whiten_activation, three blocks conv3x3 -> maxpool -> BN -> act ->
    conv3x3 -> BN -> act (act fused into the batch-norm kernel), maxpool 3, a bias-free Dense
    and a 1/9 logit scale. About 130 MFLOP (65 M multiply-adds) per image at the default
    widths 64/128/256 (airbench94 uses 64/256/256). BN biases learn bn_bias_lr_scale times
    faster, as in airbench. The stem keeps ReLU: its 31x31x24 output would make a NumPy GELU
    the costliest layer of the step, and with the filters' negatives beside them ReLU loses
    nothing there."""
    layers = [
        Conv2D(
            whiten_width,
            2,
            padding="valid",
            input_shape=(32, 32, 3),
            trainable=False,
            name="whiten",
        ),
        Activation(whiten_activation),
    ]
    for width in widths:
        layers += _block(width, activation, bn_bias_lr_scale)
    layers += [
        MaxPooling2D(3),
        Flatten(),
        Dense(num_classes, use_bias=False, kernel_initializer=torch_uniform),
        Scale(1 / 9),
    ]
    return Sequential(layers, name="reference_net", seed=seed).build()


def init_whitening(model, images, preprocess, eps=5e-4, layer_name="whiten"):
    """Set the whitening conv from the eigenvectors of the covariance of 2x2 patches of
    `images` (uint8 NHWC, preprocessed as in training): `whitening_filters`. Bias zero."""
    layer = next(layer for layer in model.layers if layer.name == layer_name)
    layer.params["kernel"] = whitening_filters(
        images, preprocess, layer.params["kernel"].shape, eps, layer_name
    )
    if "bias" in layer.params:
        layer.params["bias"][...] = 0


def whitening_filters(images, preprocess, shape, eps=5e-4, what="the whitening conv"):
    """float32 filters of `shape` (c_out, c_in, kh, kw) that decorrelate the kh x kw patches
    of `images` (uint8 NHWC, preprocessed as in training): V/sqrt(lambda + eps) of the
    patches' covariance, largest eigenvalue first, and their negatives, so that a ReLU-like
    activation after them keeps both signs."""
    c_out, c_in, kh, kw = shape
    x = preprocess(images).astype(np.float64)  # NHWC
    n, h, w, c = x.shape
    patches = np.stack(
        [x[:, i : h - kh + 1 + i, j : w - kw + 1 + j, :] for i in range(kh) for j in range(kw)],
        axis=-1,
    )  # (..., c, kh*kw)
    patches = patches.reshape(-1, c * kh * kw)
    patches -= patches.mean(axis=0)
    cov = patches.T @ patches / len(patches)
    eigvals, eigvecs = np.linalg.eigh(cov)
    filters = (eigvecs / np.sqrt(eigvals + eps)).T.reshape(-1, c, kh, kw)
    filters = filters[::-1]  # largest eigenvalue first
    half = c_out // 2
    if half > len(filters):
        raise ValueError(
            f"{what} has {c_out} filters; at most {2 * len(filters)} "
            f"whitening filters exist for {c}x{kh}x{kw} patches"
        )
    return np.concatenate([filters[:half], -filters[:half]]).astype(np.float32)


def tutorial_net(deeper=False, input_shape=(32, 32, 3), num_classes=10, seed=0):
    """The seed tutorial's Keras model, line for line: Conv2D 32 -> MaxPooling2D -> Conv2D 25
    -> Flatten -> Dense 100 relu -> Dense 10 softmax. deeper=True: two conv blocks
    (conv-BN-conv-pool, 32 then 64 filters, 'same' padding) before the same head."""
    model = Sequential(name="tutorial_deeper" if deeper else "tutorial", seed=seed)
    if not deeper:
        model.add(Conv2D(32, (3, 3), activation="relu", input_shape=input_shape))
        model.add(MaxPooling2D((2, 2)))
        model.add(Conv2D(25, (3, 3), activation="relu"))
    else:
        for i, filters in enumerate((32, 64)):
            model.add(
                Conv2D(
                    filters,
                    (3, 3),
                    padding="same",
                    activation="relu",
                    **({"input_shape": input_shape} if i == 0 else {}),
                )
            )
            model.add(BatchNormalization())
            model.add(Conv2D(filters, (3, 3), padding="same", activation="relu"))
            model.add(MaxPooling2D((2, 2)))
    model.add(Flatten())
    model.add(Dense(100, activation="relu"))
    model.add(Dense(num_classes, activation="softmax"))
    return model.build()

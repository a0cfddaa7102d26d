"""Weight conversion from PyTorch state_dicts and Keras' get_weights() lists.

Both walk the model's layers in order and consume the foreign arrays in that framework's own
order, converting layouts: Keras conv kernels are (KH, KW, C_in, C_out), depthwise kernels
(KH, KW, C, M) and pointwise kernels (1, 1, C_in, C_out); PyTorch Linear weights are (out, in)
and a PyTorch Flatten of an NCHW map orders features (C, H, W) where a channels_last model
orders them (H, W, C).
"""
from __future__ import annotations

import numpy as np

from .layers import (
    BatchNormalization,
    Conv2D,
    Dense,
    DepthwiseConv2D,
    Flatten,
    SeparableConv2D,
)

_KERAS_ORDER = ("kernel", "depthwise_kernel", "pointwise_kernel", "bias", "gamma", "beta",
                "moving_mean", "moving_variance")
_TORCH_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
             "running_var": "moving_variance"}


def _numpy(t):
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=np.float32)


def _from_keras_array(layer, name, a):
    if name == "kernel" and isinstance(layer, Conv2D):
        return a.transpose(3, 2, 0, 1)
    if name == "depthwise_kernel":
        kh, kw, c, m = a.shape
        return a.reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None]
    if name == "pointwise_kernel":
        return a[0, 0].T
    return a


def from_keras(model, arrays):
    """{'layer/param': array} from Keras' model.get_weights() order."""
    arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
    out, i = {}, 0
    for layer in model.layers:
        names = [n for n in _KERAS_ORDER if n in {**layer.params, **layer.state}]
        for name in names:
            if i >= len(arrays):
                raise ValueError(f"ran out of Keras arrays at {layer.name}/{name}: the list has "
                                 f"{len(arrays)} arrays, fewer than the model needs")
            out[f"{layer.name}/{name}"] = _from_keras_array(layer, name, arrays[i])
            i += 1
    if i != len(arrays):
        raise ValueError(f"{len(arrays) - i} Keras arrays left over: not the same architecture")
    return out


def _torch_dense_kernel(weight, previous, prev_input_shape):
    """(in, out) kernel from an (out, in) Linear weight, reordering a flattened NCHW map."""
    kernel = weight.T
    if (isinstance(previous, Flatten) and prev_input_shape is not None
            and len(prev_input_shape) == 3):
        h, w, c = prev_input_shape
        kernel = weight.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
    return kernel


def from_torch(model, state_dict):
    """{'layer/param': array} from a PyTorch state_dict of the same architecture."""
    tensors = [(k, _numpy(v)) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")]
    queue = list(reversed(tensors))
    out = {}
    previous, prev_input_shape, shape = None, None, model.input_shape

    def take(expect):
        if not queue:
            raise ValueError(f"the state_dict ran out of tensors at {expect}: not the same architecture")
        return queue.pop()

    for layer in model.layers:
        p = layer.name
        if isinstance(layer, BatchNormalization):
            for torch_name, ours in _TORCH_BN.items():
                if ours in {**layer.params, **layer.state}:
                    key, value = take(f"{p}/{ours}")
                    if not key.endswith(torch_name):
                        raise ValueError(f"{p}/{ours}: expected a '{torch_name}' tensor, got {key!r}")
                    out[f"{p}/{ours}"] = value
        elif isinstance(layer, Dense):
            out[f"{p}/kernel"] = _torch_dense_kernel(take(f"{p}/kernel")[1], previous,
                                                     prev_input_shape)
        elif isinstance(layer, SeparableConv2D):
            out[f"{p}/depthwise_kernel"] = take(f"{p}/depthwise_kernel")[1]
            out[f"{p}/pointwise_kernel"] = take(f"{p}/pointwise_kernel")[1][:, :, 0, 0]
        elif isinstance(layer, (Conv2D, DepthwiseConv2D)):
            name = "kernel" if isinstance(layer, Conv2D) else "depthwise_kernel"
            out[f"{p}/{name}"] = take(f"{p}/{name}")[1]
        if "bias" in layer.params and not isinstance(layer, BatchNormalization):
            out[f"{p}/bias"] = take(f"{p}/bias")[1]
        if isinstance(layer, Flatten):
            prev_input_shape = shape if _channels_last_before(model, layer) else None
        previous, shape = layer, layer.output_shape
    if queue:
        raise ValueError(f"{len(queue)} state_dict tensors left over (first: {queue[-1][0]!r}): "
                         f"not the same architecture")
    return out


def _channels_last_before(model, flatten):
    """True when the layers feeding `flatten` use channels_last (the default)."""
    idx = model.layers.index(flatten)
    for layer in reversed(model.layers[:idx]):
        layout = getattr(layer, "layout", None)
        if layout is not None:
            return layout == "NHWC"
    return True

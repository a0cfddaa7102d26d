"""Weights to and from Keras (get_weights() lists and .h5 files) and from PyTorch state_dicts.

Every function returns {'layer/param': array} in fastconv's layouts for
Model.set_weight_dict. Keras orders a model's weights layer by layer in model.layers' order
(nested models' layers in place), and within a layer kernel / depthwise_kernel /
pointwise_kernel, bias, then BN's gamma, beta, moving_mean, moving_variance. Keras conv
kernels are (KH, KW, C_in/groups, C_out) where fastconv's are (C_out, C_in/groups, KH, KW);
depthwise kernels (KH, KW, C, M) where fastconv's are (C*M, 1, KH, KW); pointwise kernels
(1, 1, C_in, C_out) where fastconv's are (C_out, C_in). PyTorch Linear weights are
(out, in), and a PyTorch Flatten of an NCHW map orders features (C, H, W) where a
channels_last model orders them (H, W, C).
"""

from __future__ import annotations

import numpy as np

from .layers import (
    BatchNormalization,
    Conv2D,
    Dense,
    DepthwiseConv2D,
    Flatten,
    InputLayer,
    SeparableConv2D,
)

_KERAS_ORDER = (
    "kernel",
    "depthwise_kernel",
    "pointwise_kernel",
    "bias",
    "gamma",
    "beta",
    "moving_mean",
    "moving_variance",
)
_TORCH_BN = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}


def _numpy(t):
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=np.float32)


def keras_names(layer):
    """The layer's weight names in Keras' order."""
    return [n for n in _KERAS_ORDER if n in layer.params or n in layer.state]


def from_keras_array(layer, name, a):
    """A Keras weight array in fastconv's layout."""
    a = np.asarray(a, dtype=np.float32)
    if name == "kernel" and isinstance(layer, Conv2D):
        return a.transpose(3, 2, 0, 1)
    if name == "depthwise_kernel":
        kh, kw, c, m = a.shape
        return a.reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None]
    if name == "pointwise_kernel":
        return a[0, 0].T
    return a


def to_keras(layer, name, a):
    """A fastconv weight array in Keras' layout (the inverse of from_keras_array)."""
    if name == "kernel" and isinstance(layer, Conv2D):
        return a.transpose(2, 3, 1, 0)
    if name == "depthwise_kernel":
        cm, _, kh, kw = a.shape
        m = layer.depth_multiplier
        return a[:, 0].transpose(1, 2, 0).reshape(kh, kw, cm // m, m)
    if name == "pointwise_kernel":
        return a.T[None, None]
    return a


def from_keras(model, arrays):
    """From the list Keras' model.get_weights() returns for the same architecture."""
    arrays = list(arrays)
    out, i = {}, 0
    for layer in model.leaf_layers():
        for name in keras_names(layer):
            if i >= len(arrays):
                raise ValueError(
                    f"ran out of Keras arrays at {layer.name}/{name}: the list has "
                    f"{len(arrays)} arrays, fewer than the model needs"
                )
            out[f"{layer.name}/{name}"] = from_keras_array(layer, name, arrays[i])
            i += 1
    if i != len(arrays):
        raise ValueError(f"{len(arrays) - i} Keras arrays left over: not the same architecture")
    return out


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def read_keras_h5(path):
    """{layer name: [arrays in Keras' order]} from a Keras weights file: the HDF5 layout of
    keras.applications' downloads, Keras 2's save_weights and model.save('x.h5') (a group
    per layer listing its `weight_names`), or Keras 3's .weights.h5 (groups .../vars holding
    arrays 0, 1, ... with the layer's name as an attribute)."""
    try:
        import h5py
    except ImportError:
        raise ImportError(
            "reading Keras .h5 weights needs h5py: pip install h5py (or fastconv[h5])"
        ) from None
    stored = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:
            for group_name in map(_text, root.attrs["layer_names"]):
                group = root[group_name]
                for weight in map(_text, group.attrs["weight_names"]):
                    # 'conv1_conv/kernel:0'; a nested model's group lists its layers' weights
                    parts = weight.split(":")[0].split("/")
                    layer = parts[-2] if len(parts) > 1 else group_name
                    stored.setdefault(layer, []).append(np.asarray(group[weight]))
        else:

            def visit(name, obj):
                if name.split("/")[-1] == "vars" and isinstance(obj, h5py.Group) and len(obj):
                    layer = _text(obj.attrs.get("name", name.split("/")[-2]))
                    stored[layer] = [np.asarray(obj[str(i)]) for i in range(len(obj))]

            f.visititems(visit)
    return stored


def from_keras_h5(model, path):
    """From a Keras weights file, matched by layer name; the file's other layers are ignored
    (an ImageNet file with the classifier loads into a model without it)."""
    stored = read_keras_h5(path)
    out, missing = {}, []
    weighted = [layer for layer in model.leaf_layers() if keras_names(layer)]
    for layer in weighted:
        names = keras_names(layer)
        if layer.name not in stored:
            missing.append(layer.name)
            continue
        arrays = stored[layer.name]
        if len(arrays) != len(names):
            raise ValueError(
                f"{path}: layer {layer.name} has {len(arrays)} arrays, the model's "
                f"has {len(names)} ({', '.join(names)})"
            )
        out.update(
            {f"{layer.name}/{n}": from_keras_array(layer, n, a) for n, a in zip(names, arrays)}
        )
    if missing:
        raise ValueError(
            f"{path} has no weights for {len(missing)} of the model's "
            f"{len(weighted)} layers with weights (first: {missing[:3]}): another "
            f"architecture or other layer names"
        )
    return out


def _channels_last_before(model, layer):
    """True when the nearest layer with a data format upstream of `layer` is channels_last
    (the default)."""
    while True:
        inbound = model.inbound_layers(layer)
        if not inbound or isinstance(inbound[0], InputLayer):
            return True
        layer = inbound[0]
        if getattr(layer, "layout", None) is not None:
            return layer.layout == "NHWC"


def _torch_dense_kernel(model, dense, weight):
    """(in, out) kernel from an (out, in) Linear weight, reordering a flattened NCHW map."""
    inbound = model.inbound_layers(dense)
    if inbound and isinstance(inbound[0], Flatten) and _channels_last_before(model, inbound[0]):
        shape = model.inbound_layers(inbound[0])[0].output_shape
        if len(shape) == 3:
            h, w, c = shape
            return weight.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
    return weight.T


def from_torch(model, state_dict):
    """From a PyTorch state_dict: by module name when the modules with weights are named as
    the model's layers with weights, else in order (the layers' order, which must be the
    modules' order)."""
    tensors = {k: _numpy(v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    layers = [layer for layer in model.leaf_layers() if layer.params or layer.state]
    by_name = {k.rsplit(".", 1)[0] for k in tensors} == {layer.name for layer in layers}
    queue = list(reversed(tensors))

    def take(layer, suffix):
        """The tensor `suffix` ('weight', 'running_mean', ...) of the layer's module."""
        key = f"{layer.name}.{suffix}" if by_name else (queue.pop() if queue else None)
        if key is None or key not in tensors:
            raise ValueError(
                f"the state_dict has no tensor for {layer.name}/{suffix}: not the same architecture"
            )
        if not key.endswith(suffix):
            raise ValueError(f"{layer.name}: expected a '{suffix}' tensor, got {key!r}")
        return tensors.pop(key)

    out = {}
    for layer in layers:
        p = layer.name
        if isinstance(layer, BatchNormalization):
            for torch_name, ours in _TORCH_BN.items():
                if ours in layer.params or ours in layer.state:
                    out[f"{p}/{ours}"] = take(layer, torch_name)
            continue
        if isinstance(layer, Dense):
            out[f"{p}/kernel"] = _torch_dense_kernel(model, layer, take(layer, "weight"))
        elif isinstance(layer, SeparableConv2D):  # two modules: depthwise, then pointwise
            out[f"{p}/depthwise_kernel"] = take(layer, "weight")
            out[f"{p}/pointwise_kernel"] = take(layer, "weight")[:, :, 0, 0]
        elif isinstance(layer, (Conv2D, DepthwiseConv2D)):
            name = "kernel" if isinstance(layer, Conv2D) else "depthwise_kernel"
            out[f"{p}/{name}"] = take(layer, "weight")
        if "bias" in layer.params:
            out[f"{p}/bias"] = take(layer, "bias")
    if tensors:
        raise ValueError(
            f"{len(tensors)} state_dict tensors left over (first: "
            f"{next(iter(tensors))!r}): not the same architecture"
        )
    return out

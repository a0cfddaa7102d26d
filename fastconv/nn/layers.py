"""Keras-style layers whose convolution and pooling run on fastconv's kernels.

Every layer follows one protocol: `build(input_shape, rng)` creates its weights from the
per-sample input shape (no batch axis) and returns the output shape; `forward(x, training)`
computes and remembers what `backward(dy)` needs; `backward(dy)` stores parameter gradients in
`grads` and returns dx (None when `need_input_grad` is False: nothing upstream learns).
`backward` never writes into dy: a graph hands the same dy to several layers.
Weights live in `params` in fastconv's layout (conv kernels (C_out, C_in/groups, KH, KW),
Dense kernels (in, out) as Keras); non-learned arrays (BN moving statistics) live in `state`.
A `trainable=False` layer keeps its weights fixed (its grads are not computed).
Element-wise maths is written against the array's own module, so CuPy arrays stay on the GPU.

Keras' functional API: `Input(shape)` gives a symbolic tensor (KerasTensor); calling a layer
on symbolic tensors builds it for their shapes and returns the symbolic output, recording the
call as a Node (layer, input tensors, `training` override). fastconv.nn.model.Model turns the
nodes between some inputs and outputs into a runnable graph. Merge layers (Add, Concatenate)
take a list of tensors: their forward gets a list of arrays, their backward returns a list.
"""

from __future__ import annotations

import numpy as np

from .. import _args
from .. import functional as F
from .._backend import array_module
from .activations import get_activation
from .initializers import initialize


def _layout(data_format):
    fmt = "channels_last" if data_format is None else data_format
    if fmt not in ("channels_last", "channels_first"):
        raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got {fmt!r}")
    return "NHWC" if fmt == "channels_last" else "NCHW"


_rng = np.random.default_rng(0)


def set_random_seed(seed):
    """Seed the generator that initialises layers called on symbolic tensors (Keras'
    keras.utils.set_random_seed): a script that seeds it first builds the same weights."""
    global _rng
    _rng = np.random.default_rng(seed)


class KerasTensor:
    """A symbolic tensor: output `index` of `node`. `shape` has the batch axis as None (as
    Keras prints it); `sample_shape` is the shape of one sample."""

    def __init__(self, sample_shape, node, index=0):
        self.sample_shape = tuple(sample_shape)
        self.node, self.index = node, index

    @property
    def shape(self):
        return (None, *self.sample_shape)

    def __repr__(self):
        return f"<KerasTensor shape={self.shape} from {self.node.layer.name or self.node.layer}>"


class Node:
    """One call of `layer` on symbolic `inputs` (a list; `as_list` says whether the layer took
    a list, as merge layers do). `training` = None runs the layer in the model's mode, False or
    True always in that mode: `base(x, training=False)` keeps a fine-tuned base's BN in
    inference mode, as tf.keras and Keras' transfer-learning guide have it (Keras 3.15 lets
    the model's mode override the call's)."""

    def __init__(self, layer, inputs, as_list, training, output_shapes):
        self.layer, self.inputs, self.as_list, self.training = layer, inputs, as_list, training
        self.outputs = [KerasTensor(shape, self, i) for i, shape in enumerate(output_shapes)]


class Layer:
    """Base class: name, trainable flag, parameters, gradients, the optional activation
    (applied by an Activation layer the model appends, unless fused_activation is set) and
    per-parameter learning-rate factors `lr_scale`."""

    fused_activation = False

    def __init__(
        self, *, name=None, trainable=True, input_shape=None, activation=None, lr_scale=None
    ):
        self.name = name
        self.trainable = trainable
        # {param name: factor} on the optimiser's learning rate for this layer's weights
        self.lr_scale = dict(lr_scale or {})
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.params: dict = {}
        self.grads: dict = {}
        self.state: dict = {}
        self.need_input_grad = True
        self.activation = get_activation(activation)
        self.built = False
        self.output_shape = None

    def build(self, input_shape, rng):
        self.built = True
        self.output_shape = tuple(input_shape)
        return self.output_shape

    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, inputs, training=None):
        """On symbolic tensors (from Input): build for their shapes and return the symbolic
        output. On arrays: run forward (with the layer's activation) in `training` mode."""
        as_list = isinstance(inputs, (list, tuple))
        tensors = list(inputs) if as_list else [inputs]
        symbolic = [isinstance(t, KerasTensor) for t in tensors]
        if all(symbolic):
            return self.connect(inputs, training, _rng)
        if any(symbolic):
            raise TypeError(
                f"{self.name or type(self).__name__}: got symbolic tensors and arrays in one call"
            )
        if not self.built:
            self.build([t.shape[1:] for t in tensors] if as_list else tensors[0].shape[1:], _rng)
        y = self.forward(inputs, bool(training))
        separate = self.activation is not None and not self.fused_activation
        return self.activation.forward(y) if separate else y

    def connect(self, inputs, training, rng):
        """Record a call on symbolic `inputs` (a tensor or a list), building the layer with
        `rng` on its first call; returns the output tensor (a list for several outputs)."""
        as_list = isinstance(inputs, (list, tuple))
        tensors = list(inputs) if as_list else [inputs]
        shapes = [t.sample_shape for t in tensors]
        shape_in = shapes if as_list else shapes[0]
        if not self.built:
            self.build(shape_in, rng)
        elif getattr(self, "_built_for", shape_in) != shape_in:
            raise ValueError(
                f"{self.name or type(self).__name__} was built for inputs "
                f"{self._built_for}, called on {shape_in}"
            )
        self._built_for = shape_in
        outputs = self.output_shapes()
        node = Node(self, tensors, as_list, training, outputs)
        return node.outputs if len(outputs) > 1 else node.outputs[0]

    def output_shapes(self):
        """Per-sample shapes of the outputs (one for every layer but a multi-output model)."""
        return [self.output_shape]

    def count_params(self):
        """Every weight, BN moving statistics included (Keras counts those as non-trainable)."""
        return sum(int(np.prod(a.shape)) for a in (*self.params.values(), *self.state.values()))

    def count_trainable_params(self):
        return sum(int(np.prod(p.shape)) for p in self.params.values()) if self.trainable else 0

    def _store_grads(self, **grads):
        self.grads = {k: g for k, g in grads.items() if k in self.params} if self.trainable else {}


def _check_rank(input_shape, rank, layer):
    if len(input_shape) != rank:
        raise ValueError(
            f"{layer} expects inputs with {rank} dimensions per sample, got "
            f"{tuple(input_shape)}; add Flatten() before a Dense layer or give "
            f"images as (H, W, C)"
        )


class _ConvBase(Layer):
    """Shared geometry for the convolution layers."""

    def __init__(
        self,
        kernel_size,
        strides,
        padding,
        data_format,
        dilation_rate,
        use_bias,
        bias_initializer,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.kernel_size = _args.pair(kernel_size, "kernel_size", minimum=1)
        self.strides = _args.pair(strides, "strides", minimum=1)
        self.dilation_rate = _args.pair(dilation_rate, "dilation_rate", minimum=1)
        self.padding = padding
        self.layout = _layout(data_format)
        self.use_bias = use_bias
        self.bias_initializer = bias_initializer

    @property
    def geometry(self):
        return dict(
            stride=self.strides,
            padding=self.padding,
            dilation=self.dilation_rate,
            layout=self.layout,
        )

    def _channels(self, input_shape):
        _check_rank(input_shape, 3, type(self).__name__)
        return input_shape[-1] if self.layout == "NHWC" else input_shape[0]

    def _shape_out(self, input_shape, w_shape, groups=1):
        g = _args.conv_geometry(
            (1, *input_shape), w_shape, groups=groups, what=self.name, **self.geometry
        )
        return g.y_shape[1:]

    def _bias(self, rng, channels):
        if self.use_bias:
            self.params["bias"] = initialize(self.bias_initializer, (channels,), rng)


class Conv2D(_ConvBase):
    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        data_format=None,
        dilation_rate=(1, 1),
        groups=1,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(
            kernel_size,
            strides,
            padding,
            data_format,
            dilation_rate,
            use_bias,
            bias_initializer,
            activation=activation,
            **kwargs,
        )
        self.filters, self.groups = filters, groups
        self.kernel_initializer = kernel_initializer

    def build(self, input_shape, rng):
        c_in = self._channels(input_shape)
        if c_in % self.groups:
            raise ValueError(
                f"{self.name}: groups={self.groups} must divide the {c_in} input channels"
            )
        shape = (self.filters, c_in // self.groups, *self.kernel_size)
        self.params["kernel"] = initialize(self.kernel_initializer, shape, rng)
        self._bias(rng, self.filters)
        self.built, self.output_shape = True, self._shape_out(input_shape, shape, self.groups)
        return self.output_shape

    def forward(self, x, training=False):
        self._x = x
        return F.conv2d(
            x, self.params["kernel"], self.params.get("bias"), groups=self.groups, **self.geometry
        )

    def backward(self, dy):
        dx, dw, db = F.conv2d_backward(
            dy,
            self._x,
            self.params["kernel"],
            groups=self.groups,
            need_dx=self.need_input_grad,
            need_dw=self.trainable,
            need_dbias=self.trainable and "bias" in self.params,
            **self.geometry,
        )
        self._store_grads(kernel=dw, bias=db)
        return dx


class DepthwiseConv2D(_ConvBase):
    def __init__(
        self,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        depth_multiplier=1,
        data_format=None,
        dilation_rate=(1, 1),
        activation=None,
        use_bias=True,
        depthwise_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(
            kernel_size,
            strides,
            padding,
            data_format,
            dilation_rate,
            use_bias,
            bias_initializer,
            activation=activation,
            **kwargs,
        )
        self.depth_multiplier = depth_multiplier
        self.depthwise_initializer = depthwise_initializer

    def build(self, input_shape, rng):
        c_out = self._channels(input_shape) * self.depth_multiplier
        shape = (c_out, 1, *self.kernel_size)
        self.params["depthwise_kernel"] = initialize(self.depthwise_initializer, shape, rng)
        self._bias(rng, c_out)
        groups = self._channels(input_shape)
        self.built, self.output_shape = True, self._shape_out(input_shape, shape, groups)
        return self.output_shape

    def forward(self, x, training=False):
        self._x = x
        return F.depthwise_conv2d(
            x, self.params["depthwise_kernel"], self.params.get("bias"), **self.geometry
        )

    def backward(self, dy):
        dx, dw, db = F.depthwise_conv2d_backward(
            dy,
            self._x,
            self.params["depthwise_kernel"],
            need_dx=self.need_input_grad,
            need_dw=self.trainable,
            need_dbias=self.trainable and "bias" in self.params,
            **self.geometry,
        )
        self._store_grads(depthwise_kernel=dw, bias=db)
        return dx


class SeparableConv2D(_ConvBase):
    """Depthwise conv (depth_multiplier) then a 1x1 conv to `filters`: far fewer weights than
    Conv2D for the same output shape (see Sequential.summary())."""

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        data_format=None,
        dilation_rate=(1, 1),
        depth_multiplier=1,
        activation=None,
        use_bias=True,
        depthwise_initializer="glorot_uniform",
        pointwise_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(
            kernel_size,
            strides,
            padding,
            data_format,
            dilation_rate,
            use_bias,
            bias_initializer,
            activation=activation,
            **kwargs,
        )
        self.filters, self.depth_multiplier = filters, depth_multiplier
        self.depthwise_initializer = depthwise_initializer
        self.pointwise_initializer = pointwise_initializer

    def build(self, input_shape, rng):
        c_in = self._channels(input_shape)
        mid = c_in * self.depth_multiplier
        dw_shape = (mid, 1, *self.kernel_size)
        self.params["depthwise_kernel"] = initialize(self.depthwise_initializer, dw_shape, rng)
        self.params["pointwise_kernel"] = initialize(
            self.pointwise_initializer, (self.filters, mid, 1, 1), rng
        )[:, :, 0, 0]
        self._bias(rng, self.filters)
        mid_shape = self._shape_out(input_shape, dw_shape, c_in)
        nhwc = self.layout == "NHWC"
        self.output_shape = (
            (*mid_shape[:2], self.filters) if nhwc else (self.filters, *mid_shape[1:])
        )
        self.built = True
        return self.output_shape

    def forward(self, x, training=False):
        # Training keeps the depthwise output, which the backward would otherwise recompute.
        self._x = x
        mid = F.depthwise_conv2d(x, self.params["depthwise_kernel"], **self.geometry)
        self._mid = mid if training else None
        layout = self.geometry["layout"]
        return F.pointwise_conv2d(
            mid, self.params["pointwise_kernel"], self.params.get("bias"), layout=layout
        )

    def backward(self, dy):
        weights = self.params["depthwise_kernel"], self.params["pointwise_kernel"]
        flags = dict(need_dx=self.need_input_grad, need_dw=self.trainable, **self.geometry)
        if self._mid is None:
            dx, ddw, dpw, db = F.separable_conv2d_backward(dy, self._x, *weights, **flags)
        else:
            dx, ddw, dpw, db = F.separable_conv2d_backward_from_mid(
                dy, self._x, self._mid, *weights, **flags
            )
        self._store_grads(depthwise_kernel=ddw, pointwise_kernel=dpw, bias=db)
        return dx


class _Pooling2D(Layer):
    kind = "max"

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = _args.pair(pool_size, "pool_size", minimum=1)
        self.strides = (
            self.pool_size if strides is None else _args.pair(strides, "strides", minimum=1)
        )
        self.padding, self.layout = padding, _layout(data_format)

    @property
    def geometry(self):
        return dict(stride=self.strides, padding=self.padding, layout=self.layout)

    def build(self, input_shape, rng):
        _check_rank(input_shape, 3, type(self).__name__)
        g = _args.pool_geometry(
            (1, *input_shape), self.pool_size, kind=self.kind, what=self.name, **self.geometry
        )
        self.built, self.output_shape = True, g.y_shape[1:]
        return self.output_shape

    def forward(self, x, training=False):
        if training and self.kind == "max" and _args.fits_argmax(self.pool_size):
            # The backward then reads a byte per output instead of x and every window.
            self._x, self._input_size = None, _spatial(x.shape, self.layout)
            y, self._argmax = F.max_pool2d_with_argmax(x, self.pool_size, **self.geometry)
            return y
        self._x, self._argmax = x, None
        return getattr(F, f"{self.kind}_pool2d")(x, self.pool_size, **self.geometry)

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        if self._argmax is not None:
            return F.max_pool2d_backward_argmax(
                dy, self._argmax, self._input_size, self.pool_size, **self.geometry
            )
        return getattr(F, f"{self.kind}_pool2d_backward")(
            dy, self._x, self.pool_size, **self.geometry
        )


def _spatial(shape, layout):
    return _args.split_activation(shape, _args.channels_last(layout))[2:]


class MaxPooling2D(_Pooling2D):
    kind = "max"


class AveragePooling2D(_Pooling2D):
    kind = "avg"


class _GlobalPooling2D(Layer):
    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.layout = _layout(data_format)

    def build(self, input_shape, rng):
        _check_rank(input_shape, 3, type(self).__name__)
        self.built = True
        self.output_shape = (input_shape[-1] if self.layout == "NHWC" else input_shape[0],)
        return self.output_shape


class GlobalAveragePooling2D(_GlobalPooling2D):
    def forward(self, x, training=False):
        self._x = x
        return F.global_avg_pool2d(x, layout=self.layout)

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        xp = array_module(dy)
        return F.global_avg_pool2d_backward(xp.ascontiguousarray(dy), self._x, layout=self.layout)


class GlobalMaxPooling2D(_GlobalPooling2D):
    """The maximum over all pixels: max pooling with one window the size of the image."""

    def forward(self, x, training=False):
        self._window = _spatial(x.shape, self.layout)
        if training and _args.fits_argmax(self._window):
            self._x = None
            y, self._argmax = F.max_pool2d_with_argmax(x, self._window, layout=self.layout)
        else:
            self._x, self._argmax = x, None
            y = F.max_pool2d(x, self._window, layout=self.layout)
        return y.reshape(len(x), -1)

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        n, c = dy.shape
        pooled = (n, 1, 1, c) if self.layout == "NHWC" else (n, c, 1, 1)
        dy = array_module(dy).ascontiguousarray(dy).reshape(pooled)
        if self._argmax is not None:
            return F.max_pool2d_backward_argmax(
                dy, self._argmax, self._window, self._window, layout=self.layout
            )
        return F.max_pool2d_backward(dy, self._x, self._window, layout=self.layout)


def _zero_padding(padding):
    """((top, bottom), (left, right)) from an int, (rows, cols) or that form itself."""
    if (
        isinstance(padding, (tuple, list))
        and len(padding) == 2
        and all(isinstance(p, (tuple, list)) for p in padding)
    ):
        return tuple(_args.pair(p, "padding", minimum=0) for p in padding)
    rows, cols = _args.pair(padding, "padding", minimum=0)
    return (rows, rows), (cols, cols)


class ZeroPadding2D(Layer):
    """Zero rows and columns around the image (Keras' ZeroPadding2D): padding is an int,
    (rows, cols) or ((top, bottom), (left, right))."""

    def __init__(self, padding=(1, 1), data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.padding = _zero_padding(padding)
        self.layout = _layout(data_format)

    def _pads(self):
        spatial = (self.padding[0], self.padding[1])
        return ((0, 0), *spatial, (0, 0)) if self.layout == "NHWC" else ((0, 0), (0, 0), *spatial)

    def build(self, input_shape, rng):
        _check_rank(input_shape, 3, "ZeroPadding2D")
        self.built = True
        self.output_shape = tuple(n + a + b for n, (a, b) in zip(input_shape, self._pads()[1:]))
        return self.output_shape

    def forward(self, x, training=False):
        return array_module(x).pad(x, self._pads())

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        return dy[tuple(slice(a, n - b) for n, (a, b) in zip(dy.shape, self._pads()))]


class Flatten(Layer):
    def build(self, input_shape, rng):
        self.built, self.output_shape = True, (int(np.prod(input_shape)),)
        return self.output_shape

    def forward(self, x, training=False):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._shape)


class Dense(Layer):
    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(activation=activation, **kwargs)
        self.units, self.use_bias = units, use_bias
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer

    def build(self, input_shape, rng):
        _check_rank(input_shape, 1, "Dense")
        self.params["kernel"] = initialize(
            self.kernel_initializer, (input_shape[0], self.units), rng, kind="dense"
        )
        if self.use_bias:
            self.params["bias"] = initialize(self.bias_initializer, (self.units,), rng)
        self.built, self.output_shape = True, (self.units,)
        return self.output_shape

    def forward(self, x, training=False):
        self._x = x
        y = x @ self.params["kernel"]
        return y + self.params["bias"] if self.use_bias else y

    def backward(self, dy):
        self._store_grads(
            **(dict(kernel=self._x.T @ dy, bias=dy.sum(axis=0)) if self.trainable else {})
        )
        return dy @ self.params["kernel"].T if self.need_input_grad else None


class BatchNormalization(Layer):
    """Keras semantics: batch statistics while training, moving averages
    (moving = momentum * moving + (1 - momentum) * batch) at inference, and also in training
    when trainable=False (frozen for transfer learning); `axis` is the channel axis of the full
    batch (-1 for channels_last, 1 for channels_first). Training statistics and gradients come
    from fastconv.batch_norm, inference from fastconv.batch_norm_inference; activation='relu'
    or 'gelu' is fused into both."""

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        **kwargs,
    ):
        super().__init__(**kwargs)
        # these activations run inside the batch-norm kernel (one pass fewer each way)
        self.fused_activation = self.activation is not None and self.activation.name in (
            "relu",
            "gelu",
        )
        self._kernel_activation = self.activation.name if self.fused_activation else None
        self.axis, self.momentum, self.epsilon = axis, momentum, epsilon
        self.center, self.scale = center, scale
        self.beta_initializer, self.gamma_initializer = beta_initializer, gamma_initializer

    def build(self, input_shape, rng):
        rank = len(input_shape) + 1
        axis = self.axis % rank
        if axis == 0:
            raise ValueError("BatchNormalization axis must be a channel axis, not the batch axis 0")
        channels = input_shape[axis - 1]
        self._bshape = tuple(channels if a == axis else 1 for a in range(rank))
        if self.scale:
            self.params["gamma"] = initialize(self.gamma_initializer, (channels,), rng)
        if self.center:
            self.params["beta"] = initialize(self.beta_initializer, (channels,), rng)
        self.state = {
            "moving_mean": np.zeros(channels, np.float32),
            "moving_variance": np.ones(channels, np.float32),
        }
        self.built, self.output_shape = True, tuple(input_shape)
        return self.output_shape

    def _affine(self, mean, inv_std):
        """(a, b) with y = a * x + b for per-channel mean and 1/std."""
        gamma = self.params.get("gamma", 1.0)
        a = gamma * inv_std
        return a, self.params.get("beta", 0.0) - mean * a

    def forward(self, x, training=False):
        # as Keras: a frozen BN, or one called with training=False, runs in inference mode
        self._inference = not training or not self.trainable
        gamma, beta = self.params.get("gamma"), self.params.get("beta")
        self._x = x
        if self._inference:
            self._y = F.batch_norm_inference(
                x,
                self.state["moving_mean"],
                self.state["moving_variance"],
                gamma,
                beta,
                axis=self.axis,
                eps=self.epsilon,
                activation=self._kernel_activation,
            )
            return self._y
        y, mean, var = F.batch_norm(
            x, gamma, beta, axis=self.axis, eps=self.epsilon, activation=self._kernel_activation
        )
        m = self.momentum
        count = x.size // mean.size
        unbiased = var * (count / max(count - 1, 1))
        self.state["moving_mean"] = m * self.state["moving_mean"] + (1 - m) * mean
        self.state["moving_variance"] = m * self.state["moving_variance"] + (1 - m) * unbiased
        self._mean, self._var = mean, var
        return y

    def _inference_backward(self, dy):
        """Gradients through the fixed affine map of the moving statistics (and the fused
        activation): no statistics depend on x. gamma and beta learn when the layer is
        trainable (a trainable BN inside a model called with training=False)."""
        xp = array_module(dy)
        inv = 1.0 / xp.sqrt(self.state["moving_variance"] + self.epsilon)
        a, b = self._affine(self.state["moving_mean"], inv)
        a = xp.asarray(a, dy.dtype).reshape(self._bshape)
        if self.fused_activation:
            z = self._x * a + xp.asarray(b, dy.dtype).reshape(self._bshape)
            dy = self.activation.backward(dy, z, self._y)
        grads = {}
        if self.trainable:
            channel = self.axis % len(self._bshape)
            axes = tuple(i for i in range(len(self._bshape)) if i != channel)
            grads["beta"] = dy.sum(axis=axes)
            if "gamma" in self.params:
                mean = self.state["moving_mean"].reshape(self._bshape)
                xhat = (self._x - mean) * inv.reshape(self._bshape)
                grads["gamma"] = (dy * xhat).sum(axis=axes)
        self._store_grads(**grads)
        return dy * a if self.need_input_grad else None

    def backward(self, dy):
        if self._inference:
            return self._inference_backward(dy)
        dx, dgamma, dbeta = F.batch_norm_backward(
            dy,
            self._x,
            self._mean,
            self._var,
            self.params.get("gamma"),
            self.params.get("beta"),
            axis=self.axis,
            eps=self.epsilon,
            activation=self._kernel_activation,
            need_dx=self.need_input_grad,
        )
        self._store_grads(gamma=dgamma, beta=dbeta)
        return dx


class Dropout(Layer):
    """Inverted dropout: at training time zero a `rate` fraction and scale the rest by 1/(1-rate).
    Masks come from `rng`, which the training loop reseeds each epoch for repeatable runs."""

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"Dropout rate must be in [0, 1), got {rate}")
        self.rate = rate
        self.rng = np.random.default_rng(seed)

    def forward(self, x, training=False):
        if not training or self.rate == 0:
            self._mask = None
            return x
        xp = array_module(x)
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.rate
        self._mask = xp.asarray(keep, dtype=xp.float32) / (1 - self.rate)
        return x * self._mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask


class Activation(Layer):
    """Activation('relu' | 'gelu' | 'softmax' | ...) as a layer of its own."""

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.function = get_activation(activation)
        if self.function is None:
            raise ValueError("Activation needs an activation name, e.g. Activation('relu')")

    def forward(self, x, training=False):
        self._x = x
        self._y = self.function.forward(x)
        return self._y

    def backward(self, dy):
        return self.function.backward(dy, self._x, self._y)


class ReLU(Activation):
    def __init__(self, **kwargs):
        super().__init__("relu", **kwargs)


class GELU(Activation):
    def __init__(self, approximate=False, **kwargs):
        super().__init__("gelu_tanh" if approximate else "gelu", **kwargs)


class Softmax(Activation):
    def __init__(self, **kwargs):
        super().__init__("softmax", **kwargs)


class Scale(Layer):
    """Multiplies by a constant (airbench scales its logits by 1/9); no weights."""

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = float(factor)

    def forward(self, x, training=False):
        return x * np.float32(self.factor)

    def backward(self, dy):
        return dy * np.float32(self.factor)


class InputLayer(Layer):
    """Where a model input enters the graph; Input(shape) returns its symbolic output."""

    def __init__(self, shape, **kwargs):
        super().__init__(**kwargs)
        shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
        if not all(isinstance(n, (int, np.integer)) and n > 0 for n in shape):
            raise ValueError(
                f"Input shape must be positive ints per sample, e.g. (32, 32, 3), "
                f"got {shape}: fastconv builds every layer for fixed sizes"
            )
        self.built, self.output_shape = True, tuple(int(n) for n in shape)
        self.output = Node(self, [], False, None, [self.output_shape]).outputs[0]

    def forward(self, x, training=False):
        return x

    def backward(self, dy):
        return dy


def Input(shape, name=None):
    """A symbolic input of per-sample `shape` (Keras' keras.Input)."""
    return InputLayer(shape, name=name).output


def _merge_shapes(input_shape, what):
    if not (isinstance(input_shape, list) and len(input_shape) >= 2):
        raise ValueError(
            f"{what} merges a list of at least two tensors, e.g. "
            f"{what}()([a, b]); got an input of shape {input_shape}"
        )
    return [tuple(s) for s in input_shape]


class Add(Layer):
    """The sum of a list of tensors of one shape (a residual connection)."""

    def build(self, input_shape, rng):
        shapes = _merge_shapes(input_shape, "Add")
        if len(set(shapes)) != 1:
            raise ValueError(f"{self.name or 'Add'} needs inputs of one shape, got {shapes}")
        self.built, self.output_shape = True, shapes[0]
        return self.output_shape

    def forward(self, xs, training=False):
        self._count = len(xs)
        y = xs[0] + xs[1]
        for x in xs[2:]:
            y += x  # y is this layer's own array
        return y

    def backward(self, dy):
        return [dy] * self._count


class Concatenate(Layer):
    """Joins a list of tensors along `axis` (of the full batch: -1 is the channels of
    channels_last images); every other axis must agree."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis

    def build(self, input_shape, rng):
        shapes = _merge_shapes(input_shape, "Concatenate")
        rank = len(shapes[0]) + 1
        self._axis = self.axis % rank
        others = {s[: self._axis - 1] + s[self._axis :] for s in shapes}
        if self._axis == 0 or len(others) != 1 or any(len(s) + 1 != rank for s in shapes):
            raise ValueError(
                f"{self.name or 'Concatenate'}: cannot join shapes {shapes} along "
                f"axis {self.axis} (not the batch axis; all other axes must agree)"
            )
        self._sizes = [s[self._axis - 1] for s in shapes]
        out = list(shapes[0])
        out[self._axis - 1] = sum(self._sizes)
        self.built, self.output_shape = True, tuple(out)
        return self.output_shape

    def forward(self, xs, training=False):
        return array_module(xs[0]).concatenate(xs, axis=self._axis)

    def backward(self, dy):
        return array_module(dy).split(dy, np.cumsum(self._sizes)[:-1].tolist(), axis=self._axis)

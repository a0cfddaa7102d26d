"""Sequential: a stack of layers with Keras' summary / compile / fit / evaluate / predict and
weight save/load (.npz, PyTorch state_dict, Keras-style arrays)."""
from __future__ import annotations

import numpy as np

from .. import _npz, optim
from .._backend import array_module, to_numpy
from . import fit as training
from . import losses, transfer
from .layers import Activation, Layer


class Sequential:
    def __init__(self, layers=(), *, input_shape=None, name="sequential", seed=0):
        self.layers: list[Layer] = []
        self.name = name
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.seed = seed
        self.built = False
        self.loss = self.optimizer = None
        for layer in layers:
            self.add(layer)

    def add(self, layer):
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add expects a Layer, got {type(layer).__name__}")
        if not self.layers and self.input_shape is None and layer.input_shape is not None:
            self.input_shape = layer.input_shape
        self.layers.append(layer)
        self.built = False

    # -- building -------------------------------------------------------------------------
    def build(self, input_shape=None):
        """Create every weight from the per-sample input shape (e.g. (32, 32, 3))."""
        shape = tuple(input_shape or self.input_shape or ())
        if not shape:
            raise ValueError("the model does not know its input shape: pass input_shape=(H, W, C) "
                             "to Sequential or to the first layer, or call model.build((H, W, C))")
        self.input_shape = shape
        rng = np.random.default_rng(self.seed)
        counts: dict = {}
        self._pipeline = []
        for layer in self.layers:
            if layer.name is None:
                kind = _snake(type(layer).__name__)
                counts[kind] = counts.get(kind, 0) + 1
                layer.name = kind if counts[kind] == 1 else f"{kind}_{counts[kind] - 1}"
            if not layer.built:
                layer.build(shape, rng)
            shape = layer.output_shape
            self._pipeline.append(layer)
            if layer.activation is not None and not layer.fused_activation:
                act = Activation(layer.activation, name=f"{layer.name}_activation")
                act.build(shape, rng)
                self._pipeline.append(act)
        self.output_shape = shape
        self.built = True
        self.refresh_trainable()
        return self

    def refresh_trainable(self):
        """Recompute which layers need an input gradient (call after changing `trainable`):
        none before the first trainable layer, so a frozen stem costs no backward pass."""
        seen_trainable = False
        for layer in self._pipeline:
            layer.need_input_grad = seen_trainable
            seen_trainable |= layer.trainable and bool(layer.params)
        self._first_backward = next((i for i, l in enumerate(self._pipeline)
                                     if l.trainable and l.params), len(self._pipeline))

    def _ensure_built(self, x=None):
        if not self.built:
            self.build(None if x is None or self.input_shape else x.shape[1:])

    # -- running ------------------------------------------------------------------------
    def running_layers(self):
        """The layers in the order they run, with the Activation layers that build() appends
        for a layer's `activation` argument."""
        self._ensure_built()
        return list(self._pipeline)

    def ends_in_softmax(self):
        last = self._pipeline[-1]
        return isinstance(last, Activation) and last.function.name == "softmax"

    def outputs_from_logits(self, logits):
        """The model's output given its logits: the final softmax applied, if there is one."""
        return self._pipeline[-1].function.forward(logits) if self.ends_in_softmax() else logits

    def forward(self, x, training=False, logits=False):
        """Output of the model; logits=True stops before a final softmax."""
        self._ensure_built(x)
        layers = self._pipeline[:-1] if logits and self.ends_in_softmax() else self._pipeline
        for layer in layers:
            x = layer.forward(x, training)
        return x

    def backward(self, dy, from_logits=False):
        """Back-propagate dy (w.r.t. the output, or the logits); fills every layer's grads."""
        layers = self._pipeline[:-1] if from_logits and self.ends_in_softmax() else self._pipeline
        for layer in reversed(layers[self._first_backward:]):
            dy = layer.backward(dy)

    def __call__(self, x, training=False):
        return self.forward(x, training)

    def trainable_parameters(self):
        """(layer, name, value) for every weight the optimiser updates."""
        return [(l, k, v) for l in self._pipeline if l.trainable for k, v in l.params.items()]

    def to(self, device):
        """Move every weight to 'cpu' (NumPy) or 'cuda' (CuPy); inputs must then live there too."""
        self._ensure_built()
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda":
            import cupy
            move = cupy.asarray
        else:
            move = to_numpy
        for layer in self._pipeline:
            for store in (layer.params, layer.state):
                for k in store:
                    store[k] = move(store[k])
        return self

    # -- Keras-style API ----------------------------------------------------------------
    def compile(self, optimizer="adam", loss="sparse_categorical_crossentropy", metrics=None):
        """Keras' compile. The loss and accuracy are always reported, so `metrics` may name
        accuracy only."""
        if any(m not in ("accuracy", "acc") for m in metrics or ()):
            raise ValueError(f"metrics: fastconv reports the loss and accuracy; got {metrics!r}")
        self.optimizer = optim.get(optimizer)
        self.loss = losses.get(loss)
        return self

    def fit(self, x, y, batch_size=32, epochs=1, validation_data=None, **kwargs):
        if self.optimizer is None:
            self.compile()
        return training.fit(self, x, y, batch_size=batch_size, epochs=epochs,
                            validation_data=validation_data, **kwargs)

    def predict(self, x, batch_size=256, tta=None):
        return training.predict(self, x, batch_size=batch_size, tta=tta)

    def evaluate(self, x, y, batch_size=256, tta=None):
        """(loss, accuracy) on (x, y); tta='flip' averages with the mirrored images."""
        if self.loss is None:
            self.compile()
        return training.evaluate(self, x, y, batch_size=batch_size, tta=tta)

    def summary(self, print_fn=print):
        self._ensure_built()
        line = "_" * 78
        rows = [f'Model: "{self.name}"', line,
                f"{'Layer (type)':<42}{'Output Shape':<24}{'Param #':>12}", "=" * 78]
        for layer in self.layers:
            label = f"{layer.name} ({type(layer).__name__})"
            shape = str((None, *layer.output_shape))
            rows.append(f"{label:<42}{shape:<24}{layer.count_params() + layer.count_state():>12,}")
        total = sum(l.count_params() + l.count_state() for l in self.layers)
        trainable = sum(l.count_params() for l in self.layers if l.trainable)
        rows += ["=" * 78, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                 f"Non-trainable params: {total - trainable:,}", line]
        text = "\n".join(rows)
        print_fn(text)
        return text

    def count_params(self):
        self._ensure_built()
        return sum(l.count_params() + l.count_state() for l in self.layers)

    # -- weights ------------------------------------------------------------------------
    def get_weights(self):
        """{'layer/param': array} for every parameter and state array, as NumPy."""
        self._ensure_built()
        return {f"{l.name}/{k}": to_numpy(v) for l in self.layers
                for k, v in {**l.params, **l.state}.items()}

    def set_weights(self, weights):
        """Load a {'layer/param': array} mapping; every name and shape must match."""
        self._ensure_built()
        own = self.get_weights()
        missing = sorted(set(own) - set(weights))
        extra = sorted(set(weights) - set(own))
        if missing or extra:
            raise ValueError(f"weights do not match the model: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")
        for layer in self.layers:
            for store in (layer.params, layer.state):
                for k, v in store.items():
                    new = np.asarray(weights[f"{layer.name}/{k}"], dtype=np.float32)
                    if new.shape != v.shape:
                        raise ValueError(f"{layer.name}/{k}: expected shape {v.shape}, got "
                                         f"{new.shape}")
                    store[k] = array_module(v).asarray(new).copy()

    def save_weights(self, path):
        """Write every weight to an .npz file, atomically."""
        _npz.save(path, self.get_weights())

    def load_weights(self, path):
        self.set_weights(_npz.load(path, "weights"))

    def load_torch_state_dict(self, state_dict):
        """Load weights of the same architecture written by PyTorch (Conv2d, Linear,
        BatchNorm2d in the same order); see fastconv.nn.transfer."""
        self.set_weights(transfer.from_torch(self, state_dict))

    def load_keras_weights(self, arrays):
        """Load the list of arrays Keras' model.get_weights() returns for the same model."""
        self.set_weights(transfer.from_keras(self, arrays))


def _snake(name):
    out = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return out.replace("2_d", "2d")

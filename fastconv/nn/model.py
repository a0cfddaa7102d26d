"""Model (Keras' functional API: layers called on Input tensors, any DAG between inputs and
outputs) and Sequential (a stack of layers, built as a one-path graph): one implementation of
Keras' summary / compile / fit / evaluate / predict and of the weights (Keras' get_weights()
list, a keyed dict and .npz files, a PyTorch state_dict, a Keras .h5 file).

The graph: each Node (a layer called on symbolic tensors) becomes a step that reads and writes
numbered slots; a layer's non-fused `activation` argument becomes a step of its own. Steps run
in Keras' layer order (decreasing depth from the outputs, ties in the order a depth-first walk
from the outputs meets them: keras/src/ops/function.py, map_graph), which is a topological
order and the order of Keras' model.layers and model.get_weights(). Backward runs the steps in
reverse, adding up the gradients of a slot read by several steps. A slot `requires` a gradient
when a learning weight lies upstream of it; steps whose output requires none never run
backward, and a step learns no dx unless its input requires one: a frozen base costs neither
weight gradients nor a backward pass below the first trainable layer. A Model is a Layer:
called on symbolic tensors it becomes one step of another model (Keras' nested models).
"""

from __future__ import annotations

import itertools
import re

import numpy as np

from .. import _npz, optim
from .._backend import array_module, to_numpy
from . import fit as training
from . import losses, transfer
from .layers import Activation, Input, InputLayer, KerasTensor, Layer


class _Step:
    """One op of the run: reads slots `ins` (a list for a merge layer: `as_list`), writes
    `outs`; `training` None follows the model's mode."""

    def __init__(self, op, ins, outs, as_list, training):
        self.op, self.ins, self.outs, self.as_list, self.training = op, ins, outs, as_list, training
        self.runs_backward = True


def _keras_order(inputs, outputs):
    """The nodes from `inputs` to `outputs` in the order of Keras' model.layers."""
    first_seen, post_order, done = {}, [], set()
    input_ids = {id(t) for t in inputs}

    def visit(tensor):
        node = tensor.node
        if node in done:
            return
        first_seen.setdefault(node, len(first_seen))
        if isinstance(node.layer, InputLayer) and id(tensor) not in input_ids:
            raise ValueError(
                f"the outputs depend on the Input {node.layer.name or ''} "
                f"{tensor.shape}, which is not among the model's inputs"
            )
        for parent in node.inputs:
            visit(parent)
        done.add(node)
        post_order.append(node)

    for tensor in outputs:
        visit(tensor)
    depth = {}
    for node in reversed(post_order):  # every consumer of a node comes before it
        d = depth.setdefault(node, 0)
        for parent in node.inputs:
            depth[parent.node] = max(depth.get(parent.node, 0), d + 1)
    for tensor in inputs:  # an input that no output uses still heads the list
        if tensor.node not in depth:
            depth[tensor.node], first_seen[tensor.node] = 0, -1
    return sorted(depth, key=lambda node: (-depth[node], first_seen[node]))


def _as_list(value):
    """(items, True) for a list of several, (items, False) for one item or a list of one."""
    if isinstance(value, (list, tuple)):
        return list(value), len(value) > 1
    return [value], False


def _accumulate(grads, slot, g):
    grads[slot] = g if grads[slot] is None else grads[slot] + g


def _snake(name):
    """Keras' layer-name stem of a class name (keras/src/utils/naming.py, to_snake_case):
    Conv2D -> conv2d, ReLU -> re_lu, BatchNormalization -> batch_normalization."""
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


class Model(Layer):
    """Model(inputs, outputs): the layers between Input tensors and output tensors (one each,
    or lists). Several outputs come back as a list from forward / predict; fit and evaluate
    take models with one input and one output."""

    keras_type = "Functional"
    show_connections = True

    def __init__(self, inputs, outputs, *, name="functional", trainable=True):
        self._init_model(name, trainable)
        nodes = self._graph(inputs, outputs)
        self.layers = [node.layer for node in nodes]
        self._finish(nodes)

    def _init_model(self, name, trainable):
        super().__init__(name=name, trainable=trainable)
        # a model's own inputs need no gradient; the model around a nested one says otherwise
        self.need_input_grad = False
        self.loss = self.optimizer = None

    @property
    def trainable(self):
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        """As Keras: setting it sets every layer inside (which may then be set one by one)."""
        self._trainable = value
        for layer in getattr(self, "layers", ()):
            layer.trainable = value

    # -- the graph ----------------------------------------------------------------------
    def _graph(self, inputs, outputs):
        """Check inputs and outputs; returns the nodes between them in Keras' order."""
        self.inputs, self._inputs_listed = _as_list(inputs)
        self.outputs, self._outputs_listed = _as_list(outputs)
        for t in self.inputs:
            if not (isinstance(t, KerasTensor) and isinstance(t.node.layer, InputLayer)):
                raise TypeError(f"Model inputs must be tensors from Input(shape), got {t!r}")
        for t in self.outputs:
            if not isinstance(t, KerasTensor):
                raise TypeError(
                    f"Model outputs must be symbolic tensors (a layer called on an "
                    f"Input's tensor), got {type(t).__name__}"
                )
        nodes = _keras_order(self.inputs, self.outputs)
        seen = set()
        for node in nodes:
            if node.layer in seen:
                raise ValueError(
                    f"layer {node.layer.name or type(node.layer).__name__} is called "
                    f"twice in this model; fastconv runs a layer once per model "
                    f"(no shared layers): use two layers"
                )
            seen.add(node.layer)
        return nodes

    def _finish(self, nodes):
        """Name the layers and lay the nodes out as steps over numbered slots."""
        self._name_layers([node.layer for node in nodes])
        self._node_of = {node.layer: node for node in nodes}
        fresh = itertools.count()
        slot = {t: next(fresh) for t in self.inputs}
        self._steps = []
        for node in nodes:
            layer = node.layer
            if isinstance(layer, InputLayer):
                continue
            ins = [slot[t] for t in node.inputs]
            for t in node.outputs:
                slot[t] = next(fresh)
            outs = [slot[t] for t in node.outputs]
            if layer.activation is not None and not layer.fused_activation:
                mid = next(fresh)
                act = Activation(layer.activation, name=f"{layer.name}_activation")
                act.build(layer.output_shape, None)
                self._steps += [
                    _Step(layer, ins, [mid], node.as_list, node.training),
                    _Step(act, [mid], outs, False, node.training),
                ]
            else:
                self._steps.append(_Step(layer, ins, outs, node.as_list, node.training))
        self._slot_count = next(fresh)
        self._input_slots = [slot[t] for t in self.inputs]
        self._output_slots = [slot[t] for t in self.outputs]
        self._softmax = self._final_softmax()
        self.input_shape = self.inputs[0].sample_shape
        self._built_for = (
            [t.sample_shape for t in self.inputs] if self._inputs_listed else self.input_shape
        )
        shapes = self.output_shapes()
        self.output_shape = shapes if self._outputs_listed else shapes[0]
        self.built = True
        self.refresh_trainable()

    def _name_layers(self, layers):
        """Unnamed layers get Keras' names (conv2d, conv2d_1, ...), avoiding every name in
        use; names must be unique across nested models too, since they key the weights."""
        inner = [layer for m in layers if isinstance(m, Model) for layer in m.all_layers()]
        taken = {layer.name for layer in layers + inner if layer.name is not None}
        counts: dict = {}
        for layer in layers:
            if layer.name is None:
                kind = _snake(type(layer).__name__)
                n = counts.get(kind, 0)
                while (name := kind if n == 0 else f"{kind}_{n}") in taken:
                    n += 1
                counts[kind] = n + 1
                layer.name = name
                taken.add(name)
        names = [layer.name for layer in layers + inner]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"layer names must be unique in a model, nested models included "
                f"(they key its weights): {twice} appear more than once"
            )

    def _final_softmax(self):
        """The step applying a softmax to the single output, when nothing else reads it: the
        loss takes the logits before it (exact and cheaper)."""
        if len(self._output_slots) != 1:
            return None
        out = self._output_slots[0]
        producer = next((s for s in self._steps if out in s.outs), None)
        if (
            producer is not None
            and isinstance(producer.op, Activation)
            and producer.op.function.name == "softmax"
            and not any(out in s.ins for s in self._steps)
        ):
            return producer
        return None

    def output_shapes(self):
        return [t.sample_shape for t in self.outputs]

    def all_layers(self):
        """Every layer, and the layers of the models inside, in Keras' order."""
        for layer in self.layers:
            yield layer
            if isinstance(layer, Model):
                yield from layer.all_layers()

    def leaf_layers(self):
        """The layers that hold weights or run (not models), in Keras' order."""
        self._ensure_built()
        return [layer for layer in self.all_layers() if not isinstance(layer, Model)]

    def inbound_layers(self, layer):
        """The layers whose outputs `layer` reads (searching nested models too), or None when
        the layer is not in the model."""
        self._ensure_built()
        node = self._node_of.get(layer)
        if node is not None:
            return [t.node.layer for t in node.inputs]
        nested = (m.inbound_layers(layer) for m in self.layers if isinstance(m, Model))
        return next((found for found in nested if found is not None), None)

    def _ensure_built(self, x=None):
        if not self.built:
            self.build(None if x is None or self.input_shape else x.shape[1:])

    def refresh_trainable(self):
        """Which steps run backward and which compute an input gradient, from the layers'
        `trainable` flags (backward calls it, so flags may change between fits)."""
        requires = [False] * self._slot_count
        for i in self._input_slots:
            requires[i] = self.need_input_grad
        for step in self._steps:
            step.op.need_input_grad = any(requires[i] for i in step.ins)
            if isinstance(step.op, Model):
                step.op.refresh_trainable()
                learns = bool(step.op.trainable_parameters())
            else:
                learns = step.op.trainable and bool(step.op.params)
            step.runs_backward = step.op.need_input_grad or learns
            for i in step.outs:
                requires[i] = step.runs_backward
        self._requires = requires

    # -- running ------------------------------------------------------------------------
    def running_layers(self):
        """The layers in the order they run, with the Activation steps of layers' `activation`
        arguments and the layers of nested models."""
        self._ensure_built()
        ops = []
        for step in self._steps:
            ops += step.op.running_layers() if isinstance(step.op, Model) else [step.op]
        return ops

    def ends_in_softmax(self):
        self._ensure_built()
        return self._softmax is not None

    def outputs_from_logits(self, logits):
        """The model's output given its logits: the final softmax applied, if there is one."""
        return self._softmax.op.function.forward(logits) if self.ends_in_softmax() else logits

    def _plan(self, logits):
        if logits and self._softmax is not None:
            return [s for s in self._steps if s is not self._softmax], self._softmax.ins
        return self._steps, self._output_slots

    def forward(self, x, training=False, logits=False):
        """Output(s) of the model for input array(s) x; logits=True stops before a final
        softmax."""
        self._ensure_built(x)
        xs, _ = _as_list(x)
        if len(xs) != len(self.inputs):
            raise ValueError(f"{self.name} takes {len(self.inputs)} inputs, got {len(xs)}")
        values = [None] * self._slot_count
        for slot, value in zip(self._input_slots, xs):
            values[slot] = value
        steps, out_slots = self._plan(logits)
        for step in steps:
            args = [values[i] for i in step.ins]
            mode = training if step.training is None else step.training
            y = step.op.forward(args if step.as_list else args[0], mode)
            for slot, value in zip(step.outs, y if len(step.outs) > 1 else [y]):
                values[slot] = value
        outs = [values[i] for i in out_slots]
        return outs if self._outputs_listed else outs[0]

    def backward(self, dy, from_logits=False):
        """Back-propagate dy (w.r.t. the output(s), or the logits): fills every learning
        layer's grads; returns the input gradient(s) (None unless need_input_grad)."""
        self.refresh_trainable()
        steps, out_slots = self._plan(from_logits)
        grads = [None] * self._slot_count
        for slot, g in zip(out_slots, dy if self._outputs_listed else [dy]):
            if g is not None:
                _accumulate(grads, slot, g)
        for step in reversed(steps):
            g = [grads[i] for i in step.outs]
            if not step.runs_backward or all(v is None for v in g):
                continue
            for i in step.outs:
                grads[i] = None  # consumed: let it go
            dx = step.op.backward(g if len(g) > 1 else g[0])
            if not step.op.need_input_grad:
                continue
            for slot, d in zip(step.ins, dx if step.as_list else [dx]):
                if d is not None and self._requires[slot]:
                    _accumulate(grads, slot, d)
        dxs = [grads[i] for i in self._input_slots]
        return dxs if self._inputs_listed else dxs[0]

    def __call__(self, inputs, training=None):
        if isinstance(inputs, KerasTensor) or (
            isinstance(inputs, (list, tuple)) and isinstance(inputs[0], KerasTensor)
        ):
            return super().__call__(inputs, training)
        return self.forward(inputs, bool(training))

    def trainable_parameters(self):
        """(layer, name, value) for every weight the optimiser updates."""
        return [
            (layer, k, v)
            for layer in self.leaf_layers()
            if layer.trainable
            for k, v in layer.params.items()
        ]

    def count_params(self):
        return sum(layer.count_params() for layer in self.layers)

    def count_trainable_params(self):
        return sum(layer.count_trainable_params() for layer in self.layers)

    def to(self, device):
        """Move every weight to 'cpu' (NumPy) or 'cuda' (CuPy); inputs must then live there too."""
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda":
            import cupy

            move = cupy.asarray
        else:
            move = to_numpy
        for layer in self.leaf_layers():
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

    def _one_input_one_output(self, what):
        self._ensure_built()
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise ValueError(
                f"{what} takes models with one input and one output; {self.name} "
                f"has {len(self.inputs)} and {len(self.outputs)}: call "
                f"model(inputs) for the outputs"
            )

    def fit(self, x, y, batch_size=32, epochs=1, validation_data=None, **kwargs):
        self._one_input_one_output("fit")
        if self.optimizer is None:
            self.compile()
        return training.fit(
            self,
            x,
            y,
            batch_size=batch_size,
            epochs=epochs,
            validation_data=validation_data,
            **kwargs,
        )

    def predict(self, x, batch_size=256, tta=None, preprocess=None):
        """Outputs for x; `preprocess` turns a batch into the model's input (as in fit;
        default: uint8 pixels scaled to [0, 1])."""
        self._one_input_one_output("predict")
        return training.predict(self, x, batch_size=batch_size, tta=tta, preprocess=preprocess)

    def evaluate(self, x, y, batch_size=256, tta=None, preprocess=None):
        """(loss, accuracy) on (x, y); tta='flip' averages with the mirrored images."""
        self._one_input_one_output("evaluate")
        if self.loss is None:
            self.compile()
        return training.evaluate(self, x, y, batch_size=batch_size, tta=tta, preprocess=preprocess)

    def summary(self, print_fn=print):
        """Keras' table: layer (type), output shape, parameters (BN moving statistics count,
        as non-trainable), and for a functional model the inputs of each layer."""
        self._ensure_built()
        width = 110 if self.show_connections else 78
        head = f"{'Layer (type)':<42}{'Output Shape':<24}{'Param #':>12}"
        rows = [
            f'Model: "{self.name}"',
            "_" * width,
            head + ("  Connected to" if self.show_connections else ""),
            "=" * width,
        ]
        for layer in self.layers:
            label = f"{layer.name} ({getattr(layer, 'keras_type', type(layer).__name__)})"
            shape = ", ".join(str((None, *s)) for s in layer.output_shapes())
            row = f"{label:<41} {shape:<23} {layer.count_params():>12,}"
            if not self.show_connections:
                rows.append(row)
                continue
            inbound = [f"{t.node.layer.name}[0][{t.index}]" for t in self._node_of[layer].inputs]
            rows.append(f"{row}  {(inbound or ['-'])[0]}")
            rows += [" " * 80 + f"  {more}" for more in inbound[1:]]
        total, trainable = self.count_params(), self.count_trainable_params()
        rows += [
            "=" * width,
            f"Total params: {total:,}",
            f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}",
            "_" * width,
        ]
        text = "\n".join(rows)
        print_fn(text)
        return text

    # -- weights ------------------------------------------------------------------------
    def get_weights(self):
        """Keras' model.get_weights(): every weight and BN statistic as NumPy arrays in Keras'
        order and layouts (conv kernels (KH, KW, C_in, C_out), ...; see nn.transfer), copies, so
        `keras_model.set_weights(model.get_weights())` and back work."""
        arrays = []
        for layer in self.leaf_layers():
            weights = {**layer.params, **layer.state}
            arrays += [
                np.array(transfer.to_keras(layer, name, to_numpy(weights[name])))
                for name in transfer.keras_names(layer)
            ]
        return arrays

    def set_weights(self, arrays):
        """Load Keras' model.get_weights() list of the same architecture."""
        self.set_weight_dict(transfer.from_keras(self, arrays))

    def get_weight_dict(self):
        """{'layer/param': array} for every parameter and state array, fastconv's layouts:
        NumPy copies."""
        return {
            f"{layer.name}/{k}": np.array(to_numpy(v))
            for layer in self.leaf_layers()
            for k, v in {**layer.params, **layer.state}.items()
        }

    def set_weight_dict(self, weights):
        """Load a {'layer/param': array} mapping; every name and shape must match."""
        own = self.get_weight_dict()
        missing = sorted(set(own) - set(weights))
        extra = sorted(set(weights) - set(own))
        if missing or extra:
            raise ValueError(
                f"weights do not match the model: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        for layer in self.leaf_layers():
            for store in (layer.params, layer.state):
                for k, v in store.items():
                    new = np.asarray(weights[f"{layer.name}/{k}"], dtype=np.float32)
                    if new.shape != v.shape:
                        raise ValueError(
                            f"{layer.name}/{k}: expected shape {v.shape}, got {new.shape}"
                        )
                    store[k] = array_module(v).asarray(new).copy()

    def save_weights(self, path):
        """Write every weight to an .npz file (get_weight_dict's keys), atomically."""
        _npz.save(path, self.get_weight_dict())

    def load_weights(self, path):
        """Load an .npz file from save_weights, or a Keras weights file (.h5 / .weights.h5,
        matched by layer name; layers the model lacks are ignored)."""
        if str(path).endswith(".h5"):
            self.set_weight_dict(transfer.from_keras_h5(self, path))
        else:
            self.set_weight_dict(_npz.load(path, "weights"))

    def load_torch_state_dict(self, state_dict):
        """Load weights written by PyTorch: by module name when every module with weights is
        named as one of the model's layers (fastconv.nn.applications' torchvision ResNets),
        else in order (Conv2d, Linear, BatchNorm2d as the layers run); see nn.transfer."""
        self.set_weight_dict(transfer.from_torch(self, state_dict))


class Sequential(Model):
    """A stack of layers, each reading the previous one's output (Keras' Sequential), built
    as a Model whose graph is one path. Weights are drawn from `seed` when it is built."""

    keras_type = "Sequential"
    show_connections = False

    def __init__(self, layers=(), *, input_shape=None, name="sequential", seed=0, trainable=True):
        self._init_model(name, trainable)
        self.layers: list[Layer] = []
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.seed = seed
        self.built = False
        for layer in layers:
            self.add(layer)

    def add(self, layer):
        """Append a layer; an Input(shape) tensor instead sets the input shape."""
        if isinstance(layer, KerasTensor) and isinstance(layer.node.layer, InputLayer):
            self.input_shape = layer.sample_shape
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add expects a Layer, got {type(layer).__name__}")
        if not self.layers and self.input_shape is None and layer.input_shape is not None:
            self.input_shape = layer.input_shape
        self.layers.append(layer)
        self.built = False

    def build(self, input_shape=None, rng=None):
        """Create every weight from the per-sample input shape (e.g. (32, 32, 3))."""
        del rng  # a Sequential draws from its own seed, alone or inside another model
        shape = tuple(input_shape or self.input_shape or ())
        if not shape:
            raise ValueError(
                "the model does not know its input shape: pass input_shape=(H, W, C) "
                "to Sequential or to the first layer, or call model.build((H, W, C))"
            )
        rng = np.random.default_rng(self.seed)
        x = inputs = Input(shape)
        for layer in self.layers:
            x = layer.connect(x, None, rng)
        self._finish(self._graph(inputs, x))
        return self

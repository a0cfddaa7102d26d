"""Every op of the op table (`fastconv.ops.OPS`) and its backward as a PyTorch operator,
`torch.ops.fastconv.<name>` and `torch.ops.fastconv.<name>_backward`, and the functional API
over them on tensors: `fastconv.torch.conv2d(x, w, bias, stride=..., padding="same")` takes
what `fastconv.conv2d` takes, except `layout`, which is the tensors' memory format.

Each operator is registered with `torch.library.custom_op` from its `Op`: the tensor
arguments are the op's forward (or backward) arguments, the other keywords of its
`fastconv.functional` function become schema arguments of the types in `SCHEMA_TYPES`, the
results are its outputs (or gradients). All arguments are positional (the dispatcher passes
keyword-only ones more slowly), so `torch.ops.fastconv.conv2d(x, w, None, [1, 1],
[1, 1, 1, 1], [1, 1], 1)`, or by name. The kernel converts tensors to arrays without copies
(`_tensors`), calls the functional function and converts back; the fake kernel gives the
output shapes from the op table (`Op.shapes`) and the same strides, for torch.compile; the
autograd formula calls the backward operator. Operators with no derivative in fastconv (the
backward ops, batch_norm_inference) refuse inputs that require grad.

Layouts: a 4-D activation (x, y, dy, dx) is NCHW-shaped; contiguous memory runs fastconv's
NCHW kernels and channels_last memory its NHWC kernels, and the outputs come back in the
memory format of x. Weights are (C_out, C_in/groups, KH, KW) tensors as in torch.nn. For
batch norm, `axis` names a dim of the NCHW shape (default 1, torch's channel dim).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from .. import _args, ops
from . import _tensors

# How each keyword of the functional API crosses an operator schema. The Python functions
# below normalise the values (a pair for an int, explicit padding for "same"); a functional
# keyword missing here fails the import.
SCHEMA_TYPES = {
    "kernel_size": "int[2]",
    "stride": "int[2]",
    "dilation": "int[2]",
    "padding": "int[4]",  # top, bottom, left, right
    "groups": "int",
    "count_include_pad": "bool",
    "axis": "int",
    "eps": "float",
    "activation": "str?",
    "need_dx": "bool",
    "need_dbias": "bool",
    "need_dw": "bool",
}
# Defaults of the functions on tensors that differ from fastconv's: the channel axis of
# torch's NCHW shapes.
TORCH_DEFAULTS = {"axis": 1}
# Tensors in the layout of x (when they have its rank); weights and vectors never permute.
_ACTIVATIONS = frozenset({"x", "y", "dy", "dx"})


@dataclass(frozen=True)
class Spec:
    """One operator: fastconv function `function` of op `op` over `tensors` (passed to it
    positionally, then `keyword_tensors`), then the schema arguments `params` (the
    function's other keywords), returning `returns`."""

    op: ops.Op
    name: str
    function: object
    positional: tuple
    keyword_tensors: tuple
    optional: frozenset
    params: tuple
    returns: tuple
    optional_returns: frozenset
    has_layout: bool

    @property
    def tensors(self) -> tuple:
        return self.positional + self.keyword_tensors

    @property
    def backward(self) -> bool:
        return self.name.endswith("_backward")

    def schema(self) -> str:
        args = [f"Tensor{'?' if n in self.optional else ''} {n}" for n in self.tensors]
        params = [f"{SCHEMA_TYPES[n]} {n}" for n in self.params]
        returns = [f"Tensor{'?' if n in self.optional_returns else ''}" for n in self.returns]
        return f"({', '.join(args + params)}) -> ({', '.join(returns)})"


def spec_of(op: ops.Op, backward: bool) -> Spec:
    function = op.fast_backward if backward else op.fast
    signature = inspect.signature(function).parameters
    positional = op.backward_args if backward else op.forward_args
    keyword_tensors = () if backward else op.keyword_inputs
    tensors = positional + keyword_tensors
    params = tuple(n for n in signature if n not in tensors and n != "layout")
    returns = tuple(f"d{g}" for g in op.grads) if backward else op.outputs
    return Spec(
        op,
        function.__name__,
        function,
        positional,
        keyword_tensors,
        frozenset(n for n in tensors if signature[n].default is None),
        params,
        returns,
        frozenset(
            r for r in returns if f"need_{r}" in params or ("need_dw" in params and r != "dx")
        ),
        "layout" in signature,
    )


def _order_of(name, ndim, order, rank):
    """The memory order of x for an activation of x's rank (x, y, dy, dx), else None."""
    return order if name in _ACTIVATIONS and ndim == rank else None


def _fastconv_params(spec: Spec, params: dict, order, rank: int) -> dict:
    """The functional keywords of schema values: padding as ((top, bottom), (left, right)),
    the layout of the memory order, the channel axis in memory order."""
    kw = dict(params)
    if "padding" in kw:
        top, bottom, left, right = kw["padding"]
        kw["padding"] = ((top, bottom), (left, right))
    if spec.has_layout:
        kw["layout"] = "NCHW" if order is None else "NHWC"
    if "axis" in kw and order is not None:
        kw["axis"] = order.index(kw["axis"] % rank)
    return kw


def _split(spec: Spec, args) -> tuple:
    """({tensor name: tensor}, {param name: value}) of an operator's arguments."""
    k = len(spec.tensors)
    return dict(zip(spec.tensors, args[:k])), dict(zip(spec.params, args[k:]))


def _kernel(spec: Spec):
    """The CPU and CUDA implementation: tensors in, fastconv's function, tensors out."""

    def run(*args):
        named, params = _split(spec, args)
        device = _tensors.check(spec.name, named)
        x = named["x"]
        order, rank = _tensors.memory_order(x), x.dim()
        with _tensors.on_device(device):
            arrays = {
                n: None if t is None else _tensors.to_array(t, _order_of(n, t.dim(), order, rank))
                for n, t in named.items()
            }
            result = spec.function(
                *[arrays[n] for n in spec.positional],
                **{n: arrays[n] for n in spec.keyword_tensors},
                **_fastconv_params(spec, params, order, rank),
            )
            result = result if isinstance(result, tuple) else (result,)
            outputs = tuple(
                None if a is None else _tensors.to_tensor(a, _order_of(n, a.ndim, order, rank))
                for n, a in zip(spec.returns, result)
            )
        return outputs if len(outputs) > 1 else outputs[0]

    return run


def _fake(spec: Spec):
    """Outputs of the right shapes and strides, for tracing (torch.compile, opcheck)."""

    def run(*args):
        named, params = _split(spec, args)
        _tensors.check(spec.name, named)
        x = named["x"]
        order, rank = _tensors.memory_order(x), x.dim()
        if spec.backward:
            channels = named["dy"].shape[params.get("axis", 1)]
            shapes = {}
            for n in spec.returns:
                given = named.get(n[1:])
                if not params.get(f"need_{n}", True):
                    shapes[n] = None
                elif given is not None:
                    order_n = _order_of(n, given.dim(), order, rank)
                    shapes[n] = _tensors.permuted(given, order_n).shape
                else:  # dbias, or dgamma / dbeta without gamma / beta: one per channel
                    shapes[n] = (channels,)
        else:
            inputs = {
                n: None if t is None else _tensors.permuted(t, _order_of(n, t.dim(), order, rank))
                for n, t in named.items()
            }
            shapes = spec.op.shapes(
                ops.Case(spec.op, inputs, _fastconv_params(spec, params, order, rank))
            )
        outputs = tuple(
            None
            if shapes[n] is None
            else _tensors.restored(
                x.new_empty(shapes[n]), _order_of(n, len(shapes[n]), order, rank)
            )
            for n in spec.returns
        )
        return outputs if len(outputs) > 1 else outputs[0]

    return run


def _autograd(forward: Spec, backward: Spec):
    """setup_context and backward of `forward`, which call the `backward` operator. Outputs
    other than y (batch norm's mean and var) are not differentiable: fastconv's backward
    takes dy only."""
    saved = tuple(n for n in backward.tensors if n != "dy")
    backward_op = getattr(torch.ops.fastconv, backward.name).default

    def setup_context(ctx, inputs, output):
        outputs = dict(zip(forward.returns, output if isinstance(output, tuple) else (output,)))
        given, params = _split(forward, inputs)
        ctx.save_for_backward(*[given[n] if n in given else outputs[n] for n in saved])
        ctx.params = params
        ctx.mark_non_differentiable(*[outputs[n] for n in forward.returns[1:]])

    def backward_fn(ctx, dy, *_):
        needs = dict(zip(forward.tensors, ctx.needs_input_grad))
        flags = {
            f"need_{n}": needs[n[1:]]
            for n in backward.optional_returns
            if f"need_{n}" in backward.params
        }
        if "need_dw" in backward.params:  # separable: one flag for all its parameters
            flags.setdefault("need_dw", any(needs[n] for n in forward.tensors if n != "x"))
        params = {**ctx.params, **flags}
        grads = backward_op(dy, *ctx.saved_tensors, *[params[n] for n in backward.params])
        grads = dict(zip(forward.op.grads, grads if isinstance(grads, tuple) else (grads,)))
        return (
            *[grads.get(n) if needs[n] else None for n in forward.tensors],
            *[None] * len(forward.params),
        )

    return setup_context, backward_fn


def _no_derivative(spec: Spec, why: str):
    """A setup_context that refuses inputs requiring grad (it runs only when one does)."""

    def setup_context(*, inputs, **_):
        names = [n for n, t in zip(spec.tensors, inputs) if t is not None and t.requires_grad]
        raise RuntimeError(
            f"fastconv.torch.{spec.name} has no derivative ({why}), but "
            f"{', '.join(names)} requires grad; call it under torch.no_grad() "
            f"or on .detach()ed tensors"
        )

    return setup_context


def _register(spec: Spec):
    op = torch.library.custom_op(
        f"fastconv::{spec.name}", _kernel(spec), mutates_args=(), schema=spec.schema()
    )
    op.register_fake(_fake(spec))


def _unused_backward(*_):
    raise AssertionError("unreachable: setup_context refused the call")


def _register_all():
    specs = {}
    for op in ops.OPS.values():
        forward = spec_of(op, backward=False)
        _register(forward)
        specs[forward.name] = forward
        if op.backward_args is None:
            torch.library.register_autograd(
                f"fastconv::{forward.name}",
                _unused_backward,
                setup_context=_no_derivative(forward, "fastconv has no backward for it"),
            )
            continue
        backward = spec_of(op, backward=True)
        _register(backward)
        specs[backward.name] = backward
        setup_context, backward_fn = _autograd(forward, backward)
        torch.library.register_autograd(
            f"fastconv::{forward.name}", backward_fn, setup_context=setup_context
        )
        torch.library.register_autograd(
            f"fastconv::{backward.name}",
            _unused_backward,
            setup_context=_no_derivative(backward, "fastconv computes first derivatives only"),
        )
    return specs


SPECS = _register_all()


# ---------------------------------------------------------------------------------------
# The functional API on tensors


def _schema_values(spec: Spec, arguments: dict) -> dict:
    """Schema values of functional keywords: pairs as [h, w], padding as [top, bottom,
    left, right] for the input's height and width, stride None as the kernel size."""
    values = {n: arguments[n] for n in spec.params}
    kernel = None
    if "kernel_size" in values:
        kernel = _args.pair(values["kernel_size"], "kernel_size", minimum=1)
        values["kernel_size"] = list(kernel)
    if "stride" in values:
        stride = values["stride"]
        values["stride"] = list(
            kernel
            if stride is None and kernel is not None
            else _args.pair(stride, "stride", minimum=1)
        )
    if "dilation" in values:
        values["dilation"] = list(_args.pair(values["dilation"], "dilation", minimum=1))
    if "padding" in values:
        x = arguments["x"]
        if kernel is None:
            kernel = tuple(arguments.get("w", arguments.get("depthwise_w")).shape[-2:])
        # another rank: the operator reports it
        size = tuple(x.shape[2:]) if x.dim() == 4 else (1, 1)
        values["padding"] = list(
            _args.padding4(
                values["padding"], size, kernel, values["stride"], values.get("dilation", (1, 1))
            )
        )
    return values


def _function(spec: Spec):
    parameters = [
        p.replace(default=TORCH_DEFAULTS.get(p.name, p.default))
        for p in inspect.signature(spec.function).parameters.values()
        if p.name != "layout"
    ]
    signature = inspect.Signature(parameters)
    operator = getattr(torch.ops.fastconv, spec.name).default
    positional = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    names = {p.name for p in parameters}
    required = {p.name for p in parameters if p.default is p.empty}
    defaults = {p.name: p.default for p in parameters if p.default is not p.empty}

    def call(*args, **kwargs):
        # what signature.bind(...).arguments would hold, at a fraction of its cost per call
        arguments = dict(zip(positional, args))
        arguments.update(kwargs)
        if (
            len(args) > len(positional)
            or len(arguments) < len(args) + len(kwargs)
            or not required <= arguments.keys() <= names
        ):
            signature.bind(*args, **kwargs)  # raises the TypeError of a bad call
        arguments = {**defaults, **arguments}
        values = _schema_values(spec, arguments)
        return operator(*[arguments[n] for n in spec.tensors], *[values[n] for n in spec.params])

    call.__name__ = call.__qualname__ = spec.name
    call.__signature__ = signature
    call.__doc__ = (
        f"fastconv.{spec.name} on PyTorch tensors (torch.ops.fastconv.{spec.name}"
        f"{'' if spec.backward else ', differentiable'}); the layout is the memory "
        f"format of x.\n\n{inspect.getdoc(spec.function) or ''}"
    )
    return call


FUNCTIONS = {name: _function(spec) for name, spec in SPECS.items()}

"""torch.nn modules on fastconv's kernels, and `swap_modules`.

Each module subclasses its torch.nn twin and changes only `forward`: the constructor
arguments, parameter and buffer names, `state_dict` keys and `repr` are torch's, so a
checkpoint loads into either. A configuration fastconv cannot run raises ValueError in the
constructor (and `swap_modules` leaves such a module to torch): padding_mode other than
'zeros', ceil_mode, return_indices, pooling dilation, divisor_override, adaptive output
sizes other than 1, a dtype other than float32.

BatchNorm2d keeps torch's semantics: batch statistics in training mode (and whenever
track_running_stats is False), the running mean and the unbiased running variance updated
with `momentum` (a cumulative average when it is None) and `num_batches_tracked` counted;
the running statistics in eval mode. fastconv has no backward for the eval-mode formula, so
an eval-mode call whose input or affine parameters require grad runs torch's batch_norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .library import FUNCTIONS as fc


def _float32(module) -> str | None:
    wrong = [
        f"{name} is {t.dtype}"
        for name, t in [
            *module.named_parameters(recurse=False),
            *module.named_buffers(recurse=False),
        ]
        if t.is_floating_point() and t.dtype != torch.float32
    ]
    return f"fastconv computes in float32 only ({', '.join(wrong)})" if wrong else None


def _batched(run, x):
    """torch.nn's modules also take an unbatched (C, H, W) input."""
    return run(x[None])[0] if x.dim() == 3 else run(x)


class _Module:
    """The fastconv side of a swapped module: `unsupported(module)` says why fastconv
    cannot run a torch.nn module's configuration (None when it can), `fastconv_op` names the
    fastconv op that runs it."""

    fastconv_op: str

    def __init__(self, *args, **kwargs):  # torch.nn's arguments, then the check
        super().__init__(*args, **kwargs)
        why = self.unsupported(self)
        if why is not None:
            raise ValueError(
                f"fastconv.torch.nn.{type(self).__name__}: {why}; use "
                f"torch.nn.{type(self).__name__}"
            )

    @classmethod
    def unsupported(cls, module) -> str | None:
        raise NotImplementedError


def _zero_padding(padding) -> bool:
    return padding in ("valid", "same") or tuple(padding) == (0, 0)


class Conv2d(_Module, torch.nn.Conv2d):
    """torch.nn.Conv2d on fastconv: depthwise (groups == in_channels, one input channel per
    group), pointwise (1x1, stride 1, no padding, no groups) and any other convolution each
    run their own fastconv op."""

    @classmethod
    def unsupported(cls, module):
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r} (fastconv pads with zeros)"
        return _float32(module)

    @property
    def fastconv_op(self):
        if self.groups > 1 and self.groups == self.in_channels:
            return "depthwise_conv2d"
        if (
            self.kernel_size == (1, 1)
            and self.stride == (1, 1)
            and self.groups == 1
            and _zero_padding(self.padding)
        ):
            return "pointwise_conv2d"
        return "conv2d"

    def forward(self, x):
        op, w, b = self.fastconv_op, self.weight, self.bias
        if op == "pointwise_conv2d":
            return _batched(lambda x: fc[op](x, w.flatten(1), b), x)
        window = dict(stride=self.stride, padding=self.padding, dilation=self.dilation)
        if op == "conv2d":
            window["groups"] = self.groups
        return _batched(lambda x: fc[op](x, w, b, **window), x)


class MaxPool2d(_Module, torch.nn.MaxPool2d):
    fastconv_op = "max_pool2d"

    @classmethod
    def unsupported(cls, module):
        for name, value, fine in [
            ("dilation", module.dilation, 1),
            ("return_indices", module.return_indices, False),
            ("ceil_mode", module.ceil_mode, False),
        ]:
            if value not in (fine, (fine, fine)):
                return f"{name}={value!r} (fastconv's max pooling has {name}={fine!r} only)"
        return None

    def forward(self, x):
        return _batched(
            lambda x: fc["max_pool2d"](
                x, self.kernel_size, stride=self.stride, padding=self.padding
            ),
            x,
        )


class AvgPool2d(_Module, torch.nn.AvgPool2d):
    fastconv_op = "avg_pool2d"

    @classmethod
    def unsupported(cls, module):
        if module.ceil_mode:
            return "ceil_mode=True (fastconv's windows end inside the padded input)"
        if module.divisor_override is not None:
            return f"divisor_override={module.divisor_override!r}"
        return None

    def forward(self, x):
        return _batched(
            lambda x: fc["avg_pool2d"](
                x,
                self.kernel_size,
                stride=self.stride,
                padding=self.padding,
                count_include_pad=self.count_include_pad,
            ),
            x,
        )


class AdaptiveAvgPool2d(_Module, torch.nn.AdaptiveAvgPool2d):
    """Output size 1 only: fastconv's global average pooling."""

    fastconv_op = "global_avg_pool2d"

    @classmethod
    def unsupported(cls, module):
        if module.output_size not in (1, (1, 1), [1, 1]):
            return f"output_size={module.output_size!r} (fastconv pools globally: size 1)"
        return None

    def forward(self, x):
        return _batched(lambda x: fc["global_avg_pool2d"](x)[:, :, None, None], x)


class BatchNorm2d(_Module, torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d on fastconv's batch norm (see the module's docstring)."""

    fastconv_op = "batch_norm"

    @classmethod
    def unsupported(cls, module):
        return _float32(module)

    def forward(self, x):
        self._check_input_dim(x)
        if self.training or self.running_mean is None:
            return self._batch_statistics(x)
        if torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, self.weight, self.bias)
        ):
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return fc["batch_norm_inference"](
            x, self.running_mean, self.running_var, self.weight, self.bias, eps=self.eps
        )

    def _batch_statistics(self, x):
        per_channel = x.numel() // x.shape[1]
        if per_channel < 2:  # torch's check: a batch variance needs two values
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {x.size()}"
            )
        y, mean, var = fc["batch_norm"](x, self.weight, self.bias, eps=self.eps)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / self.num_batches_tracked if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(factor * mean)
                self.running_var.mul_(1 - factor).add_(
                    factor * per_channel / (per_channel - 1) * var
                )
        return y


SWAPS = {
    torch.nn.Conv2d: Conv2d,
    torch.nn.MaxPool2d: MaxPool2d,
    torch.nn.AvgPool2d: AvgPool2d,
    torch.nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
    torch.nn.BatchNorm2d: BatchNorm2d,
}


def swap_modules(model: torch.nn.Module) -> dict:
    """Switches, in place, every module of `model` (itself included) whose type is exactly
    one of torch.nn's Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d and BatchNorm2d, and
    whose configuration fastconv runs, to the fastconv module of the same name. The modules
    keep their identity, parameters, buffers and hooks (only their class changes), so an
    optimizer built before still holds the right tensors. Returns {qualified name: the
    fastconv op that now runs it}; what fastconv cannot run is left to torch."""
    swapped = {}
    for name, module in model.named_modules():
        target = SWAPS.get(type(module))
        if target is not None and target.unsupported(module) is None:
            module.__class__ = target
            swapped[name] = module.fastconv_op
    return swapped

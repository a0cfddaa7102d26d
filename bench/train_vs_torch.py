"""One training epoch of the reference CIFAR-10 network in fastconv and in PyTorch (CPU).

The PyTorch network is built layer by layer from the fastconv model, with the same initial
weights, the same optimiser (Nesterov SGD, BN-bias lr x64, weight decay, schedule), the same
batches (same augmentation and normalisation, computed by fastconv.data, one batch ahead on
a thread for both) and the same number of threads. fastconv runs inside
fastconv.array_cache(), as Sequential.fit does; neither side uses Lookahead. PyTorch runs in
NCHW and in channels_last; the faster one is compared.

    fastconv bench --train --data ../shared/datasets/cifar10-jpeg.tar.gz
    fastconv bench --train --data ... --steps 20 --repeat 3   # medians of partial epochs
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import fastconv
from fastconv import data as fcdata
from fastconv import nn as fnn
from fastconv.nn import zoo
from fastconv.recipe import Recipe


class Scale(torch.nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def _torch_layer(layer, c_in):
    """(torch module, output channels) for one fastconv layer."""
    if isinstance(layer, fnn.Conv2D):
        kh, kw = layer.kernel_size
        pad = (kh // 2, kw // 2) if layer.padding == "same" else 0
        assert layer.padding in ("same", "valid") and (layer.padding == "valid" or kh % 2 == 1)
        conv = torch.nn.Conv2d(
            c_in, layer.filters, layer.kernel_size, layer.strides, pad, bias=layer.use_bias
        )
        conv.weight.data = torch.from_numpy(layer.params["kernel"].copy())
        if layer.use_bias:
            conv.bias.data = torch.from_numpy(layer.params["bias"].copy())
        conv.requires_grad_(layer.trainable)
        return conv, layer.filters
    if isinstance(layer, fnn.MaxPooling2D):
        return torch.nn.MaxPool2d(layer.pool_size, layer.strides), c_in
    if isinstance(layer, fnn.BatchNormalization):
        bn = torch.nn.BatchNorm2d(c_in, eps=layer.epsilon, momentum=1 - layer.momentum)
        bn.weight.requires_grad_(layer.scale)
        return bn, c_in
    if isinstance(layer, fnn.Activation):
        return {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU}[layer.function.name](), c_in
    if isinstance(layer, fnn.Flatten):
        return torch.nn.Flatten(), c_in
    if isinstance(layer, fnn.Dense):
        lin = torch.nn.Linear(c_in, layer.units, bias=layer.use_bias)
        lin.weight.data = torch.from_numpy(layer.params["kernel"].T.copy())
        return lin, layer.units
    if isinstance(layer, fnn.Scale):
        return Scale(layer.factor), c_in
    raise TypeError(f"no PyTorch twin for {type(layer).__name__}")


def torch_twin(model):
    modules, c = [], model.input_shape[-1]
    for layer in model.running_layers():
        module, c = _torch_layer(layer, c)
        modules.append(module)
        if layer.fused_activation:  # e.g. BatchNormalization(activation='relu')
            modules.append(_torch_layer(fnn.Activation(layer.activation.name), c)[0])
    return torch.nn.Sequential(*modules)


def torch_optimizer(net, fc_opt):
    biases = [m.bias for m in net if isinstance(m, torch.nn.BatchNorm2d)]
    others = [p for p in net.parameters() if p.requires_grad and all(p is not b for b in biases)]
    lr, wd, mom = fc_opt.learning_rate, fc_opt.weight_decay, fc_opt.momentum
    opt = torch.optim.SGD(
        [
            dict(params=biases, lr=lr * 64, weight_decay=wd / 64),
            dict(params=others, lr=lr, weight_decay=wd),
        ],
        momentum=mom,
        nesterov=True,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, fc_opt.schedule)
    return opt, sched


def epoch_batches(x, y, args):
    rng = np.random.default_rng([args.seed, 0])
    augment = fcdata.ImageAugmenter(horizontal_flip=True, crop_padding=2)
    it = fcdata.prefetch(
        fcdata.batches(
            x,
            y,
            args.batch_size,
            rng=rng,
            augment=augment,
            preprocess=fcdata.Normalize(),
            drop_last=True,
        )
    )
    for i, batch in enumerate(it):
        if args.steps and i >= args.steps:
            return
        yield batch


def run_fastconv(model, x, y, args):
    began, losses = time.perf_counter(), []
    with fastconv.array_cache():  # as in Sequential.fit
        for xb, yb in epoch_batches(x, y, args):
            logits = model.forward(xb, training=True, logits=True)
            loss, dlogits = model.loss.value_and_grad(logits, yb)
            model.backward(dlogits, from_logits=True)
            model.optimizer.step(model)
            losses.append(loss)
    return time.perf_counter() - began, float(np.mean(losses))


def run_torch(net, x, y, args, channels_last, fc_opt):
    opt, sched = torch_optimizer(net, fc_opt)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.2)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    began, losses = time.perf_counter(), []
    for xb, yb in epoch_batches(x, y, args):
        xt = torch.from_numpy(xb).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
        loss = loss_fn(net(xt), torch.from_numpy(yb))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return time.perf_counter() - began, float(np.mean(losses))


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="fastconv bench --train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default=None)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=0, help="batches per run (0: a full epoch)")
    p.add_argument("--repeat", type=int, default=1, help="repetitions (medians are compared)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    fastconv.set_num_threads(args.threads)
    (x, y), _ = fcdata.load_cifar10(args.data)
    steps = args.steps or len(x) // args.batch_size
    print(
        f"batch {args.batch_size}, {steps} steps ({steps * args.batch_size} images), "
        f"{args.threads} threads, torch {torch.__version__}, fastconv ISA {fastconv.isa()}"
    )

    def fresh():
        model = zoo.reference_net(seed=args.seed)
        zoo.init_whitening(model, x[::10], fcdata.Normalize())  # x is sorted by class
        # plain Nesterov SGD on both sides (the PyTorch twin has no Lookahead)
        recipe = Recipe(batch_size=args.batch_size, epochs=1, lookahead=False)
        model.compile(
            optimizer=recipe.build_optimizer(steps),
            loss=fnn.SparseCategoricalCrossentropy(label_smoothing=0.2),
        )
        return model

    runs = {
        "torch NCHW": lambda m: run_torch(torch_twin(m), x, y, args, False, m.optimizer),
        "torch channels_last": lambda m: run_torch(torch_twin(m), x, y, args, True, m.optimizer),
        "fastconv NHWC": lambda m: run_fastconv(m, x, y, args),
    }
    seconds = {name: [] for name in runs}
    for rep in range(args.repeat):  # interleaved, so load from other processes hits all alike
        for name, run in runs.items():
            elapsed, loss = run(fresh())
            seconds[name].append(elapsed)
            print(
                f"[{rep + 1}/{args.repeat}] {name:20s} {elapsed:8.1f} s   mean loss {loss:.4f}",
                flush=True,
            )
    median = {name: float(np.median(t)) for name, t in seconds.items()}
    best = min(("torch NCHW", "torch channels_last"), key=median.get)
    print("median seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in median.items()))
    print(f"ratio fastconv / {best} = {median['fastconv NHWC'] / median[best]:.2f} (goal <= 0.60)")


if __name__ == "__main__":
    main()

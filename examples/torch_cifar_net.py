"""The project's reference CIFAR-10 network (fastconv.nn.zoo.reference_net, airbench-style)
written in plain PyTorch, and its training recipe (fastconv.recipe.Recipe, without
Lookahead), shared by examples/torch_swap.py and examples/train_ddp.py.

Nothing here runs on fastconv's kernels: `fastconv.torch.swap_modules(net)` does that. From
fastconv come only the data (CIFAR-10 loading, augmentation, batches), the whitening filters
of the frozen stem and the hyper-parameters.
"""

import dataclasses
import time

import numpy as np
import torch
from torch import nn

from fastconv import data as fcdata
from fastconv.nn import zoo
from fastconv.recipe import Recipe

WHITENING_SAMPLE = Recipe.WHITENING_SAMPLE


class Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def _dirac_conv(c_in, c_out):
    """A 3x3 conv whose first min(c_in, c_out) filters pass their channel through
    (airbench's dirac init; the rest keep torch's default init)."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        n = min(c_in, c_out)
        conv.weight[:n] = 0
        conv.weight[range(n), range(n), 1, 1] = 1
    return conv


def _batch_norm(width):
    """Keras momentum 0.4 is torch's 0.6; no learned scale."""
    bn = nn.BatchNorm2d(width, eps=1e-12, momentum=0.6)
    bn.weight.requires_grad_(False)
    return bn


def reference_net(widths=zoo.REFERENCE_WIDTHS, whiten_width=24, num_classes=10, seed=0):
    """Frozen 2x2 whitening conv -> ReLU -> per width [conv3x3 -> maxpool 2 -> BN -> GELU ->
    conv3x3 -> BN -> GELU] -> maxpool 3 -> bias-free Linear -> x 1/9. Call init_whitening
    before training."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, whiten_width, 2), nn.ReLU()]
    layers[0].requires_grad_(False)
    c_in = whiten_width
    for width in widths:
        layers += [
            _dirac_conv(c_in, width),
            nn.MaxPool2d(2),
            _batch_norm(width),
            nn.GELU(),
            _dirac_conv(width, width),
            _batch_norm(width),
            nn.GELU(),
        ]
        c_in = width
    layers += [
        nn.MaxPool2d(3),
        nn.Flatten(),
        nn.Linear(c_in, num_classes, bias=False),
        Scale(1 / 9),
    ]
    return nn.Sequential(*layers)


def init_whitening(net, images):
    """The stem's filters from the patch covariance of `images` (uint8 NHWC), bias zero."""
    stem = net[0]
    kernel = zoo.whitening_filters(images, fcdata.Normalize(), tuple(stem.weight.shape))
    with torch.no_grad():
        stem.weight.copy_(torch.from_numpy(kernel))
        stem.bias.zero_()


def subset(x, y, count, seed=0):
    """A seeded random subset of `count` images, in archive order (the archive is sorted by
    class, so a prefix would hold few classes)."""
    keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:count])
    return x[keep], y[keep]


def whitening_images(x_train, seed=0):
    """The training images whose patches set the whitening filters (as `fastconv train`)."""
    pick = np.random.default_rng(seed).choice(
        len(x_train), min(WHITENING_SAMPLE, len(x_train)), replace=False
    )
    return x_train[np.sort(pick)]


def optimizer(net, recipe: Recipe, steps: int):
    """(Nesterov SGD, its LambdaLR schedule) of the recipe: BN biases at bn_bias_lr_scale x
    the learning rate (and weight decay / that factor), warm-up then linear decay."""
    fc_opt = dataclasses.replace(recipe, lookahead=False).build_optimizer(steps)
    scale = recipe.bn_bias_lr_scale
    biases = [m.bias for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    others = [p for p in net.parameters() if p.requires_grad and all(p is not b for b in biases)]
    lr, wd = fc_opt.learning_rate, fc_opt.weight_decay
    opt = torch.optim.SGD(
        [
            dict(params=biases, lr=lr * scale, weight_decay=wd / scale),
            dict(params=others, lr=lr, weight_decay=wd),
        ],
        momentum=fc_opt.momentum,
        nesterov=fc_opt.momentum > 0,
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, fc_opt.schedule)


def nchw(batch):
    """An NHWC float32 batch as an NCHW-shaped tensor in channels_last memory (no copy):
    fastconv runs its NHWC kernels on it, PyTorch its channels_last ones."""
    return torch.from_numpy(batch).permute(0, 3, 1, 2)


def train_batches(x, y, recipe: Recipe, epoch: int, rank=0, world=1):
    """This epoch's augmented training batches (seeded, as `fastconv train` draws them);
    with world > 1, rank's equal share of each batch."""
    rng = np.random.default_rng([recipe.seed, epoch])
    batches = fcdata.batches(
        x,
        y,
        recipe.batch_size,
        rng=rng,
        augment=recipe.augmenter(),
        preprocess=fcdata.Normalize(),
        drop_last=True,
        epoch=epoch,
    )
    for xb, yb in fcdata.prefetch(batches):
        share = len(xb) // world
        part = slice(rank * share, (rank + 1) * share)
        yield nchw(xb[part]), torch.from_numpy(yb[part])


def train_step(net, opt, schedule, xb, yb, loss_fn):
    """One optimiser step on a batch: (loss, correct predictions)."""
    logits = net(xb)
    loss = loss_fn(logits, yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    schedule.step()
    return loss.item(), int((logits.argmax(1) == yb).sum())


def train_epoch(net, opt, schedule, batches, loss_fn):
    """One pass over `batches`: (seconds, mean loss, training accuracy)."""
    net.train()
    began, losses, correct, seen = time.perf_counter(), [], 0, 0
    for xb, yb in batches:
        loss, right = train_step(net, opt, schedule, xb, yb, loss_fn)
        losses.append(loss)
        correct += right
        seen += len(yb)
    return time.perf_counter() - began, float(np.mean(losses)), correct / seen


@torch.no_grad()
def accuracy(net, x, y, batch_size=1000):
    net.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        xb = nchw(fcdata.Normalize()(x[start : start + batch_size]))
        correct += int((net(xb).argmax(1) == torch.from_numpy(y[start : start + batch_size])).sum())
    return correct / len(x)

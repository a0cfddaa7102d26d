"""The training recipe in one place: every hyper-parameter of a CIFAR-10 run in one dataclass
(as airbench keeps one `hyp` dict), and the run itself. `fastconv train` fills a Recipe from
its flags; Python code can build one and call `train(recipe, ...)`.

The default is airbench's recipe on the reference network (fastconv.nn.zoo.reference_net):
a frozen whitening stem, identity-initialised convs, BN biases learning 64x faster, label
smoothing 0.2, Nesterov SGD with a warm-up / linear-decay schedule and airbench's weight
decay, Lookahead every 5 steps, alternating flips + 2-pixel translation, multi-crop
test-time augmentation. Measured runs: bench/results/train.md.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import data as fcdata
from . import optim
from .nn import SparseCategoricalCrossentropy, zoo


def _flag(default, help, **argparse):
    """A recipe field with its command-line help (and choices / type for argparse)."""
    return field(default=default, metadata=dict(help=help, **argparse))


@dataclass
class Recipe:
    model: str = _flag(
        "reference",
        "network: the reference net or the seed tutorial's",
        choices=("reference", "tutorial", "tutorial_deeper"),
    )
    widths: tuple = _flag(
        zoo.REFERENCE_WIDTHS, "channels of the reference net's three blocks", kind="widths"
    )
    activation: str = _flag(
        "gelu", "the reference net's block activation", choices=("gelu", "relu")
    )
    whiten_width: int = _flag(24, "filters of the frozen 2x2 whitening stem")
    epochs: int = _flag(12, "training epochs", kind="positive")
    batch_size: int = _flag(512, "images per step", kind="positive")
    optimizer: str = _flag("sgd", "optimiser", choices=("sgd", "adam"))
    lr: float | None = _flag(
        None, "peak learning rate (default 0.75 x batch/512 for sgd, 0.002 for adam)", kind="float"
    )
    momentum: float = _flag(0.85, "SGD momentum (Nesterov when > 0)")
    weight_decay: float | None = _flag(
        None,
        "L2 coefficient added to the gradient (default "
        "1e-3 x batch/512 / lr: airbench's decay per step)",
        kind="float",
    )
    warmup: float = _flag(0.23, "warm-up fraction of the steps")
    lr_start: float = _flag(0.2, "learning-rate factor at the first step of the warm-up")
    label_smoothing: float = _flag(0.2, "label smoothing of the cross-entropy")
    bn_bias_lr_scale: float = _flag(64.0, "learning-rate factor of the BN biases")
    lookahead: bool = _flag(True, "Lookahead every 5 steps with airbench's averaging schedule")
    translate: int = _flag(2, "random translation, pixels (reflected border)")
    flip: str = _flag(
        "alternate",
        "horizontal flips: at random, or each image every other epoch (airbench)",
        choices=("random", "alternate"),
    )
    tta: str = _flag(
        "multicrop",
        "test-time augmentation of the final evaluation",
        choices=("none", "flip", "multicrop"),
    )
    eval_every: int = _flag(2, "test accuracy after every N-th epoch and the last", kind="positive")
    train_subset: int | None = _flag(
        None, "train on N images (a seeded random subset)", kind="positive"
    )
    seed: int = _flag(0, "seed of the initialisation, the batches and the augmentation")

    LOOKAHEAD_EVERY = 5
    WHITENING_SAMPLE = 5000  # images whose 2x2 patches set the whitening filters

    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.002 if self.optimizer == "adam" else 0.75 * self.batch_size / 512

    def build_model(self):
        if self.model == "reference":
            return zoo.reference_net(
                widths=self.widths,
                whiten_width=self.whiten_width,
                activation=self.activation,
                bn_bias_lr_scale=self.bn_bias_lr_scale,
                seed=self.seed,
            )
        return zoo.tutorial_net(deeper=self.model == "tutorial_deeper", seed=self.seed)

    def build_optimizer(self, steps: int):
        schedule = optim.OneCycle(steps, warmup=self.warmup, start=self.lr_start, end=0.0)
        lr = self.peak_lr()
        if self.optimizer == "adam":
            opt = optim.Adam(
                lr, weight_decay=self.weight_decay or 0.0, decoupled=True, schedule=schedule
            )
        else:
            wd = (
                self.weight_decay
                if self.weight_decay is not None
                else 1e-3 * self.batch_size / 512 / lr
            )
            opt = optim.SGD(
                lr,
                momentum=self.momentum,
                nesterov=self.momentum > 0,
                weight_decay=wd,
                schedule=schedule,
            )
        if not self.lookahead:
            return opt
        return optim.Lookahead(
            opt, k=self.LOOKAHEAD_EVERY, alpha=optim.airbench_alpha(steps), include_state=True
        )

    def augmenter(self):
        return fcdata.ImageAugmenter(
            horizontal_flip=True if self.flip == "random" else "alternate",
            crop_padding=self.translate,
            fill_mode="reflect",
            flip_seed=self.seed,
        )


def _subset(x, y, count, seed):
    """A seeded random subset in archive order (the archive is sorted by class)."""
    keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:count])
    return x[keep], y[keep]


def _to_device(device, model, preprocess):
    """The preprocessing that moves batches to `device` (the model moved there too)."""
    if device == "cpu":
        return preprocess
    import cupy

    model.to("cuda")
    return lambda batch: cupy.asarray(preprocess(batch))


def train(
    recipe: Recipe,
    data=None,
    *,
    output="runs/train",
    device="cpu",
    resume=False,
    verbose=True,
    print_fn=print,
):
    """Train `recipe` on CIFAR-10 (`data`: an archive path, or None for the cache / a
    download); writes checkpoint.npz after every epoch, and model.npz, metrics.csv,
    metrics.json and curves.png at the end into `output`. Returns the history."""
    (x_train, y_train), (x_test, y_test) = fcdata.load_cifar10(data)
    if recipe.train_subset:
        x_train, y_train = _subset(x_train, y_train, recipe.train_subset, recipe.seed)
    model = recipe.build_model()
    preprocess = fcdata.Normalize()
    if recipe.model == "reference":
        sample = np.random.default_rng(recipe.seed).choice(
            len(x_train), min(Recipe.WHITENING_SAMPLE, len(x_train)), replace=False
        )
        zoo.init_whitening(model, x_train[np.sort(sample)], preprocess)
    train_preprocess = _to_device(device, model, preprocess)
    steps = recipe.epochs * (len(x_train) // recipe.batch_size)
    model.compile(
        optimizer=recipe.build_optimizer(steps),
        loss=SparseCategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
    )
    os.makedirs(output, exist_ok=True)
    print_fn(
        f"model {recipe.model}: {model.count_params():,} parameters; {len(x_train)} "
        f"training / {len(x_test)} test images; batch {recipe.batch_size}; "
        f"{recipe.epochs} epochs; device {device}"
    )
    began = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        batch_size=recipe.batch_size,
        epochs=recipe.epochs,
        validation_data=(x_test, y_test),
        validation_freq=recipe.eval_every,
        seed=recipe.seed,
        augment=recipe.augmenter(),
        preprocess=train_preprocess,
        tta=None if recipe.tta == "none" else recipe.tta,
        checkpoint=os.path.join(output, "checkpoint.npz"),
        resume=resume,
        drop_last=True,
        verbose=verbose,
        output_dir=output,
        print_fn=print_fn,
    )
    model.save_weights(os.path.join(output, "model.npz"))
    print_fn(
        f"final test accuracy {history[-1]['test_acc']:.4f} (tta={recipe.tta}); this run "
        f"{time.perf_counter() - began:.0f} s; wrote {output}/"
    )
    return history

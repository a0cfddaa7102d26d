"""Train a CNN on CIFAR-10 with fastconv's kernels:  python -m fastconv.train --data PATH

Default: the reference network (fastconv.nn.zoo.reference_net) with an airbench-style recipe:
frozen whitening stem, identity init, BN-bias lr x64, label smoothing 0.2, Nesterov SGD with a
warm-up / linear-decay schedule, alternating flip + 2-pixel translate, multi-crop test-time
augmentation.
Writes the epoch table to stdout and checkpoint.npz, model.npz, metrics.csv, metrics.json and
curves.png to --output; --resume continues from checkpoint.npz.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from . import data as fcdata
from . import optim
from .nn import SparseCategoricalCrossentropy, TrainingDiverged, zoo

MODELS = {"reference": lambda args: zoo.reference_net(widths=args.widths,
                                                     activation=args.activation, seed=args.seed),
          "tutorial": lambda args: zoo.tutorial_net(seed=args.seed),
          "tutorial_deeper": lambda args: zoo.tutorial_net(deeper=True, seed=args.seed)}


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


def _widths(text):
    try:
        widths = tuple(_positive_int(w) for w in text.split(","))
    except argparse.ArgumentTypeError:
        widths = ()
    if len(widths) != 3:
        raise argparse.ArgumentTypeError(f"expected three positive ints like 64,128,256, got {text!r}")
    return widths


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastconv.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="cifar10-jpeg.tar.gz, cifar-10-python.tar.gz or an unpacked "
                   "folder; default: the cache, else download the official archive")
    p.add_argument("--model", choices=sorted(MODELS), default="reference")
    p.add_argument("--widths", type=_widths, default=zoo.REFERENCE_WIDTHS,
                   help="channels of the reference network's three blocks")
    p.add_argument("--activation", choices=["gelu", "relu"], default="gelu",
                   help="the reference network's block activation")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default 0.75 for sgd, 0.002 for adam)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--momentum", type=float, default=0.85)
    p.add_argument("--weight-decay", type=float, default=None,
                   help="L2 coefficient added to the gradient (default: 1e-3 * batch/512 / lr)")
    p.add_argument("--warmup", type=float, default=0.23, help="warm-up fraction of the steps")
    p.add_argument("--label-smoothing", type=float, default=0.2)
    p.add_argument("--lookahead", action=argparse.BooleanOptionalAction, default=True,
                   help="Lookahead every 5 steps with airbench's averaging schedule")
    p.add_argument("--tta", choices=["none", "flip", "multicrop"], default="multicrop")
    p.add_argument("--eval-every", type=_positive_int, default=2, metavar="N",
                   help="test accuracy after every N-th epoch and the last (each costs about "
                        "a tenth of an epoch here)")
    p.add_argument("--translate", type=int, default=2, help="random translate, pixels")
    p.add_argument("--flip", choices=["random", "alternate"], default="alternate",
                   help="horizontal flips: at random, or each image every other epoch (airbench)")
    p.add_argument("--train-subset", type=int, default=None, help="use the first N training images")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the kernels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="runs/train", help="folder for checkpoint and metrics")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.npz")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def make_optimizer(args, steps):
    schedule = optim.OneCycle(steps, warmup=args.warmup, start=0.2, end=0.0)
    if args.optimizer == "adam":
        opt = optim.Adam(args.lr or 0.002, weight_decay=args.weight_decay or 0.0,
                         decoupled=True, schedule=schedule)
    else:
        lr = args.lr or 0.75 * args.batch_size / 512
        # weight shrink per step lr * wd = 1e-3 at batch 512, airbench's value: on the
        # 64/128/256 net (which overfits) 89.64 % against 89.44 % with half of it, one run
        # each (bench/results/train.md)
        wd = args.weight_decay if args.weight_decay is not None else 1e-3 * args.batch_size / 512 / lr
        opt = optim.SGD(lr, momentum=args.momentum, nesterov=args.momentum > 0,
                        weight_decay=wd, schedule=schedule)
    if not args.lookahead:
        return opt
    return optim.Lookahead(opt, k=5, alpha=optim.airbench_alpha(steps), include_state=True)


def _device_setup(args, model, preprocess):
    """Threads for the CPU kernels, or the model and the batches moved to the GPU; returns
    the preprocessing to train with."""
    if args.device == "cuda":
        try:
            import cupy  # noqa: F401
        except ImportError:
            sys.exit("--device cuda needs CuPy and a CUDA GPU: pip install 'fastconv[gpu]', "
                     "or use --device cpu")
        model.to("cuda")
        return lambda batch: cupy.asarray(preprocess(batch))
    if args.threads:
        import fastconv
        fastconv.set_num_threads(args.threads)
    return preprocess


def _single_threaded_blas():
    """NumPy's BLAS serves only the small Dense layer here, but its idle worker threads spin
    for a while after every call and take cores from the convolution kernels."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: training works without it, a little slower
        return None
    return threadpool_limits(limits=1, user_api="blas")


def main(argv=None):
    args = parse_args(argv)
    _blas_limit = _single_threaded_blas()  # noqa: F841 - the limit lasts while it is referenced
    (x_train, y_train), (x_test, y_test) = fcdata.load_cifar10(args.data)
    if args.train_subset:
        # the archive is sorted by class: take a seeded random subset, not the first N
        keep = np.sort(np.random.default_rng(args.seed).permutation(len(x_train))[:args.train_subset])
        x_train, y_train = x_train[keep], y_train[keep]
    model = MODELS[args.model](args)
    preprocess = fcdata.Normalize()
    if args.model == "reference":
        sample = np.random.default_rng(args.seed).choice(len(x_train), min(5000, len(x_train)),
                                                         replace=False)
        zoo.init_whitening(model, x_train[np.sort(sample)], preprocess)
    train_preprocess = _device_setup(args, model, preprocess)
    steps = args.epochs * (len(x_train) // args.batch_size)
    model.compile(optimizer=make_optimizer(args, steps),
                  loss=SparseCategoricalCrossentropy(label_smoothing=args.label_smoothing))
    augment = fcdata.ImageAugmenter(horizontal_flip=True if args.flip == "random" else "alternate",
                                    crop_padding=args.translate, fill_mode="reflect",
                                    flip_seed=args.seed)
    os.makedirs(args.output, exist_ok=True)
    print(f"model {args.model}: {model.count_params():,} parameters; {len(x_train)} training / "
          f"{len(x_test)} test images; batch {args.batch_size}; {args.epochs} epochs; "
          f"device {args.device}")
    began = time.perf_counter()
    try:
        history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                            validation_data=(x_test, y_test), validation_freq=args.eval_every,
                            seed=args.seed, augment=augment,
                            preprocess=train_preprocess, tta=None if args.tta == "none" else args.tta,
                            checkpoint=os.path.join(args.output, "checkpoint.npz"),
                            resume=args.resume, drop_last=True, verbose=not args.quiet,
                            output_dir=args.output)
    except TrainingDiverged as e:
        sys.exit(f"stopped: {e}")
    model.save_weights(os.path.join(args.output, "model.npz"))
    final = history[-1]
    print(f"final test accuracy {final['test_acc']:.4f} (tta={args.tta}); this run "
          f"{time.perf_counter() - began:.0f} s; wrote {args.output}/")
    return history


if __name__ == "__main__":
    main()

"""Transfer learning as the CNN course does it, on CIFAR-10 with fastconv:

    base = applications.ResNet50(include_top=False, weights=WEIGHTS, input_shape=(32, 32, 3))
    base.trainable = False                      # 1. frozen: only the new head learns
    inputs = nn.Input((32, 32, 3))
    x = base(inputs, training=False)            # its BN stays in inference mode, always
    x = nn.GlobalAveragePooling2D()(x)
    outputs = nn.Dense(10, activation="softmax")(x)
    model = nn.Model(inputs, outputs)
    model.compile(optimizer=optim.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(...)
    base.trainable = True                       # 2. fine-tune the top block only,
    for layer in base.layers:                   #    at a 10x lower learning rate
        layer.trainable = layer.name.startswith(TOP_BLOCK)
    model.compile(optimizer=optim.Adam(1e-4), ...)
    model.fit(...)

Weights: --weights PATH (a Keras ResNet50 .h5 file, e.g. keras.applications'
resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5, or a torchvision state_dict .pth for
either model). Without it the base is randomly initialised: its frozen features are random
projections and the accuracies show the mechanics, not what ImageNet features give.

Image size: 32x32, as CIFAR-10 comes (the ResNet's last block then sees 1x1 maps).
ImageNet features transfer better to images upsampled towards 224x224 (--upsample 7), but
every factor k costs k^2 the compute: on a 2-core CPU ResNet-50 at 224x224 runs at about
ten images a second, so the default stays at 32x32 and --upsample is there for machines that
can afford it (or a GPU: --device cuda).

Run:  python examples/transfer_learning.py --data ../shared/datasets/cifar10-jpeg.tar.gz \\
          --model resnet18 --subset 5000 --epochs 3 --fine-tune-epochs 2
"""

import argparse
import time

import numpy as np

from fastconv import data, nn, optim
from fastconv.nn import applications

BUILDERS = {"resnet18": applications.ResNet18, "resnet50": applications.ResNet50}


def parse(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=None, help="CIFAR-10 archive (default: cache or download)")
    p.add_argument("--model", choices=sorted(BUILDERS), default="resnet18")
    p.add_argument(
        "--weights",
        default=None,
        help="pretrained weights: Keras .h5 (resnet50) or torchvision .pth",
    )
    p.add_argument("--subset", type=int, default=5000, help="training images (seeded subset)")
    p.add_argument("--test-subset", type=int, default=2000, help="test images (seeded subset)")
    p.add_argument("--upsample", type=int, default=1, help="nearest-neighbour factor on 32x32")
    p.add_argument("--epochs", type=int, default=3, help="epochs with the base frozen")
    p.add_argument("--fine-tune-epochs", type=int, default=2, help="epochs with the top block")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam, head training")
    p.add_argument("--fine-tune-lr", type=float, default=1e-4, help="Adam, fine-tuning")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def subset(x, y, count, seed):
    keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:count])
    return x[keep], y[keep]


def preprocessing(style, factor, device):
    """uint8 batches -> the float input the weights expect, upsampled, on the device."""

    def preprocess(batch):
        if factor > 1:
            batch = batch.repeat(factor, axis=1).repeat(factor, axis=2)
        x = applications.preprocess_input(batch, style)
        if device == "cuda":
            import cupy

            return cupy.asarray(x)
        return x

    return preprocess


def build(args, classes):
    size = 32 * args.upsample
    base = BUILDERS[args.model](
        include_top=False, weights=args.weights, input_shape=(size, size, 3)
    )
    base.trainable = False
    inputs = nn.Input((size, size, 3))
    x = base(inputs, training=False)
    x = nn.GlobalAveragePooling2D(name="head_pool")(x)
    outputs = nn.Dense(classes, activation="softmax", name="head")(x)
    return base, nn.Model(inputs, outputs, name=f"{args.model}_transfer")


def set_bn_statistics(base, batch):
    """Random weights come without moving statistics (pretrained ones bring ImageNet's): set
    them from one training batch, so the frozen features are normalised as they would be."""
    norms = [layer for layer in base.leaf_layers() if isinstance(layer, nn.BatchNormalization)]
    momenta = [bn.momentum for bn in norms]
    base.trainable = True  # a frozen BN would run in inference mode and learn nothing
    for bn in norms:
        bn.momentum = 0.0  # moving statistics := this batch's
    base.forward(batch, training=True)
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
    base.trainable = False


def top_block(base):
    """Name prefix of the base's last residual block (conv5_block3_ or layer4.1.)."""
    last_add = next(layer for layer in reversed(base.layers) if isinstance(layer, nn.Add))
    return last_add.name[: -len("add")]


def prepare(args, print_fn=print):
    """The seeded data subsets, the model (its base frozen) and the preprocessing."""
    (x_train, y_train), (x_test, y_test) = data.load_cifar10(args.data)
    x_train, y_train = subset(x_train, y_train, args.subset, args.seed)
    x_test, y_test = subset(x_test, y_test, args.test_subset, args.seed + 1)
    nn.set_random_seed(args.seed)
    base, model = build(args, classes=10)
    if args.device == "cuda":
        model.to("cuda")
    preprocess = preprocessing(base.style, args.upsample, args.device)
    if args.weights is None:
        print_fn(
            "note: no --weights given: the base is randomly initialised (fastconv downloads "
            "nothing), so its frozen features are random (BN statistics from 256 training "
            "images); pass a Keras .h5 or torchvision .pth file for real transfer learning"
        )
        set_bn_statistics(base, preprocess(x_train[:256]))
    return (x_train, y_train), (x_test, y_test), base, model, preprocess


def main(argv=None, print_fn=print):
    args = parse(argv)
    (x_train, y_train), (x_test, y_test), base, model, preprocess = prepare(args, print_fn)
    fit = dict(
        batch_size=args.batch_size,
        seed=args.seed,
        preprocess=preprocess,
        augment=data.ImageAugmenter(horizontal_flip=True, crop_padding=2),
        verbose=not args.quiet,
        print_fn=print_fn,
    )
    print_fn(
        f"{args.model} ({base.style} layout), {len(x_train)} training / {len(x_test)} test "
        f"images at {32 * args.upsample}x{32 * args.upsample}; "
        f"{model.count_trainable_params():,} of {model.count_params():,} weights train"
    )
    results = {}
    phases = [
        ("frozen base", args.epochs, args.lr),
        ("fine-tuned top block", args.fine_tune_epochs, args.fine_tune_lr),
    ]
    for phase, epochs, lr in phases:
        if phase.startswith("fine"):
            prefix = top_block(base)
            base.trainable = True
            for layer in base.layers:
                layer.trainable = layer.name.startswith(prefix)
        model.compile(
            optimizer=optim.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        began = time.perf_counter()
        print_fn(
            f"== {phase}: {epochs} epochs, Adam lr {lr:g}, "
            f"{model.count_trainable_params():,} trainable weights"
        )
        model.fit(x_train, y_train, epochs=epochs, **fit)
        _, accuracy = model.evaluate(x_test, y_test, batch_size=256, preprocess=preprocess)
        seconds = time.perf_counter() - began
        results[phase] = dict(test_accuracy=accuracy, seconds=seconds)
        print_fn(f"{phase}: test accuracy {accuracy:.4f} ({seconds:.0f} s)")
    return results, base, model


if __name__ == "__main__":
    main()

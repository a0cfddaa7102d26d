"""A plain PyTorch CIFAR-10 CNN (the reference network, examples/torch_cifar_net.py) trained
twice from the same seed on the same batches: once on PyTorch's kernels and once switched to
fastconv's by one line, `fastconv.torch.swap_modules(net)`. The two runs alternate step by
step (load from other processes hits both alike); it prints the training time per epoch side
by side and the accuracies, and writes them as markdown with --out.

    python examples/torch_swap.py --data ../shared/datasets/cifar10-jpeg.tar.gz --epochs 3

Both runs feed NCHW-shaped batches in channels_last memory (the loader's NHWC arrays, not
copied): PyTorch runs its channels_last kernels, fastconv its NHWC ones.
"""

import argparse
import copy
import os
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

import fastconv
import fastconv.torch as ft
from fastconv import data as fcdata
from fastconv.bench.measure import cpu_description, git_revision
from fastconv.recipe import Recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_cifar_net as net_lib  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=None, help="CIFAR-10 archive (default: the cache)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    p.add_argument(
        "--train-subset",
        type=int,
        default=None,
        help="train on N images (a seeded random subset; default: all 50,000)",
    )
    p.add_argument("--threads", type=int, default=2, help="threads for both (2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the results as markdown here")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    fastconv.set_num_threads(args.threads)
    (x_train, y_train), (x_test, y_test) = fcdata.load_cifar10(args.data)
    if args.train_subset:
        x_train, y_train = net_lib.subset(x_train, y_train, args.train_subset, args.seed)
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, lookahead=False)
    steps = args.epochs * (len(x_train) // args.batch_size)
    images = net_lib.whitening_images(x_train, args.seed)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    runs = {
        name: dict(net=net_lib.reference_net(seed=args.seed), rows=[])
        for name in ("PyTorch", "fastconv")
    }
    swapped = ft.swap_modules(runs["fastconv"]["net"])  # the one line
    for run in runs.values():
        net_lib.init_whitening(run["net"], images)
        run["steps"] = net_lib.optimizer(run["net"], recipe, steps)
    print(
        f"{len(x_train)} training images, batch {args.batch_size}, {args.epochs} epochs, "
        f"{args.threads} threads; swapped to fastconv: {dict(Counter(swapped.values()))}"
    )
    warm_up(runs, next(net_lib.train_batches(x_train, y_train, recipe, 0)), loss_fn)
    load_start = os.getloadavg()[0]
    for epoch in range(args.epochs):
        for run in runs.values():
            run["net"].train()
            run["epoch"] = dict(seconds=0.0, losses=[], correct=0)
        batches = net_lib.train_batches(x_train, y_train, recipe, epoch)
        for xb, yb in batches:  # the same batch for both, one after the other
            for run in runs.values():
                began = time.perf_counter()
                loss, correct = net_lib.train_step(run["net"], *run["steps"], xb, yb, loss_fn)
                run["epoch"]["seconds"] += time.perf_counter() - began
                run["epoch"]["losses"].append(loss)
                run["epoch"]["correct"] += correct
        for name, run in runs.items():
            e = run["epoch"]
            row = (
                e["seconds"],
                float(np.mean(e["losses"])),
                e["correct"] / (len(e["losses"]) * args.batch_size),
                net_lib.accuracy(run["net"], x_test, y_test),
            )
            run["rows"].append(row)
            print(
                f"epoch {epoch + 1} {name:8s} {row[0]:7.1f} s  train loss {row[1]:.4f}  "
                f"train acc {row[2]:.4f}  test acc {row[3]:.4f}",
                flush=True,
            )
    text = report(args, runs, swapped, len(x_train), (load_start, os.getloadavg()[0]))
    print("\n" + text)
    if args.out is not None:
        args.out.write_text(text)
        print(f"wrote {args.out}")


def warm_up(runs, batch, loss_fn):
    """One forward and backward of a copy of each network, untimed: PyTorch's oneDNN builds
    its kernels for each shape on first use, which would land in the first epoch."""
    x, y = batch
    for run in runs.values():
        loss_fn(copy.deepcopy(run["net"])(x), y).backward()


def report(args, runs, swapped, images, loads) -> str:
    torch_rows, fast_rows = runs["PyTorch"]["rows"], runs["fastconv"]["rows"]
    command = "python examples/torch_swap.py " + " ".join(sys.argv[1:])
    lines = [
        "# A PyTorch CNN on PyTorch's kernels and swapped to fastconv's",
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {cpu_description()}; fastconv kernels: {fastconv.isa()} "
        f"({fastconv._cpu.isa_reason()}); {args.threads} threads for PyTorch and fastconv",
        f"- Versions: PyTorch {torch.__version__}, fastconv {fastconv.__version__} (git "
        f"{git_revision(REPO)}), NumPy {np.__version__}",
        f"- Network: examples/torch_cifar_net.py (the reference network in torch.nn); "
        f"`fastconv.torch.swap_modules` switched {len(swapped)} modules: "
        + ", ".join(f"{n} {op}" for op, n in sorted(Counter(swapped.values()).items()))
        + "; ReLU, GELU, Flatten, Linear and the loss stay PyTorch's",
        f"- Data: CIFAR-10, {images} training images"
        f"{' (a seeded random subset)' if args.train_subset else ''}, the 10,000 test images; "
        f"the recipe of `fastconv train` without Lookahead and test-time augmentation, "
        f"batch {args.batch_size}, {args.epochs} epochs, seed {args.seed}, the same batches "
        f"for both; channels_last memory",
        f"- Timing: training seconds per epoch (the steps alone: no data preparation, no test "
        f"pass; one untimed forward and backward of a copy of each network first), the two "
        f"runs alternating step by step on the same batches; load average (1 min) "
        f"{loads[0]:.2f} at the start, {loads[1]:.2f} at the end on {os.cpu_count()} logical "
        f"CPUs (other processes share the cores)",
        "",
        "| epoch | PyTorch s | fastconv s | PyTorch / fastconv | PyTorch train loss, acc "
        "| fastconv train loss, acc | PyTorch test acc | fastconv test acc |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for epoch, (t, f) in enumerate(zip(torch_rows, fast_rows), 1):
        lines.append(
            f"| {epoch} | {t[0]:.1f} | {f[0]:.1f} | {t[0] / f[0]:.2f}x | {t[1]:.4f}, "
            f"{t[2]:.4f} | {f[1]:.4f}, {f[2]:.4f} | {t[3]:.4f} | {f[3]:.4f} |"
        )
    total_t, total_f = sum(r[0] for r in torch_rows), sum(r[0] for r in fast_rows)
    lines += [
        "",
        f"Total training time: PyTorch {total_t:.0f} s, fastconv {total_f:.0f} s "
        f"({total_t / total_f:.2f}x). Final test accuracy: PyTorch "
        f"{torch_rows[-1][3]:.4f}, fastconv {fast_rows[-1][3]:.4f} (difference "
        f"{100 * (fast_rows[-1][3] - torch_rows[-1][3]):+.2f} points).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

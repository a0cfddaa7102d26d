"""Data-parallel training of the reference CIFAR-10 network (examples/torch_cifar_net.py,
plain torch.nn switched to fastconv's kernels by fastconv.torch.swap_modules) with
torch.nn.parallel.DistributedDataParallel, on one machine or several. Launch it with torchrun:

    # two processes on this machine (gloo on CPU; NCCL with --device cuda, one GPU each)
    torchrun --nproc_per_node 2 examples/train_ddp.py --data ../shared/datasets/cifar10-jpeg.tar.gz
    # two machines, one process each: run this on both, --node_rank 0 on the first (HOST)
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 1 --master_addr HOST --master_port 29500 \\
        examples/train_ddp.py --data ../shared/datasets/cifar10-jpeg.tar.gz

Every step takes one batch of --batch-size images split evenly over the processes, so the
schedule and the gradients are those of one process over the whole batch (batch norm
excepted: each process normalises its own share, as DDP always does). Rank 0 prints the
epoch table and the test accuracy and saves the weights as a torch.nn state_dict (--save),
which loads into the plain network as well as into the swapped one.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import fastconv
import fastconv.torch as ft
from fastconv import data as fcdata
from fastconv.recipe import Recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_cifar_net as net_lib  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=None, help="CIFAR-10 archive (default: the cache)")
    p.add_argument("--epochs", type=int, default=Recipe.epochs)
    p.add_argument(
        "--batch-size",
        type=int,
        default=Recipe.batch_size,
        help="images per step over all processes",
    )
    p.add_argument("--train-subset", type=int, default=None, help="train on N images")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per process (default: the cores / local processes)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", type=Path, default=None, help="rank 0 writes the state_dict here")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    if args.device == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        threads = args.threads or max(1, (os.cpu_count() or 1) // local_world)
        torch.set_num_threads(threads)
        fastconv.set_num_threads(threads)
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must divide over {world} processes")
    say = print if rank == 0 else (lambda *_, **__: None)

    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, lookahead=False)
    (x_train, y_train), (x_test, y_test) = fcdata.load_cifar10(args.data, verbose=rank == 0)
    if args.train_subset:
        x_train, y_train = net_lib.subset(x_train, y_train, args.train_subset, args.seed)
    net = net_lib.reference_net(seed=args.seed)
    net_lib.init_whitening(net, net_lib.whitening_images(x_train, args.seed))
    swapped = ft.swap_modules(net)
    model = nn.parallel.DistributedDataParallel(
        net.to(device), device_ids=[local_rank] if args.device == "cuda" else None
    )
    steps = args.epochs * (len(x_train) // args.batch_size)
    opt, schedule = net_lib.optimizer(net, recipe, steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    say(
        f"{world} processes ({args.device}, {dist.get_backend()}); {len(swapped)} modules on "
        f"fastconv ({fastconv.isa()}); batch {args.batch_size} = {world} x "
        f"{args.batch_size // world}; {steps} steps"
    )
    say("epoch  train loss  train acc  seconds")
    began = time.perf_counter()
    for epoch in range(args.epochs):
        batches = (
            (x.to(device), y.to(device))
            for x, y in net_lib.train_batches(x_train, y_train, recipe, epoch, rank, world)
        )
        seconds, loss, acc = net_lib.train_epoch(model, opt, schedule, batches, loss_fn)
        totals = torch.tensor([loss, acc], dtype=torch.float64, device=device)
        dist.all_reduce(totals)  # the mean over the processes
        loss, acc = (totals / world).tolist()
        say(f"{epoch + 1:5d}  {loss:10.4f}  {acc:9.4f}  {seconds:7.1f}")
    if rank == 0:
        accuracy = net_lib.accuracy(net.cpu(), x_test, y_test)
        say(f"test accuracy {accuracy:.4f}; {time.perf_counter() - began:.0f} s of training")
        if args.save is not None:
            torch.save(net.state_dict(), args.save)
            say(f"saved {args.save} (loads into torch_cifar_net.reference_net() as it is)")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""Data-parallel training with fastconv modules: torch.nn.parallel.DistributedDataParallel
over torch.distributed (gloo, loopback only), two processes on this machine, against one
process over the combined batch."""

import os
import socket
import time
from datetime import timedelta

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="fastconv.torch needs PyTorch (pip install torch==2.13.0)"
)
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

import fastconv  # noqa: E402
import fastconv.torch as ft  # noqa: E402

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("this PyTorch build has no torch.distributed with gloo", allow_module_level=True)

WORLD, PER_RANK, STEPS, TIMEOUT_S = 2, 4, 3, 120


def make_net():
    """Every kind of fastconv module but BatchNorm2d, whose batch statistics DDP keeps per
    process (a single process over the combined batch would differ by design)."""
    torch.manual_seed(0)
    return nn.Sequential(
        ft.nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        ft.nn.MaxPool2d(2),
        ft.nn.Conv2d(8, 16, 3, padding=1, groups=8),
        ft.nn.Conv2d(16, 16, 1),
        nn.ReLU(),
        ft.nn.AvgPool2d(2),
        ft.nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def batches():
    """STEPS batches of WORLD * PER_RANK images (channels_last: fastconv's NHWC kernels)."""
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        x = torch.from_numpy(rng.standard_normal((WORLD * PER_RANK, 3, 16, 16), np.float32))
        yield (
            x.contiguous(memory_format=torch.channels_last),
            torch.from_numpy(rng.integers(0, 10, WORLD * PER_RANK)),
        )


def train(model, part=slice(None)):
    """SGD with momentum on the `part` of every batch; the mean loss over it."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in batches():
        loss = nn.functional.cross_entropy(model(x[part]), y[part])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def worker(rank, port, out):
    """One rank: its share of each batch, gradients averaged across ranks by DDP."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    fastconv.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=TIMEOUT_S),
    )
    try:
        model = nn.parallel.DistributedDataParallel(make_net())
        params = train(model, slice(rank * PER_RANK, (rank + 1) * PER_RANK))
        torch.save(params, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_on_two_processes_matches_one_process_over_the_combined_batch(tmp_path):
    context = torch.multiprocessing.start_processes(
        worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=1):
            assert time.monotonic() < deadline, f"the ranks ran past {TIMEOUT_S} s"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    single = train(make_net())
    assert len(ranks[0]) == len(single) == 8  # 4 layers, weight and bias
    for p0, p1, p in zip(*ranks, single):
        assert torch.equal(p0, p1)  # the same averaged gradients on both ranks
        torch.testing.assert_close(p0, p, rtol=1e-5, atol=1e-6)
    # the parameters moved: a run that trained nothing would also agree
    assert not torch.allclose(single[0], make_net()[0].weight)

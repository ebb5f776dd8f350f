"""Two gloo processes on CPU must end with identical masks, whatever their local state."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import mlp
from torch import nn

import itop
from itop import distributed


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, method, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        # Every rank starts from a different global seed and a different engine seed, and sees
        # different data without gradient averaging: only rank 0's decisions can make them agree.
        torch.manual_seed(100 + rank)
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sp = itop.build(method, model, opt, sparsity=0.9, update_interval=2, total_steps=40, seed=rank)
        g = torch.Generator().manual_seed(rank)
        for _ in range(12):
            x, y = torch.randn(16, 64, generator=g), torch.randint(0, 10, (16,), generator=g)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sp.step()
        masks = {k: v.to(torch.uint8) for k, v in sp.masks().items()}
        torch.save({"masks": masks, "rate": sp.itop_rate(), "updates": len(sp.history)},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # leave together: tearing gloo down under a peer's feet aborts the process
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_two_gloo_ranks_agree_on_masks(method, tmp_path):
    port = _free_port()
    mp.spawn(_worker, args=(2, port, method, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["updates"] == r1["updates"] == 6
    assert r0["rate"] == r1["rate"] > 0.1
    for k in r0["masks"]:
        assert torch.equal(r0["masks"][k], r1["masks"][k]), k


def test_helpers_are_noops_without_process_group():
    assert not distributed.is_distributed()
    assert distributed.rank() == 0 and distributed.world_size() == 1
    t = torch.arange(5)
    assert distributed.broadcast_(t) is t and t.tolist() == [0, 1, 2, 3, 4]

"""DDP with sparse execution: two gloo ranks end with identical masks, the masks of dense DDP."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _sparse_threads import one_thread  # noqa: F401  (the fixture)
from helpers import mlp
from torch import nn

import itop
from itop.sparse import sparse_layers

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [("set", "dense"), ("set", "sparse"), ("rigl", "dense"), ("rigl", "sparse")]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        out = {}
        for method, execution in CASES:
            torch.manual_seed(0)  # DDP broadcasts rank 0's weights anyway
            model = mlp().double()
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            # A different engine seed per rank: only rank 0's decisions can make them agree.
            sp = itop.build(method, model, opt, sparsity=0.9, update_interval=3, total_steps=40,
                            seed=rank, execution=execution)
            net = nn.parallel.DistributedDataParallel(model)
            g = torch.Generator().manual_seed(rank)  # each rank sees its own data
            for _ in range(12):
                x = torch.randn(16, 64, generator=g, dtype=torch.float64)
                y = torch.randint(0, 10, (16,), generator=g)
                loss = nn.functional.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sp.step()
            key = f"{method}-{execution}"
            out[key + "-masks"] = {k: v.to(torch.uint8) for k, v in sp.masks().items()}
            out[key + "-rate"] = sp.itop_rate()
            out[key + "-updates"] = len(sp.history)
            out[key + "-sparse"] = len(sparse_layers(model))
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # leave together: tearing gloo down under a peer's feet aborts the process
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_agree_and_sparse_matches_dense(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for method, execution in CASES:
        key = f"{method}-{execution}"
        assert r0[key + "-updates"] == r1[key + "-updates"] == 4
        assert r0[key + "-rate"] == r1[key + "-rate"] > 0.1
        assert r0[key + "-sparse"] == (3 if execution == "sparse" else 0)
        for k in r0[key + "-masks"]:
            assert torch.equal(r0[key + "-masks"][k], r1[key + "-masks"][k]), (key, k)
    for method in ("set", "rigl"):
        # RigL's growth reads the all-reduced dense gradient in both modes: same decisions.
        dense, sparse = r0[f"{method}-dense-masks"], r0[f"{method}-sparse-masks"]
        for k in dense:
            assert torch.equal(dense[k], sparse[k]), (method, k)

"""The runner under torchrun-style process groups (gloo on CPU, two processes)."""

import os
import signal
import socket

import pytest
import torch
import torch.multiprocessing as mp

from itop.errors import Interrupted
from itop.training import Trainer
from itop.training.config import load_config

BASE = {"dataset": "digits", "model": "lenet-300-100", "tensorboard": False, "progress": "none",
        "lr": 0.05}


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sigterm_after_step_5(info):
    if (info.epoch, info.step) == (0, 5):
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(rank, world, port, jobs, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    finished = False
    try:
        for tag, over in jobs:
            t = Trainer(load_config(None, {**BASE, "out_dir": os.path.join(out_dir, tag), "name": "run", **over}),
                        on_step=_sigterm_after_step_5 if tag == "signalled" and rank == 1 else None)
            try:
                t.fit()
                interrupted = None
            except Interrupted as e:
                interrupted = {"step": e.step, "checkpoint": e.checkpoint}
            torch.save({"model": t.model.state_dict(), "masks": t.sparsifier.masks(),
                        "rate": t.sparsifier.itop_rate(), "steps": t.progress.step,
                        "updates": len(t.sparsifier.history), "interrupted": interrupted},
                       os.path.join(out_dir, f"{tag}-rank{rank}.pt"))
        finished = True
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            if finished:  # leave together: a rank tearing gloo down while its peer still uses
                dist.barrier()  # the connection aborts the process ("terminate called ...")
            dist.destroy_process_group()


def _spawn(tmp_path, jobs):
    mp.spawn(_worker, args=(2, _port(), jobs, str(tmp_path)), nprocs=2, join=True)
    return {tag: [torch.load(tmp_path / f"{tag}-rank{r}.pt", weights_only=True) for r in (0, 1)]
            for tag, _ in jobs}


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    jobs = [
        ("set", {"method": "set", "sparsity": 0.9, "epochs": 5, "batch_size": 16, "update_interval": 20}),
        ("rigl", {"method": "rigl", "sparsity": 0.9, "epochs": 5, "batch_size": 16, "update_interval": 20}),
        ("dense", {"method": "dense", "epochs": 2, "batch_size": 32}),
        ("static", {"method": "static", "sparsity": 0.8, "epochs": 2, "batch_size": 32}),
        ("killed", {"method": "rigl", "sparsity": 0.9, "epochs": 2, "batch_size": 32, "update_interval": 5,
                    "max_steps": 30}),
        ("accum", {"method": "static", "sparsity": 0.8, "epochs": 2, "batch_size": 16, "accumulate": 2}),
        ("signalled", {"method": "rigl", "sparsity": 0.9, "epochs": 2, "batch_size": 32, "update_interval": 5}),
    ]
    return tmp, _spawn(tmp, jobs)


@pytest.mark.parametrize("tag", ["set", "rigl"])
def test_ranks_agree_on_masks_rate_and_weights(two_rank_runs, tag):
    _, runs = two_rank_runs
    r0, r1 = runs[tag]
    assert r0["steps"] == r1["steps"] >= 200  # a few hundred steps: 5 epochs x 41 per rank
    assert r0["updates"] == r1["updates"] > 5
    assert r0["rate"] == r1["rate"] > 0.15
    for k in r0["masks"]:
        assert torch.equal(r0["masks"][k], r1["masks"][k]), k
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k


@pytest.mark.parametrize("tag, sparsity", [("dense", None), ("static", 0.8)])
def test_two_ranks_of_b_match_one_rank_of_2b(two_rank_runs, tmp_path, tag, sparsity):
    _, runs = two_rank_runs
    over = {"method": tag, "epochs": 2, "batch_size": 64, "out_dir": str(tmp_path), "name": "one"}
    if sparsity:
        over["sparsity"] = sparsity
    one = Trainer(load_config(None, {**BASE, **over}))
    one.fit()
    ddp = runs[tag][0]
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(ddp["model"][k], v, rtol=1e-4, atol=1e-5)
    for k, m in one.sparsifier.masks().items():
        assert torch.equal(ddp["masks"][k], m)


def test_two_rank_checkpoint_resumes_on_one_rank(two_rank_runs):
    tmp, runs = two_rank_runs
    from itop.training.checkpoint import load_latest

    killed = runs["killed"][0]
    assert killed["steps"] == 30  # 21 steps per epoch with 2 ranks: checkpoint at step 21
    path, state = load_latest(tmp / "killed" / "run" / "checkpoints")
    assert state["progress"]["step"] == 21 and state["progress"]["world_size"] == 2
    ever = state["sparsifier"]["tracker"]["layers"]
    rate_at_checkpoint = sum(int(v["ever"].sum()) for v in ever.values()) / sum(v["ever"].numel() for v in ever.values())
    t = Trainer(load_config(None, {**BASE, "method": "rigl", "sparsity": 0.9, "epochs": 2, "batch_size": 32,
                                   "update_interval": 5, "out_dir": str(tmp / "killed"), "name": "run",
                                   "resume": "auto"}))
    s = t.fit()
    assert s["completed"] and t.progress.epoch == 2
    # Epoch 2 runs on one rank from its start: 21 steps before, 41 per epoch now.
    assert t.progress.step == 21 + t.steps_per_epoch
    assert s["itop_rate"] >= rate_at_checkpoint > 0.1  # R_s carried over and never decreases
    assert len(t.sparsifier.history) > len(state["sparsifier"]["history"])  # updates continued
    counts = {k: int(m.sum()) for k, m in t.sparsifier.masks().items()}
    assert counts == {k: int(m.sum()) for k, m in killed["masks"].items()}


def test_two_ranks_accumulating_match_one_rank_of_the_global_batch(two_rank_runs, tmp_path):
    """2 ranks x 2 micro-batches of 16 (DDP synchronising once per group) train like one rank
    with batches of 64: the same samples in each optimizer step, the same gradient."""
    _, runs = two_rank_runs
    one = Trainer(load_config(None, {**BASE, "method": "static", "sparsity": 0.8, "epochs": 2, "batch_size": 64,
                                     "out_dir": str(tmp_path), "name": "one"}))
    one.fit()
    r0, r1 = runs["accum"]
    assert r0["steps"] == r1["steps"] == one.progress.step == 2 * 21  # 1294 samples: 647 per rank
    for k, v in one.model.state_dict().items():
        assert torch.equal(r0["model"][k], r1["model"][k]), k
        torch.testing.assert_close(r0["model"][k], v, rtol=1e-4, atol=1e-5)


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step(two_rank_runs):
    """Only rank 1 received SIGTERM (after its 5th step): both ranks stop there, rank 0 writes."""
    tmp, runs = two_rank_runs
    r0, r1 = (r["interrupted"] for r in runs["signalled"])
    assert r0["step"] == r1["step"] == 5 == runs["signalled"][0]["steps"] == runs["signalled"][1]["steps"]
    assert r0["checkpoint"].endswith("ckpt-step000000005.pt") and r1["checkpoint"] is None
    state = torch.load(r0["checkpoint"], weights_only=True)
    assert state["progress"]["step"] == 5 and state["progress"]["world_size"] == 2

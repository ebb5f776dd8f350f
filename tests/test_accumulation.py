"""Gradient accumulation: sparsifier.step() once per optimizer step.

ΔT and every schedule count optimizer steps, and RigL's gradient at an update step is the
accumulated one, so N micro-batches of B/N samples give the masks (and weights) of one batch of
B samples.
"""

from __future__ import annotations

import pytest
import torch
from helpers import mlp
from torch import nn

import itop


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine it is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(method, micro, steps=8, batch=32, seed=0):
    torch.manual_seed(seed)
    model = mlp().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = itop.build(method, model, opt, sparsity=0.9, update_interval=2, total_steps=steps, seed=1)
    g = torch.Generator().manual_seed(5)
    data = [(torch.randn(batch, 64, generator=g, dtype=torch.float64),
             torch.randint(0, 10, (batch,), generator=g)) for _ in range(steps)]
    for x, y in data:
        opt.zero_grad()  # once per optimizer step, before the micro-batches
        for xs, ys in zip(x.chunk(micro), y.chunk(micro), strict=True):
            loss = nn.functional.cross_entropy(model(xs), ys) / micro
            loss.backward()
        opt.step()
        sp.step()  # once per optimizer step
    return model, sp


@pytest.mark.parametrize("method", ["rigl", "snfs", "set"])
def test_accumulated_micro_batches_give_the_masks_of_one_big_batch(method):
    big_model, big = _train(method, micro=1)
    acc_model, acc = _train(method, micro=4)
    assert acc.step_count == big.step_count == 8  # optimizer steps, not micro-batches
    assert len(acc.history) == len(big.history) > 0
    assert [r["step"] for r in acc.history] == [r["step"] for r in big.history]
    for name, mask in big.masks().items():
        assert torch.equal(mask, acc.masks()[name]), name
    for (name, p), q in zip(big_model.named_parameters(), acc_model.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=0, atol=1e-10), name
    assert acc.itop_rate() == big.itop_rate()

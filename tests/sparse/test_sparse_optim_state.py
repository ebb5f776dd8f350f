"""Optimizer state moved to a values vector and re-indexed across topology updates."""

import pytest
import torch
from _sparse_threads import one_thread  # noqa: F401  (the fixture)
from torch import nn

from itop.optim_state import remap_state, swap_parameter

pytestmark = pytest.mark.usefixtures("one_thread")


def _stepped(cls, **kw):
    p = nn.Parameter(torch.randn(4, 5))
    b = nn.Parameter(torch.randn(4))
    opt = cls([{"params": [p, b]}], **kw)
    for _ in range(2):
        p.grad, b.grad = torch.randn(4, 5), torch.randn(4)
        opt.step()
    return p, b, opt


def test_swap_parameter_gathers_every_weight_shaped_state():
    for cls, kw in ((torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}), (torch.optim.AdamW, {"lr": 0.1}),
                    (torch.optim.Adam, {"lr": 0.1, "amsgrad": True})):
        p, b, opt = _stepped(cls, **kw)
        params = opt.param_groups[0]["params"]
        old_state = {k: v.clone() for k, v in opt.state[p].items()}
        idx = torch.tensor([1, 6, 19])
        values = nn.Parameter(p.detach().reshape(-1)[idx].clone())
        assert swap_parameter(opt, p, values, idx)
        assert opt.param_groups[0]["params"] is params and params[0] is values and params[1] is b
        assert p not in opt.state
        for k, v in old_state.items():
            if v.shape == p.shape:
                assert torch.equal(opt.state[values][k], v.reshape(-1)[idx])
            else:
                assert torch.equal(opt.state[values][k], v)
        values.grad, b.grad = torch.randn(3), torch.randn(4)
        opt.step()  # the optimizer keeps working on the new parameter


def test_swap_of_a_foreign_parameter_does_nothing():
    p, _, opt = _stepped(torch.optim.SGD, lr=0.1, momentum=0.9)
    assert not swap_parameter(opt, nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1)), torch.tensor([0]))
    assert not swap_parameter(None, p, p, torch.tensor([0]))


def test_remap_keeps_survivors_and_zeroes_new_entries():
    v = nn.Parameter(torch.randn(5))
    opt = torch.optim.Adam([v], lr=0.1)
    v.grad = torch.randn(5)
    opt.step()
    before = {k: t.clone() for k, t in opt.state[v].items()}
    source = torch.tensor([4, -1, 0, -1, 2])
    assert remap_state(opt, v, source, torch.Size([5])) == 2
    for k in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt.state[v][k], torch.stack([before[k][4], torch.tensor(0.0), before[k][0],
                                                         torch.tensor(0.0), before[k][2]]))
    assert torch.equal(opt.state[v]["step"], before["step"])
    # A shorter vector (fewer active weights): tensors are replaced by the re-indexed ones.
    assert remap_state(opt, v, torch.tensor([2, 0]), torch.Size([5])) == 2
    assert opt.state[v]["exp_avg"].shape == (2,)
    assert remap_state(None, v, source, torch.Size([5])) == 0

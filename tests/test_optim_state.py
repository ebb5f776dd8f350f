import torch
from torch import nn

from itop.optim_state import reset_state


def _state_after_steps(opt_cls, **kw):
    p = nn.Parameter(torch.randn(4, 5))
    opt = opt_cls([p], **kw)
    for _ in range(2):
        p.grad = torch.randn(4, 5)
        opt.step()
    return p, opt


def test_zeroes_every_weight_shaped_tensor_by_name_free_rule():
    for cls, kw in ((torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}), (torch.optim.AdamW, {"lr": 0.1}),
                    (torch.optim.Adam, {"lr": 0.1, "amsgrad": True}), (torch.optim.RMSprop, {"lr": 0.1, "momentum": 0.5})):
        p, opt = _state_after_steps(cls, **kw)
        idx = torch.tensor([0, 7, 19])
        step_before = {k: v.clone() for k, v in opt.state[p].items() if v is not None and v.dim() == 0}
        touched = reset_state(opt, p, idx)
        shaped = [v for v in opt.state[p].values() if torch.is_tensor(v) and v.shape == p.shape]
        assert touched == len(shaped) >= 1, cls
        for v in shaped:
            assert (v.reshape(-1)[idx] == 0).all()
            assert (v.reshape(-1)[1:7] != 0).all()
        for k, v in step_before.items():  # scalars such as Adam's step are untouched
            assert torch.equal(opt.state[p][k], v)


def test_no_state_is_fine():
    p = nn.Parameter(torch.randn(3))
    assert reset_state(torch.optim.SGD([p], lr=0.1), p, torch.tensor([0])) == 0
    assert reset_state(None, p, torch.tensor([0])) == 0

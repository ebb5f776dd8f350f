"""The engine in execution "sparse": conversion, optimizers, refusals, resume, export."""

import copy
import gc
import io
import logging
import weakref

import pytest
import torch
from _sparse_threads import one_thread  # noqa: F401  (the fixture)
from helpers import batches, convnet, mlp, train_step
from torch import nn

import itop
from itop.errors import CheckpointError, ConfigError
from itop.sparse import SparseLinear, dense_state_dict, export_model, load_export, sparse_layers

pytestmark = pytest.mark.usefixtures("one_thread")


def _build(model, opt, method="rigl", **kw):
    kw.setdefault("sparsity", 0.9)
    kw.setdefault("update_interval", 5)
    kw.setdefault("total_steps", 100)
    kw.setdefault("seed", 0)
    return itop.build(method, model, opt, execution="sparse", **kw)


def test_linear_layers_run_sparse_and_the_optimizer_trains_their_values():
    model = mlp()
    dense_weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = _build(model, opt, keep_last_dense=True)
    layers = sparse_layers(model)
    assert set(layers) == {"1", "3"}
    assert type(model[5]) is nn.Linear and model[5].weight is dense_weights[2]  # all active: dense
    params = opt.param_groups[0]["params"]
    assert not any(p is w for p in params for w in dense_weights[:2])
    assert all(any(p is m.values for p in params) for m in layers.values())
    stats = sp.layer_stats()
    assert [s.execution for s in stats] == ["sparse", "sparse", "dense"]
    assert [s.active for s in stats[:2]] == [layers["1"].nnz, layers["3"].nnz]
    for x, y in batches(12):
        train_step(model, opt, sp, x, y)
    assert len(sp.history) == 2 and sp.itop_rate() > 0.1
    assert [s.active for s in sp.layer_stats()[:2]] == [layers["1"].nnz, layers["3"].nnz]
    assert sp.num_active() == sum(m.nnz for m in layers.values()) + model[5].weight.numel()


def test_dense_weights_are_released_after_conversion():
    model = mlp()
    ref = weakref.ref(model[1].weight)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sp = _build(model, opt)
    gc.collect()
    assert ref() is None
    assert sp.masks()["1.weight"].sum() == model[1].nnz


def test_optimizer_state_built_before_is_carried_to_the_values():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = batches(1)[0]
    train_step(model, opt, None, x, y)
    buf = opt.state[model[1].weight]["momentum_buffer"].clone()
    sp = _build(model, opt)
    values = model[1].values
    assert torch.equal(opt.state[values]["momentum_buffer"], buf.reshape(-1)[model[1].indices])
    assert sp.execution == "sparse"


def test_conv_layers_keep_dense_masking_in_the_same_model(caplog):
    model = convnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with caplog.at_level(logging.INFO, logger="itop.sparsifier"):
        sp = _build(model, opt, method="set", sparsity=0.8, distribution="uniform")
    assert list(sparse_layers(model)) == ["7"]
    assert "1 layers run sparse: 7.weight" in caplog.text
    assert "0.weight (Conv2d layers are not covered (only nn.Linear))" in caplog.text
    for x, y in batches(10, shape=(3, 8, 8)):
        train_step(model, opt, sp, x, y)
    masks = sp.masks()
    assert (model[0].weight[~masks["0.weight"]] == 0).all()  # dense masking still applied
    assert masks["7.weight"].sum() == model[7].nnz


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp()
        self.extra = nn.Linear(96, 48)
        self.extra.weight = self.body[3].weight  # one matrix used by two layers

    def forward(self, x):
        return self.body(x) + self.extra(self.body[2](self.body[1](self.body[0](x)))).sum()


def test_tied_and_kept_dense_layers_stay_dense(caplog):
    model = _Tied()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.INFO, logger="itop.sparsifier"):
        sp = _build(model, opt, keep_first_dense=True, sparsity=0.3, distribution="uniform")
    assert "body.1.weight (all of its weights are active)" in caplog.text
    assert "body.3.weight (its weight is shared with another module)" in caplog.text
    assert list(sparse_layers(model)) == ["body.5"]
    for x, y in batches(6):
        train_step(model, opt, sp, x, y)
    assert (model.extra.weight[~sp.masks()["body.3.weight"]] == 0).all()


@pytest.mark.parametrize("method, match", [("snfs", "momentum.*execution: dense"),
                                           ("gmp", "gradual pruning.*execution: dense")])
def test_methods_sparse_execution_cannot_serve_are_refused_in_one_line(method, match):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ConfigError, match=match) as info:
        itop.build(method, model, opt, sparsity=0.9, total_steps=100, update_interval=5,
                   execution="sparse")
    assert "\n" not in str(info.value)
    assert not sparse_layers(model)  # nothing was converted


def test_bad_execution_names_and_wrapped_models():
    with pytest.raises(ConfigError, match="unknown execution 'spares'; did you mean 'sparse'"):
        itop.build("set", mlp(), None, sparsity=0.9, execution="spares")
    with pytest.raises(ConfigError, match="execution"):
        itop.SparseConfig(execution="csr").validate()
    wrapped = nn.DataParallel(mlp())
    with pytest.raises(ConfigError, match="before wrapping"):
        itop.build("set", wrapped, None, sparsity=0.9, total_steps=100, execution="sparse")


def test_manual_rigl_update_needs_the_dense_gradient_requested():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = _build(model, opt, update_interval=None, method="rigl")
    x, y = batches(1)[0]
    train_step(model, opt, sp, x, y)
    with pytest.raises(ConfigError, match="request_dense_gradient"):
        sp.update_topology(0.3)
    sp.request_dense_gradient()
    nn.functional.cross_entropy(model(x), y).backward()
    record = sp.update_topology(0.3)
    assert record["dropped"] > 0 and model[1].grad_sink.grad is None


def test_taylor_prune_reads_the_gradient_at_active_weights():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = _build(model, opt, method="set", prune="taylor")
    for x, y in batches(10):
        train_step(model, opt, sp, x, y)
    assert len(sp.history) == 2


def _snapshot(model, opt, sp):
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sp": sp.state_dict()}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.AdamW])
def test_resume_in_sparse_mode_is_exact(opt_cls):
    kw = {"lr": 0.05, "momentum": 0.9} if opt_cls is torch.optim.SGD else {"lr": 1e-3}
    data = batches(24)
    torch.manual_seed(0)
    init = mlp()

    def fresh():
        model = copy.deepcopy(init)
        opt = opt_cls(model.parameters(), **kw)
        return model, opt, _build(model, opt)

    model, opt, sp = fresh()
    for x, y in data[:11]:
        train_step(model, opt, sp, x, y)
    saved = _snapshot(model, opt, sp)
    rest_a = [nn.functional.cross_entropy(model(x), y).item() for x, y in data[11:12]]
    for x, y in data[11:]:
        train_step(model, opt, sp, x, y)
    model2, opt2, sp2 = fresh()
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sp2.load_state_dict(saved["sp"])
    assert rest_a == [nn.functional.cross_entropy(model2(x), y).item() for x, y in data[11:12]]
    for x, y in data[11:]:
        train_step(model2, opt2, sp2, x, y)
    for k, v in model.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, model2.state_dict()[k]), k
    assert sp.history[-1]["step"] == sp2.history[-1]["step"] and sp.itop_rate() == sp2.itop_rate()
    assert all(torch.equal(a, b) for a, b in zip(sp.masks().values(), sp2.masks().values(), strict=True))


def test_checkpoints_across_modes_load_or_refuse_in_one_line():
    torch.manual_seed(0)
    init = mlp()
    model = copy.deepcopy(init)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = _build(model, opt)
    for x, y in batches(7):
        train_step(model, opt, sp, x, y)
    saved = _snapshot(model, opt, sp)
    # The weights and the masks of a sparse run load into a dense-executed model.
    # (As in a resume: build the sparsifier, then load the model's and the sparsifier's state.)
    dense = copy.deepcopy(init)
    dopt = torch.optim.SGD(dense.parameters(), lr=0.05, momentum=0.9)
    dsp = itop.build("rigl", dense, dopt, sparsity=0.9, update_interval=5, total_steps=100, seed=0)
    dense.load_state_dict(dense_state_dict(saved["model"]))
    dsp.load_state_dict(saved["sp"])
    x = batches(1, seed=9)[0][0]
    torch.testing.assert_close(dense(x), model(x))
    assert all(torch.equal(a, b) for a, b in zip(dsp.masks().values(), sp.masks().values(), strict=True))
    # Optimizer state of the other mode is refused before anything is loaded.
    with pytest.raises(CheckpointError, match="other execution mode") as info:
        dopt.load_state_dict(saved["opt"])
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="other execution mode"):
        opt.load_state_dict(dopt.state_dict() | {"state": {0: {"momentum_buffer": torch.zeros(96, 64)}}})
    # A dense checkpoint's weights given to the sparse model: one line naming the fix.
    with pytest.raises(CheckpointError, match="execution: dense"):
        model.load_state_dict(init.state_dict())


def test_finalize_keeps_sparse_layers_and_export_round_trips(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = _build(model, opt)
    for x, y in batches(6):
        train_step(model, opt, sp, x, y)
    out = sp.finalize()
    assert isinstance(out[1], SparseLinear)
    info = export_model(out, tmp_path / "m.pt", meta={"itop_rate": sp.itop_rate()})
    loaded = load_export(tmp_path / "m.pt", mlp())
    x = batches(1, seed=4)[0][0]
    model.eval()
    assert torch.equal(loaded(x), model(x))
    assert info["nnz"] == sum(m.nnz for m in sparse_layers(model).values())


def test_gradient_accumulation_sums_the_dense_gradient_like_dense_mode():
    torch.manual_seed(0)
    init = mlp().double()
    data = [(x.double(), y) for x, y in batches(8)]
    runs = []
    for execution in ("dense", "sparse"):
        model = copy.deepcopy(init)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        sp = itop.build("rigl", model, opt, sparsity=0.9, update_interval=2, total_steps=100, seed=1,
                        execution=execution)
        for i in range(0, 8, 2):  # two micro-batches per step
            opt.zero_grad()
            for x, y in data[i:i + 2]:
                nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sp.step()
        runs.append(sp.masks())
    assert all(torch.equal(a, b) for a, b in zip(runs[0].values(), runs[1].values(), strict=True))


def test_dense_weights_by_name_in_both_modes():
    torch.manual_seed(0)
    init = mlp()
    out = {}
    for execution in ("dense", "sparse"):
        model = copy.deepcopy(init)
        sp = itop.build("set", model, None, sparsity=0.8, total_steps=100, seed=2, execution=execution)
        out[execution] = sp.dense_weights()
        for name, w in out[execution].items():
            assert w.shape == dict(sp.masks())[name].shape and (w[~sp.masks()[name]] == 0).all()
    assert out["dense"].keys() == out["sparse"].keys()
    for name in out["dense"]:
        assert torch.equal(out["dense"][name], out["sparse"][name])


def test_pruning_at_init_masks_run_sparse():
    torch.manual_seed(0)
    init = mlp()
    data = batches(3)
    masks = {}
    for execution in ("dense", "sparse"):
        model = copy.deepcopy(init)
        sp = itop.build("snip", model, None, sparsity=0.9, batches=data[:1], execution=execution)
        masks[execution] = sp.masks()
    assert len(sparse_layers(model)) == 3
    assert all(torch.equal(masks["dense"][k], masks["sparse"][k]) for k in masks["dense"])

"""SparseLinear: conversion, the read-only weight view, persistence and bad checkpoints."""

import copy

import pytest
import torch
from _sparse_threads import one_thread  # noqa: F401  (the fixture)
from torch import nn

from itop.errors import CheckpointError, ConfigError
from itop.sparse import SparseLinear, dense_state_dict, sparse_layers, to_dense, to_sparse_linear

pytestmark = pytest.mark.usefixtures("one_thread")


def _layer(out_f=6, in_f=5, k=9, seed=0, bias=True):
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    active = torch.randperm(out_f * in_f)[:k]
    return lin, active, SparseLinear.from_dense(lin, active)


def test_from_dense_keeps_active_weights_and_shares_the_bias():
    lin, active, sp = _layer()
    assert isinstance(sp, nn.Linear) and sp.nnz == 9
    assert sp.bias is lin.bias
    assert torch.equal(sp.indices, active.sort().values)
    mask = torch.zeros(30, dtype=torch.bool)
    mask[active] = True
    expected = torch.where(mask.view(6, 5), lin.weight, torch.zeros(()))
    assert torch.equal(sp.dense_weight(), expected)
    x = torch.randn(4, 5)
    torch.testing.assert_close(sp(x), x @ expected.t() + lin.bias)
    back = sp.to_dense()
    assert type(back) is nn.Linear and torch.equal(back.weight, expected)
    assert back.bias is not lin.bias and torch.equal(back.bias, lin.bias)


def test_weight_view_is_csr_sharing_values_without_grad():
    _, _, sp = _layer()
    w = sp.weight
    assert w.layout == torch.sparse_csr and w.shape == (6, 5) and not w.requires_grad
    assert w.values().data_ptr() == sp.values.data_ptr()
    assert torch.equal(w.to_dense(), sp.dense_weight())


def test_state_dict_round_trip_and_other_density():
    _, _, sp = _layer(k=9)
    state = sp.state_dict()
    assert set(state) == {"values", "indices", "bias", "_extra_state"}
    _, _, other = _layer(k=14, seed=1)
    other.load_state_dict(state)
    assert other.nnz == 9 and torch.equal(other.dense_weight(), sp.dense_weight())
    x = torch.randn(3, 5)
    assert torch.equal(other(x), sp(x))


def test_loading_a_dense_weight_or_another_shape_is_refused_in_one_line():
    _, _, sp = _layer()
    with pytest.raises(CheckpointError, match="execution: dense"):
        sp.load_state_dict(nn.Linear(5, 6).state_dict())
    _, _, wide = _layer(out_f=7)
    with pytest.raises(CheckpointError, match=r"shape \[7, 5\].*\[6, 5\]") as info:
        sp.load_state_dict(wide.state_dict())
    assert "\n" not in str(info.value)
    bad = dict(sp.state_dict())
    bad["indices"] = torch.tensor([40] + [0] * 8)
    with pytest.raises(CheckpointError, match="another model"):
        sp.load_state_dict(bad)


def test_dense_state_dict_loads_into_the_dense_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    reference = copy.deepcopy(model)
    to_sparse_linear(model, "0", torch.arange(0, 40, 3))
    assert list(sparse_layers(model)) == ["0"]
    dense = copy.deepcopy(reference)
    dense.load_state_dict(dense_state_dict(model.state_dict()))
    x = torch.randn(4, 5)
    torch.testing.assert_close(dense(x), model(x))
    to_dense(model)
    assert not sparse_layers(model) and type(model[0]) is nn.Linear
    torch.testing.assert_close(model(x), dense(x))


def test_set_structure_keeps_parameter_identity_for_an_equal_count():
    _, _, sp = _layer(k=9)
    values, indices = sp.values, sp.indices
    ptr = values.data_ptr()
    sp.set_structure(torch.arange(9) * 3, torch.ones(9))
    assert sp.values is values and sp.indices is indices and values.data_ptr() == ptr
    assert torch.equal(sp.dense_weight().reshape(-1)[::3][:9], torch.ones(9))
    sp.set_structure(torch.arange(4), torch.ones(4))
    assert sp.values is values and sp.nnz == 4 and sp.values.shape == (4,)
    assert sp.layout().nnz == 4


def test_dtype_moves_and_copies():
    _, _, sp = _layer()
    x = torch.randn(2, 5, dtype=torch.float64)
    sp64 = copy.deepcopy(sp).double()
    assert sp64.values.dtype == torch.float64 and sp64.indices.dtype == torch.long
    torch.testing.assert_close(sp64(x), x @ sp64.dense_weight().t() + sp64.bias)
    with pytest.raises(RuntimeError, match="dtype"):
        sp(x)


def test_autocast_computes_in_the_weights_dtype():
    _, _, sp = _layer()
    x = torch.randn(2, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = sp(x.bfloat16())
    assert y.dtype == torch.float32


def test_bad_inputs():
    with pytest.raises(ConfigError, match="sorted"):
        SparseLinear(5, 6, torch.tensor([3, 1]))
    with pytest.raises(ConfigError, match=r"\[0, 30\)"):
        SparseLinear(5, 6, torch.tensor([30]))
    with pytest.raises(ConfigError, match="float32 and float64"):
        SparseLinear(5, 6, torch.tensor([1]), torch.ones(1, dtype=torch.bfloat16))


def test_repr_shows_the_count_and_the_layer_is_a_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 2))
    to_sparse_linear(model, "1", torch.arange(20))
    assert "nnz=20" in repr(model) and isinstance(model[1], nn.Linear)
    assert (model[1].in_features, model[1].out_features) == (12, 7)

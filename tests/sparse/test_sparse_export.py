"""Sparse export: compressed file, weights_only load, identical outputs, bad input."""

import copy

import pytest
import torch
from _sparse_threads import one_thread  # noqa: F401  (the fixture)
from torch import nn

from itop.errors import CheckpointError, ConfigError
from itop.models import build_model
from itop.sparse import SparseLinear, export_model, load_export, read_export, to_sparse_linear

pytestmark = pytest.mark.usefixtures("one_thread")

REBUILD = {"name": "mlp", "shape": {"in_channels": 1, "num_classes": 10, "image_size": 8},
           "kwargs": {"hidden": [128, 64]}}


def _sparse_mlp(density=0.05, seed=0):
    torch.manual_seed(seed)
    model = build_model("mlp", in_channels=1, num_classes=10, image_size=8, hidden=[128, 64])
    dense = copy.deepcopy(model)
    for name in ("layers.1", "layers.3"):
        lin = model.get_submodule(name)
        k = max(1, round(density * lin.weight.numel()))
        to_sparse_linear(model, name, torch.randperm(lin.weight.numel())[:k])
    return model, dense


def test_export_loads_weights_only_and_gives_identical_outputs(tmp_path):
    model, _ = _sparse_mlp()
    info = export_model(model, tmp_path / "m.pt", rebuild=REBUILD, meta={"method": "rigl"})
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["format"] == "itop-sparse-export" and raw["meta"] == {"method": "rigl"}
    assert raw["state"]["layers.1.weight"].layout == torch.sparse_csr
    assert set(raw["layers"]) == {"layers.1.weight", "layers.3.weight"}
    assert info["layers"] == 2 and info["nnz"] == sum(m.nnz for m in model.modules()
                                                      if isinstance(m, SparseLinear))
    x = torch.randn(16, 1, 8, 8)
    model.eval()
    loaded = load_export(tmp_path / "m.pt")
    assert not loaded.training
    assert isinstance(loaded.layers[1], SparseLinear)
    assert torch.equal(loaded(x), model(x))  # same kernels, same order: bit-identical
    dense = load_export(tmp_path / "m.pt", execution="dense")
    assert type(dense.layers[1]) is nn.Linear
    torch.testing.assert_close(dense(x), model(x), atol=1e-5, rtol=1e-5)


def test_file_is_smaller_than_the_dense_checkpoint(tmp_path):
    model, dense = _sparse_mlp(density=0.02)
    info = export_model(model, tmp_path / "m.pt", rebuild=REBUILD)
    torch.save(dense.state_dict(), tmp_path / "dense.pt")
    dense_file = (tmp_path / "dense.pt").stat().st_size
    assert info["bytes"] < 0.25 * dense_file
    assert info["dense_bytes"] == sum(t.numel() * t.element_size() for t in dense.state_dict().values())


def test_export_from_masks_of_a_dense_executed_run(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 2))
    mask = torch.rand(9, 6) < 0.3
    with torch.no_grad():
        model[0].weight.mul_(mask)
    masks = {"0.weight": mask, "2.weight": torch.ones(2, 9, dtype=torch.bool)}
    info = export_model(model, tmp_path / "m.pt", masks=masks)
    assert info["layers"] == 1 and info["nnz"] == int(mask.sum())
    fresh = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 2))
    loaded = load_export(tmp_path / "m.pt", fresh)
    x = torch.randn(5, 6)
    torch.testing.assert_close(loaded(x), model(x))


def test_bad_input_is_refused_and_nothing_is_overwritten(tmp_path):
    model, dense = _sparse_mlp()
    with pytest.raises(ConfigError, match="no sparse linear layer"):
        export_model(dense, tmp_path / "d.pt")
    assert not (tmp_path / "d.pt").exists()
    path = tmp_path / "m.pt"
    export_model(model, path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        export_model(model, path)
    assert path.read_bytes() == before
    with pytest.raises(CheckpointError, match="rebuild"):
        load_export(path)  # no rebuild information and no model given
    other = build_model("mlp", in_channels=1, num_classes=10, image_size=8, hidden=[100, 64])
    with pytest.raises(CheckpointError, match=r"shape \[128, 64\].*\[100, 64\]"):
        load_export(path, other)
    torch.save({"model": {}}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="not an itop sparse export"):
        read_export(tmp_path / "ckpt.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_export(tmp_path / "junk.pt")

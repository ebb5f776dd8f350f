import pytest
from torch import nn

from itop.errors import ConfigError
from itop.targets import TargetSelector, unwrap_model


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.emb = nn.Embedding(10, 4)
        self.convt = nn.ConvTranspose2d(8, 4, 2)
        self.fc = nn.Linear(4, 2)
        self.head = self.fc  # shared module: counted once


def test_default_selects_linear_and_conv_weights_only():
    names = [t.name for t in TargetSelector().select(Net())]
    assert names == ["conv.weight", "convt.weight", "fc.weight"]


def test_filters():
    sel = TargetSelector(include=lambda name, m, p: not isinstance(m, nn.ConvTranspose2d),
                         exclude=("fc*",))
    assert [t.name for t in sel.select(Net())] == ["conv.weight"]


def test_fixed_densities():
    targets = TargetSelector().select(Net())
    sel = TargetSelector(keep_first_dense=True, layer_density={"fc": 0.5}, dense=("convt.*",))
    assert sel.fixed_densities(targets) == {"conv.weight": 1.0, "convt.weight": 1.0, "fc.weight": 0.5}
    with pytest.raises(ConfigError, match="match no sparsified layer"):
        TargetSelector(layer_density={"nope": 0.5}).fixed_densities(targets)


def test_nothing_to_sparsify():
    with pytest.raises(ConfigError, match="no weights to sparsify"):
        TargetSelector().select(nn.Sequential(nn.ReLU()))


def test_unwrap():
    net = Net()
    assert unwrap_model(nn.DataParallel(net)) is net


# -- transformers: attention projections, patterns, tied weights --------------------------------

import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from itop.distributions import BlockShape, erdos_renyi, erdos_renyi_kernel  # noqa: E402
from itop.sparsifier import Sparsifier  # noqa: E402


class Attn(nn.Module):
    """Token embedding, a packed and an unpacked attention layer, a norm and a tied head."""

    def __init__(self, tie=True):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.packed = nn.MultiheadAttention(32, 4, batch_first=True)
        self.unpacked = nn.MultiheadAttention(32, 4, kdim=16, vdim=16, batch_first=True)
        self.ln = nn.LayerNorm(32)
        self.head = nn.Linear(32, 50, bias=False)
        if tie:
            self.head.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.packed(h, h, h, need_weights=False)[0]
        kv = h[..., :16]
        h = h + self.unpacked(h, kv, kv, need_weights=False)[0]
        return self.head(self.ln(h))


def test_attention_projections_are_selected_and_embeddings_norms_stay_dense():
    sel = TargetSelector().plan(Attn(tie=False))
    names = [t.name for t in sel.targets]
    assert names == [
        "packed.in_proj_weight", "packed.out_proj.weight",
        "unpacked.q_proj_weight", "unpacked.k_proj_weight", "unpacked.v_proj_weight",
        "unpacked.out_proj.weight", "head.weight",
    ]
    kinds = {t.name: t.kind for t in sel.targets}
    assert kinds["packed.in_proj_weight"] == "MultiheadAttention.in_proj"
    assert kinds["packed.out_proj.weight"] == "Linear"
    assert {t.name: t.blocks for t in sel.targets}["packed.in_proj_weight"] == 3
    assert [(d.name, d.kind) for d in sel.dense] == [("emb.weight", "Embedding")]
    # in_proj_bias (96), q/k/v biases are packed in in_proj_bias too, out_proj biases, ln
    assert sel.vectors == 2 + 2 + 2 and sel.vector_numel == 96 + 32 + 96 + 32 + 64


def test_tied_head_is_left_dense_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="itop.targets"):
        targets = TargetSelector().select(Attn())
    assert "head.weight" not in [t.name for t in targets] and "emb.weight" not in [t.name for t in targets]
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "'head.weight' is tied to 'emb.weight'" in msgs[0]
    assert "add 'emb.weight' to the target patterns" in msgs[0]


@pytest.mark.parametrize("pattern", ["emb.weight", "head.weight", "emb", "*.weight_nope|emb"])
def test_pattern_sparsifies_a_tied_weight_once(pattern):
    if "|" in pattern:
        pattern = pattern.split("|")[1]
    model = Attn()
    targets = TargetSelector(patterns=(pattern,)).select(model)
    tied = [t for t in targets if t.param is model.emb.weight]
    assert len(tied) == 1
    assert tied[0].name == "emb.weight" and tied[0].aliases == ("head.weight",)
    sp = Sparsifier(model, sparsity=0.9, targets=TargetSelector(patterns=(pattern,)), seed=0)
    assert "emb.weight" in sp.layer_names() and "head.weight" not in sp.layer_names()
    assert int((model.emb.weight != 0).sum()) == sp.masks()["emb.weight"].sum()
    assert model.head.weight is model.emb.weight


def test_pattern_errors():
    with pytest.raises(ConfigError, match="one-dimensional parameter.*ln.weight"):
        TargetSelector(patterns=("*.weight",)).select(Attn(tie=False))
    with pytest.raises(ConfigError, match="names only one-dimensional parameters"):
        TargetSelector(patterns=("ln",)).select(Attn(tie=False))
    with pytest.raises(ConfigError, match="pattern 'embb.weight' matches no parameter.*did you mean 'emb.weight'"):
        TargetSelector(patterns=("embb.weight",)).select(Attn(tie=False))
    with pytest.raises(ConfigError, match="matches no parameter.*parameter names look like: emb.weight"):
        TargetSelector(patterns=("zzz*",)).select(Attn(tie=False))


def test_module_pattern_selects_matrices_and_skips_biases():
    class WithParam(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.bil = nn.Bilinear(4, 4, 3)  # weight (3, 4, 4), bias (3,)
            self.table = nn.Parameter(torch.randn(6, 4))

    targets = TargetSelector(patterns=("bil", "table")).select(WithParam())
    assert [(t.name, t.kind) for t in targets] == [
        ("table", "WithParam.table (pattern)"), ("fc.weight", "Linear"), ("bil.weight", "Bilinear (pattern)")]


def test_exclude_that_matches_nothing_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="itop.targets"):
        TargetSelector(exclude=("classifer.*",)).select(Net())
    assert any("exclude pattern 'classifer.*' matches no sparsified weight" in r.getMessage()
               for r in caplog.records)


def test_types_replace_the_default_rules():
    assert [t.name for t in TargetSelector(types=(nn.Linear,)).select(Attn(tie=False))] == [
        "packed.out_proj.weight", "unpacked.out_proj.weight", "head.weight"]


def test_core_does_not_import_transformers():
    code = "import itop, itop.targets, itop.flops, sys; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_hf_conv1d_recognised_by_name_and_c_attn_is_three_blocks():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=8)
    model = transformers.GPT2LMHeadModel(config)
    sel = TargetSelector().plan(model)
    by_name = {t.name: t for t in sel.targets}
    assert set(by_name) == {"transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight",
                            "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight"}
    c_attn = by_name["transformer.h.0.attn.c_attn.weight"]
    assert (c_attn.kind, c_attn.blocks, c_attn.block_axis) == ("Conv1D", 3, 1)
    assert c_attn.shape == (16, 48) and c_attn.shape.block == (16, 16)
    assert by_name["transformer.h.0.mlp.c_fc.weight"].blocks == 1
    dense = {d.name: d.reason for d in sel.dense}
    assert dense["transformer.wte.weight"].startswith("tied to lm_head.weight")
    assert dense["transformer.wpe.weight"] == "not a sparsified layer type"


@settings(max_examples=30, deadline=None)
@given(e=st.integers(2, 64), blocks=st.integers(2, 4), other=st.integers(2, 64),
       density=st.floats(0.01, 0.3))
def test_packed_blocks_get_the_density_of_separate_matrices(e, blocks, other, density):
    """ERK and ER score one block of a packed projection: packing Q/K/V changes nothing."""
    for dist in (erdos_renyi_kernel, erdos_renyi):
        packed = dist({"qkv": BlockShape((blocks * e, e), blocks), "fc": (other, e)}, density)
        parts = {f"p{i}": (e, e) for i in range(blocks)}
        separate = dist({**parts, "fc": (other, e)}, density)
        assert packed["qkv"] == pytest.approx(separate["p0"], rel=1e-9)
        assert packed["fc"] == pytest.approx(separate["fc"], rel=1e-9)


def test_block_shape_is_a_plain_shape_and_checks_its_packing():
    s = BlockShape((96, 32), 3)
    assert s == (96, 32) and list(s) == [96, 32] and s.block == (32, 32)
    assert BlockShape((16, 48), 3, axis=1).block == (16, 16)
    with pytest.raises(ConfigError, match="cannot hold 5 equal blocks"):
        BlockShape((96, 32), 5)


def test_sparsifier_on_attention_keeps_exact_counts_and_zeros():
    torch.manual_seed(0)
    model = Attn(tie=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    from itop.schedules import UpdateSchedule

    sp = Sparsifier(model, opt, sparsity=0.8, grow="gradient", update=UpdateSchedule(2), seed=0)
    counts = {s.name: s.active for s in sp.layer_stats()}
    for _ in range(6):
        ids = torch.randint(0, 50, (4, 7))
        loss = nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
    assert len(sp.history) == 3
    params = dict(model.named_parameters())
    for name, mask in sp.masks().items():
        w = params[name]
        assert int(mask.sum()) == counts[name]
        assert torch.all(w[~mask] == 0)


def test_describe_lists_sparse_and_dense_weights(caplog):
    with caplog.at_level(logging.INFO, logger="itop.sparsifier"):
        sp = Sparsifier(Attn(), sparsity=0.9, seed=0)
    table = sp.describe()
    lines = table.splitlines()
    assert lines[0].split() == ["weight", "kind", "shape", "active", "density", "R_s"]
    for s in sp.layer_stats():
        row = next(line for line in lines if line.startswith(s.name + " "))
        assert f"{s.active}/{s.numel}" in row
    assert lines[1].split()[:3] == ["packed.in_proj_weight", "MultiheadAttention.in_proj", "96x32"]
    assert "left dense (1):" in table
    assert "emb.weight  Embedding+Linear 50x32: tied to head.weight" in table
    assert "left dense: 6 one-dimensional parameters" in table
    assert any(table in r.getMessage() for r in caplog.records)


def test_build_takes_a_selector_and_adds_the_config_patterns():
    import itop

    model = Attn()
    sp = itop.build("set", model, sparsity=0.5, exclude=["unpacked.*"], keep_last_dense=True,
                    targets=TargetSelector(patterns=("emb.weight",)), total_steps=10, seed=0)
    names = sp.layer_names()
    assert names[0] == "emb.weight" and not any(n.startswith("unpacked.") for n in names)
    assert {s.name: s.density for s in sp.layer_stats()}[names[-1]] == 1.0


def test_include_config_key_sparsifies_named_parameters():
    import itop
    from itop.training.config import RunConfig

    sp = itop.build("static", Attn(), sparsity=0.5, include=["emb"], seed=0)
    assert sp.layer_names()[0] == "emb.weight"
    cfg = RunConfig.from_flat({"include": ["transformer.wte.weight"]})
    assert cfg.sparse_config().include == ["transformer.wte.weight"]

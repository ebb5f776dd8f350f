import json
import math

import pytest
import torch
from helpers import convnet
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from itop.criteria import Criterion
from itop.errors import CheckpointError, ConfigError
from itop.flops import (
    ModelFlops,
    TrainingFlops,
    dense_gradient_policy,
    densities_of,
    inference_flops,
    needs_dense_gradient,
    profile_model,
    summarize,
)
from itop.models import build_model
from itop.sparsifier import Sparsifier


def small_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


# Hand counts for small_net on (1, 8, 8): the conv gives a 4x6x6 map.
CONV = 2 * (4 * 6 * 6) * (1 * 3 * 3)  # 2592
LINEAR = 2 * 144 * 10  # 2880
OTHER = 144 + 144 + 10  # conv bias, ReLU, linear bias


def test_small_model_by_hand():
    p = profile_model(small_net(), (1, 8, 8))
    assert p.layers == {"0.weight": CONV, "3.weight": LINEAR}
    assert (CONV, LINEAR) == (2592, 2880)
    assert p.other_by_kind == {"bias": 154, "activation": 144}
    assert p.other == OTHER
    assert p.dense_forward == CONV + LINEAR + OTHER
    assert p.input_shape == (1, 8, 8)


def test_lenet_300_100():
    model = build_model("lenet-300-100", in_channels=1, num_classes=10, image_size=28)
    p = profile_model(model, (1, 28, 28))
    names = [n for n, _ in model.named_parameters() if n.endswith("weight")]
    assert list(p.layers) == names
    assert sum(p.layers.values()) == 2 * (784 * 300 + 300 * 100 + 100 * 10) == 532_400
    assert p.other == (300 + 100 + 10) + (300 + 100)  # biases + ReLUs


def test_grouped_strided_and_transposed_conv():
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2, bias=False)
    # 8x4x4 outputs, each a dot product over (4 / 2) * 3 * 3 inputs.
    assert profile_model(conv, (4, 8, 8)).layers == {"weight": 2 * (8 * 4 * 4) * 2 * 9}
    convt = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, bias=False)
    # Each of the 4x5x5 inputs is scattered through (6 / 2) * 3 * 3 kernel taps.
    assert profile_model(convt, (4, 5, 5)).layers == {"weight": 2 * (4 * 5 * 5) * 3 * 9}
    conv1d = nn.Conv1d(3, 5, 4, dilation=2)  # length 20 -> 14
    p = profile_model(conv1d, (3, 20))
    assert p.layers == {"weight": 2 * (5 * 14) * 3 * 4}
    assert p.other == 5 * 14


def test_linear_counts_every_token():
    p = profile_model(nn.Linear(16, 4, bias=False), (5, 16))
    assert p.layers == {"weight": 2 * 16 * 4 * 5}


class Reused(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8, bias=False)
        self.a = nn.Linear(8, 8, bias=False)
        self.b = nn.Linear(8, 8, bias=False)
        self.b.weight = self.a.weight  # tied weight: one parameter, two modules

    def forward(self, x):
        return self.b(self.a(self.fc(self.fc(x))))


def test_reused_module_and_tied_weight_are_summed():
    p = profile_model(Reused(), (8,))
    assert [n for n, _ in Reused().named_parameters()] == ["fc.weight", "a.weight"]
    assert p.layers == {"fc.weight": 2 * 2 * 64, "a.weight": 2 * 2 * 64}


@pytest.mark.parametrize(
    "name,shape",
    [("lenet-5-caffe", (1, 28, 28)), ("wrn-16-2", (3, 16, 16))],
)
def test_layers_agree_with_torch_flop_counter(name, shape):
    model = build_model(name, in_channels=shape[0], num_classes=10, image_size=shape[1]).eval()
    p = profile_model(model, shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    assert sum(p.layers.values()) == counter.get_total_flops()
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert set(p.layers) == {f"{n}.weight" for n in convs}


def test_other_ops():
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.MaxPool2d(2), nn.GroupNorm(2, 4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Dropout(), nn.Linear(4, 3), nn.Softmax(dim=-1),
    )
    p = profile_model(model, (2, 6, 6))
    assert p.other_by_kind == {
        "norm": 2 * 144 + (5 + 2) * 36,  # batch norm on 4x6x6, affine group norm on 4x3x3
        "activation": 144 + 3 * 3,  # ReLU, softmax
        "pool": 4 * 36 + 36,  # 2x2 windows of 4x3x3 outputs; adaptive pool reads 4x3x3
        "bias": 3,
    }
    assert p.other == sum(p.other_by_kind.values())


def test_hooks_removed_and_modes_restored():
    model = small_net()
    bn = nn.BatchNorm2d(1)
    model = nn.Sequential(bn, *model)
    model.train()
    model[2].eval()  # a mixed state is restored as it was
    before = {n: m.training for n, m in model.named_modules()}
    profile_model(model, (1, 8, 8))
    assert {n: m.training for n, m in model.named_modules()} == before
    assert all(not m._forward_hooks for m in model.modules())
    assert bn.num_batches_tracked.item() == 0  # profiled in eval mode: no statistics update


def test_hooks_removed_when_forward_fails():
    model = small_net()
    with pytest.raises(RuntimeError):
        profile_model(model, (1, 9, 9))  # wrong flattened size for the linear layer
    assert all(not m._forward_hooks for m in model.modules())
    assert model.training


def test_wrapped_model_uses_unwrapped_names():
    model = small_net()
    assert profile_model(nn.DataParallel(model), (1, 8, 8)).layers == {
        "0.weight": CONV, "3.weight": LINEAR,
    }


def test_bad_input_shape():
    with pytest.raises(ConfigError, match="input_shape"):
        profile_model(small_net(), (1, 0, 8))


def test_forward_scales_only_sparse_layers():
    p = profile_model(small_net(), (1, 8, 8))
    assert p.forward({}) == p.dense_forward
    assert p.forward({"3.weight": 0.1}) == pytest.approx(CONV + 0.1 * LINEAR + OTHER)
    assert p.forward({"0.weight": 0.5, "3.weight": 0.0}) == CONV / 2 + OTHER
    assert p.forward({"unknown.weight": 0.5}) == p.dense_forward
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        p.forward({"0.weight": 1.5})
    sparse, rel = inference_flops(p, {"0.weight": 0.5})
    assert sparse == CONV / 2 + LINEAR + OTHER
    assert rel == sparse / p.dense_forward


def rigl_profile():
    return ModelFlops(layers={"a": 1000.0, "b": 3000.0}, other=40.0)


DENS = {"a": 0.5, "b": 0.1}


def test_training_rigl_schedule_by_hand():
    p = rigl_profile()
    f_s, f_d = p.forward(DENS), p.dense_forward
    assert (f_s, f_d) == (500 + 300 + 40, 4040)
    t = TrainingFlops(p)
    policy = "update"
    for step in range(1, 11):
        t.add_steps(DENS, samples_per_step=32,
                    dense_gradient=needs_dense_gradient(policy, step % 5 == 0))
    assert t.total == (10 * 2 * f_s + 8 * f_s + 2 * f_d) * 32
    assert t.dense_equivalent == 3 * f_d * 10 * 32
    assert (t.steps, t.samples, t.dense_gradient_steps) == (10, 320, 2)
    # The paper's per-step average with dT = 4 sparse steps between dense-gradient steps.
    dt = 4
    assert t.total / 320 == pytest.approx((3 * f_s * dt + 2 * f_s + f_d) / (dt + 1))
    assert t.relative == t.total / t.dense_equivalent


def test_training_dense_static_and_snfs():
    p = rigl_profile()
    dense = TrainingFlops(p)
    dense.add_steps({}, steps=7, samples_per_step=16)
    assert dense.relative == 1.0
    static = TrainingFlops(p)
    static.add_steps(DENS, steps=7, samples_per_step=16)
    assert static.relative == pytest.approx(p.forward(DENS) / p.dense_forward)
    snfs = TrainingFlops(p)
    snfs.add_steps(DENS, steps=3, samples_per_step=4, dense_gradient=True)
    f_s, f_d = p.forward(DENS), p.dense_forward
    assert snfs.relative == pytest.approx((2 * f_s + f_d) / (3 * f_d))
    assert math.isnan(TrainingFlops(p).relative)
    with pytest.raises(ConfigError):
        static.add_steps(DENS, steps=-1, samples_per_step=4)
    with pytest.raises(ConfigError):
        static.add_steps(DENS, samples_per_step=0)


def test_training_state_dict_round_trip():
    p = rigl_profile()
    t = TrainingFlops(p)
    t.add_steps(DENS, steps=5, samples_per_step=8)
    t.add_steps(DENS, samples_per_step=8, dense_gradient=True)
    state = json.loads(json.dumps(t.state_dict()))  # plain numbers
    u = TrainingFlops(p)
    u.load_state_dict(state)
    assert u.state_dict() == t.state_dict()
    u.add_steps(DENS, samples_per_step=8)
    t.add_steps(DENS, samples_per_step=8)
    assert u.total == t.total and u.relative == t.relative
    with pytest.raises(CheckpointError):
        u.load_state_dict({"total": 1.0})
    other = TrainingFlops(ModelFlops(layers={"a": 1.0}))
    with pytest.warns(UserWarning, match="dense forward"):
        other.load_state_dict(state)


class UpdateGrowth(Criterion):
    dense_gradient = "update"


class AlwaysGrowth:
    dense_gradient = "always"


class PlainGrowth:
    pass


class BadGrowth:
    dense_gradient = "sometimes"


def test_dense_gradient_policy():
    assert dense_gradient_policy(UpdateGrowth()) == "update"
    assert dense_gradient_policy(AlwaysGrowth()) == "always"
    assert dense_gradient_policy(PlainGrowth()) == "never"
    assert dense_gradient_policy(None) == "never"
    assert dense_gradient_policy("random") == "never"
    with pytest.raises(ConfigError, match="dense_gradient"):
        dense_gradient_policy(BadGrowth())
    assert not needs_dense_gradient("never", True)
    assert needs_dense_gradient("update", True) and not needs_dense_gradient("update", False)
    assert needs_dense_gradient("always", False)
    with pytest.raises(ConfigError):
        needs_dense_gradient("sometimes", True)


def test_sparsifier_integration_and_summary():
    model = convnet()
    sparsifier = Sparsifier(model, None, sparsity=0.8, grow=UpdateGrowth(), seed=0)
    p = profile_model(model, (3, 16, 16))
    dens = densities_of(sparsifier)
    assert set(dens) == set(p.layers)
    assert p.forward(sparsifier) == p.forward(dens) < p.dense_forward
    assert dense_gradient_policy(sparsifier) == "update"

    t = TrainingFlops(p)
    t.add_steps(sparsifier, steps=3, samples_per_step=2)
    summary = summarize(p, sparsifier, t)
    assert set(summary) == {
        "inference_flops", "inference_flops_relative", "dense_inference_flops",
        "inference_other_flops", "training_flops", "training_flops_relative",
    }
    assert summary["inference_flops"] == p.forward(dens)
    assert summary["inference_flops_relative"] == p.forward(dens) / p.dense_forward
    assert summary["dense_inference_flops"] == p.dense_forward
    assert summary["training_flops"] == t.total
    assert summary["training_flops_relative"] == pytest.approx(summary["inference_flops_relative"])
    json.dumps(summary)
    no_training = summarize(p, dens)
    assert no_training["training_flops"] is None and no_training["training_flops_relative"] is None


# -- transformers: attention projections, functional matmuls, tied heads ------------------------


def test_mha_projections_and_attention_products():
    e, heads, length = 32, 4, 7
    mha = nn.MultiheadAttention(e, heads, batch_first=True)

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):  # need_weights=True: the bmm path of nn.MultiheadAttention
            return self.mha(x, x, x)[0]

    model = SelfAttention()
    p = profile_model(model, (length, e))
    assert p.layers == {
        "mha.in_proj_weight": 2 * length * e * 3 * e,
        "mha.out_proj.weight": 2 * length * e * e,
    }
    assert p.other_by_kind["attention"] == 2 * 2 * length * length * e  # Q K^T and A V
    assert p.other_by_kind["bias"] == 3 * length * e + length * e
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, length, e))
    assert sum(p.layers.values()) + p.other_by_kind["attention"] == counter.get_total_flops()


def test_fused_attention_kernels_are_counted():
    from itop.models import build_model

    model = build_model("vit-tiny", in_channels=1, num_classes=10, image_size=28)
    p = profile_model(model, (1, 28, 28))
    tokens, e, depth = 50, 64, 4
    assert p.layers["blocks.0.self_attn.in_proj_weight"] == 2 * tokens * e * 3 * e
    assert p.layers["blocks.3.linear1.weight"] == 2 * tokens * e * 2 * e
    assert p.layers["patch_embed.weight"] == 2 * 49 * 16 * e
    assert p.layers["head.weight"] == 2 * e * 10
    assert p.other_by_kind["attention"] == depth * 4 * tokens * tokens * e
    assert len(p.layers) == 2 + 4 * depth


def test_tied_head_is_charged_to_the_embedding_matrix():
    from itop.models import build_model

    model = build_model("gpt-mini", vocab_size=30, block_size=8, n_layer=1, n_embd=16, n_head=2,
                        tie_weights=True)
    p = profile_model(model, (8,), dtype=torch.long)
    assert p.layers["tok_embed.weight"] == 2 * 8 * 16 * 30
    assert "head.weight" not in p.layers and "pos_embed.weight" not in p.layers
    dense = p.forward({})
    half = p.forward({"tok_embed.weight": 0.5})
    assert dense - half == pytest.approx(8 * 16 * 30)


def test_functional_weight_and_parametrized_weight():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(5, 3))
            self.fc = nn.utils.parametrizations.weight_norm(nn.Linear(5, 4))

        def forward(self, x):
            return self.fc(x @ self.w.t())

    p = profile_model(Functional(), (3,))
    # x @ w.T reads the parameter; the weight-normed Linear computes its weight, which is
    # charged to the module's (computed) weight by the innermost-module fallback.
    assert p.layers["w"] == 2 * 3 * 5
    assert p.layers["fc.weight"] == 2 * 5 * 4
    assert "attention" not in p.other_by_kind


def test_hf_gpt2_conv1d_and_tied_head():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=40, n_positions=8)
    model = transformers.GPT2LMHeadModel(config)
    p = profile_model(model, (8,), dtype=torch.long)
    t, e, v = 8, 16, 40
    assert p.layers["transformer.h.0.attn.c_attn.weight"] == 2 * t * e * 3 * e
    assert p.layers["transformer.h.1.mlp.c_fc.weight"] == 2 * t * e * 4 * e
    assert p.layers["transformer.wte.weight"] == 2 * t * e * v  # the tied LM head
    assert p.other_by_kind["attention"] == 2 * 4 * t * t * e
    sp = Sparsifier(model, sparsity=0.9, seed=0)
    assert set(densities_of(sp)) <= set(p.layers)
    assert p.forward(sp) < p.dense_forward

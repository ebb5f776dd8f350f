import copy
import math

import pytest
import torch
from helpers import batches, convnet, mlp
from torch import nn

from itop.errors import ConfigError, DivergenceError
from itop.pruning import (
    PRUNE_AT_INIT,
    global_topk,
    grasp_scores,
    prune_at_init,
    snip_scores,
    synflow_masks,
)
from itop.targets import TargetSelector


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before, modes):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert after[k].dtype == v.dtype
        assert torch.equal(after[k], v), k
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())


def with_random_bn_stats(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return model


def kept(masks):
    return sum(int(m.sum()) for m in masks.values())


def top_k_mask(scores, k):
    """Independent reference: keep the k largest of distinct scores."""
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    threshold = flat.sort(descending=True).values[k - 1]
    return {n: s >= threshold for n, s in scores.items()}


# --------------------------------------------------------------------------------------------
# global_topk


def test_global_topk_breaks_ties_by_order():
    scores = {"a": torch.tensor([1.0, 3.0, 3.0, 0.0]), "b": torch.tensor([[3.0, 2.0], [3.0, 5.0]])}
    masks = global_topk(scores, 4)
    assert masks["a"].tolist() == [False, True, True, False]
    assert masks["b"].tolist() == [[True, False], [False, True]]
    assert masks["a"].dtype == torch.bool and masks["b"].shape == (2, 2)


@pytest.mark.parametrize("n_keep", [1, 7, 50, 99, 120])
def test_global_topk_exact_count_with_many_ties(n_keep):
    g = torch.Generator().manual_seed(3)
    scores = {
        "x": torch.randint(0, 4, (5, 6), generator=g).float(),
        "y": torch.randint(0, 4, (90,), generator=g).double(),
        "z": torch.full((4,), -math.inf),
    }
    masks = global_topk(scores, n_keep)
    assert kept(masks) == n_keep
    assert all(masks[n].shape == s.shape for n, s in scores.items())
    # Every kept score is >= every dropped one.
    flat_s = torch.cat([s.reshape(-1).double() for s in scores.values()])
    flat_m = torch.cat([m.reshape(-1) for m in masks.values()])
    if 0 < n_keep < flat_s.numel():
        assert flat_s[flat_m].min() >= flat_s[~flat_m].max()
    again = global_topk(scores, n_keep)
    assert all(torch.equal(masks[n], again[n]) for n in scores)


def test_global_topk_validates():
    scores = {"a": torch.rand(10)}
    for bad in (0, 11, -1, True, 2.0):
        with pytest.raises(ConfigError, match="n_keep"):
            global_topk(scores, bad)
    with pytest.raises(ConfigError):
        global_topk({}, 1)
    with pytest.raises(DivergenceError, match="'?a'?"):
        global_topk({"a": torch.tensor([1.0, math.nan])}, 1)
    assert global_topk(scores, 10)["a"].all()


# --------------------------------------------------------------------------------------------
# SNIP


def test_snip_keeps_top_k_of_grad_times_weight():
    model = mlp(d_in=20, hidden=(16,), classes=5)
    data = batches(1, shape=(20,), classes=5, batch=24)
    x, y = data[0]
    before, modes = snapshot(model), [m.training for m in model.modules()]

    ref_model = copy.deepcopy(model)
    nn.functional.cross_entropy(ref_model(x), y).backward()
    ref = {
        n: (p.grad * p).abs().detach()
        for n, p in ref_model.named_parameters()
        if n.endswith("weight")
    }

    scores = snip_scores(model, data)
    assert scores.keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(scores[n], ref[n])
    total = sum(s.numel() for s in ref.values())
    masks = prune_at_init("snip", model, 0.2, batches=data)
    assert kept(masks) == round(0.2 * total)
    expected = top_k_mask(ref, round(0.2 * total))
    for n in ref:
        assert torch.equal(masks[n], expected[n]), n
    assert_unchanged(model, before, modes)


def test_snip_sums_gradients_over_batches_and_restores_state():
    model = with_random_bn_stats(convnet(channels=2, classes=3))
    model.eval()
    data = batches(2, shape=(2, 6, 6), classes=3, batch=8)
    before, modes = snapshot(model), [m.training for m in model.modules()]
    targets = TargetSelector().select(model)
    w0 = targets[0].param
    w0.requires_grad_(False)  # frozen weights are scored too, and stay frozen

    ref_model = copy.deepcopy(model).train()
    for p in ref_model.parameters():
        p.requires_grad_(True)
    for x, y in data:
        nn.functional.cross_entropy(ref_model(x), y).backward()
    ref = {t.name: (ref_model.get_parameter(t.name).grad * t.param).abs() for t in targets}

    scores = snip_scores(model, iter(data))  # a one-shot iterator is fine
    for n in ref:
        torch.testing.assert_close(scores[n], ref[n])
    assert not w0.requires_grad
    w0.requires_grad_(True)
    assert_unchanged(model, before, modes)


def test_snip_respects_given_targets_and_loss():
    model = mlp(d_in=20, hidden=(16,), classes=5)
    data = batches(1, shape=(20,), classes=5, batch=8)
    targets = TargetSelector(exclude=("3.*",)).select(model)
    calls = []

    def loss_fn(out, y):
        calls.append(out.shape)
        return nn.functional.cross_entropy(out, y)

    masks = prune_at_init("snip", model, 0.5, batches=data, targets=targets, loss_fn=loss_fn)
    assert list(masks) == ["1.weight"] and calls == [(8, 5)]
    assert kept(masks) == round(0.5 * 20 * 16)


# --------------------------------------------------------------------------------------------
# GraSP


def two_layer():
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double()


def grad_at(model, weights, x, y, temperature):
    """Gradient of the tempered loss w.r.t. the two weights, at the given weight values."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        m[0].weight.copy_(weights[0])
        m[2].weight.copy_(weights[1])
    loss = nn.functional.cross_entropy(m(x) / temperature, y)
    return torch.autograd.grad(loss, [m[0].weight, m[2].weight])


@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_grasp_hessian_gradient_product_matches_finite_differences(temperature):
    model = two_layer()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (16,), generator=g)
    before, modes = snapshot(model), [m.training for m in model.modules()]

    w = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    v = grad_at(model, w, x, y, temperature)
    eps = 1e-4 / math.sqrt(sum(float((vi**2).sum()) for vi in v))
    plus = grad_at(model, [wi + eps * vi for wi, vi in zip(w, v, strict=True)], x, y, temperature)
    minus = grad_at(model, [wi - eps * vi for wi, vi in zip(w, v, strict=True)], x, y, temperature)
    hg = [(p - m) / (2 * eps) for p, m in zip(plus, minus, strict=True)]
    grasp = {"0.weight": -w[0] * hg[0], "2.weight": -w[1] * hg[1]}  # the paper's S(-w)

    keep_scores = grasp_scores(model, [(x, y)], temperature=temperature)
    scale = max(float(s.abs().max()) for s in grasp.values())
    for n in grasp:  # returned scores are negated: higher = keep
        torch.testing.assert_close(-keep_scores[n], grasp[n], rtol=1e-5, atol=1e-6 * scale)

    # The mask removes the highest GraSP scores and keeps the lowest.
    masks = prune_at_init("grasp", model, 0.3, batches=[(x, y)], temperature=temperature)
    total = 6 * 8 + 8 * 4
    assert kept(masks) == round(0.3 * total)
    s = torch.cat([grasp[n].reshape(-1) for n in masks])
    k = torch.cat([masks[n].reshape(-1) for n in masks])
    assert s[k].max() <= s[~k].min() + 1e-6 * scale
    assert_unchanged(model, before, modes)


def test_grasp_runs_on_bn_convnet_without_side_effects():
    model = with_random_bn_stats(convnet(channels=2, classes=3))
    data = batches(2, shape=(2, 6, 6), classes=3, batch=8)
    before, modes = snapshot(model), [m.training for m in model.modules()]
    masks = prune_at_init("grasp", model, 0.1, batches=data)
    total = sum(p.numel() for p in (model[0].weight, model[3].weight, model[7].weight))
    assert kept(masks) == round(0.1 * total)
    assert_unchanged(model, before, modes)


# --------------------------------------------------------------------------------------------
# SynFlow


def collapsing_mlp():
    """With PyTorch's default init the narrow first layer has by far the largest weights, so a
    global magnitude prune at 99% keeps only first-layer weights."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def paths(model, masks):
    """Number of input-to-output paths through the kept weights."""
    v = torch.ones(model[0].in_features, dtype=torch.float64)
    for i in (0, 2, 4):
        v = masks[f"{i}.weight"].double() @ v
    return float(v.sum())


def test_synflow_avoids_layer_collapse_where_magnitude_pruning_collapses():
    model = collapsing_mlp()
    before, modes = snapshot(model), [m.training for m in model.modules()]
    targets = TargetSelector().select(model)
    total = sum(t.param.numel() for t in targets)
    for density, rounds in ((0.01, 100), (0.005, 25)):
        n = round(density * total)
        magnitude = global_topk({t.name: t.param.detach().abs() for t in targets}, n)
        assert any(int(m.sum()) == 0 for m in magnitude.values())  # magnitude collapses
        assert paths(model, magnitude) == 0
        # So does single-shot SynFlow: iterating is what avoids collapse (Tanaka et al. 2020).
        single = synflow_masks(model, (4,), density, rounds=1)
        assert any(int(m.sum()) == 0 for m in single.values())

        masks = synflow_masks(model, (4,), density, rounds=rounds)
        assert kept(masks) == n
        assert all(int(m.sum()) > 0 for m in masks.values())
        assert paths(model, masks) > 0
    assert_unchanged(model, before, modes)


def test_synflow_single_round_is_top_k_of_synaptic_saliency():
    model = mlp(d_in=5, hidden=(7,), classes=3)
    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.abs_()
    ref(torch.ones(1, 5, dtype=torch.float64)).sum().backward()
    saliency = {n: (p * p.grad).abs() for n, p in ref.named_parameters() if n.endswith("weight")}
    total = 5 * 7 + 7 * 3
    masks = synflow_masks(model, (5,), 0.4, rounds=1)
    expected = top_k_mask(saliency, round(0.4 * total))
    for n in saliency:
        assert torch.equal(masks[n], expected[n]), n


@pytest.mark.parametrize("schedule", ["exponential", "linear"])
@pytest.mark.parametrize("density", [0.9, 0.3, 0.02])
def test_synflow_exact_counts(schedule, density):
    model = mlp(d_in=16, hidden=(24,), classes=6)
    total = 16 * 24 + 24 * 6
    masks = synflow_masks(model, (16,), density, rounds=10, schedule=schedule)
    assert kept(masks) == round(density * total)


def test_synflow_leaves_bn_convnet_untouched():
    model = with_random_bn_stats(convnet(channels=2, classes=3))
    model[1].train()  # mixed modes are restored as they were
    model.eval()
    model[3].train()
    before, modes = snapshot(model), [m.training for m in model.modules()]
    params = [id(p) for p in model.parameters()]
    masks = prune_at_init("synflow", model, 0.05, input_shape=(2, 6, 6), rounds=5)
    assert all(int(m.sum()) > 0 for m in masks.values())
    assert [id(p) for p in model.parameters()] == params
    assert_unchanged(model, before, modes)


def test_synflow_reads_input_shape_from_batches_and_needs_one():
    model = mlp(d_in=12, hidden=(8,), classes=3)
    data = batches(1, shape=(12,), classes=3, batch=4)
    masks = prune_at_init("synflow", model, 0.5, batches=data, rounds=2)
    assert kept(masks) == round(0.5 * (12 * 8 + 8 * 3))
    with pytest.raises(ConfigError, match="input_shape"):
        prune_at_init("synflow", model, 0.5)
    for bad in ((), (0, 3), "abc"):
        with pytest.raises(ConfigError, match="input_shape"):
            synflow_masks(model, bad, 0.5)
    with pytest.raises(ConfigError, match="schedule"):
        synflow_masks(model, (12,), 0.5, schedule="cosine")
    with pytest.raises(ConfigError, match="rounds"):
        synflow_masks(model, (12,), 0.5, rounds=0)


# --------------------------------------------------------------------------------------------
# Dispatch and errors


def test_registry_and_full_density():
    assert set(PRUNE_AT_INIT) == {"snip", "grasp", "synflow"}
    model = mlp(d_in=12, hidden=(8,), classes=3)
    data = batches(1, shape=(12,), classes=3, batch=4)
    for method in PRUNE_AT_INIT:
        options = {"rounds": 1} if method == "synflow" else {}
        masks = prune_at_init(method, model, 1.0, batches=data, **options)
        assert all(m.all() for m in masks.values())


@pytest.mark.parametrize("method, label", [("snip", "SNIP"), ("grasp", "GraSP")])
def test_data_methods_need_batches(method, label):
    model = mlp(d_in=12, hidden=(8,), classes=3)
    with pytest.raises(ConfigError, match=f"^{label} needs training batches: "):
        prune_at_init(method, model, 0.5)
    with pytest.raises(ConfigError, match=f"^{label} needs training batches: "):
        prune_at_init(method, model, 0.5, batches=[])


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, math.nan, True, "0.5", None])
def test_bad_density(density):
    model = mlp(d_in=12, hidden=(8,), classes=3)
    data = batches(1, shape=(12,), classes=3, batch=4)
    for method in PRUNE_AT_INIT:
        with pytest.raises(ConfigError, match="density"):
            prune_at_init(method, model, density, batches=data, input_shape=(12,))


def test_density_keeping_nothing_and_unknown_names():
    model = mlp(d_in=12, hidden=(8,), classes=3)
    data = batches(1, shape=(12,), classes=3, batch=4)
    with pytest.raises(ConfigError, match="keeps no weight"):
        prune_at_init("snip", model, 1e-6, batches=data)
    with pytest.raises(
        ConfigError, match="unknown pruning-at-init method 'snp'; did you mean 'snip'"
    ):
        prune_at_init("snp", model, 0.5, batches=data)
    with pytest.raises(ConfigError, match="unknown option"):
        prune_at_init("snip", model, 0.5, batches=data, temperature=2.0)
    with pytest.raises(ConfigError, match="temperature"):
        prune_at_init("grasp", model, 0.5, batches=data, temperature=0)
    with pytest.raises(ConfigError, match="pairs"):
        prune_at_init("snip", model, 0.5, batches=[torch.zeros(4, 12)])


def test_masks_feed_the_sparsifier():
    from itop import Sparsifier

    model = mlp(d_in=20, hidden=(16,), classes=5)
    data = batches(1, shape=(20,), classes=5, batch=8)
    masks = prune_at_init("snip", model, 0.25, batches=data)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    Sparsifier(model, opt, sparsity=0.75, masks=masks)
    for name, mask in masks.items():
        w = model.get_parameter(name)
        assert torch.equal(w != 0, mask), name

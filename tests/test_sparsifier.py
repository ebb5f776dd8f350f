import io

import pytest
import torch
from helpers import batches, convnet, mlp, train_step
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import itop
from itop.errors import CheckpointError


def masks_of(sp):
    return {k: v.clone() for k, v in sp.masks().items()}


def params_by_name(model):
    return dict(model.named_parameters())


def check_invariants(sp, model, expected_counts):
    params = params_by_name(model)
    for name, mask in sp.masks().items():
        assert int(mask.sum()) == expected_counts[name], name
        assert bool((params[name][~mask] == 0).all()), f"inactive weight nonzero in {name}"


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["set", "rigl", "snfs", "set-itop", "rigl-itop"]),
    grow=st.sampled_from([None, "unfired"]),
    sparsity=st.floats(0.5, 0.99),
    interval=st.integers(1, 4),
    opt=st.sampled_from(sorted(OPTIMIZERS)),
    distribution=st.sampled_from(["uniform", "er", "erk"]),
    seed=st.integers(0, 1000),
)
def test_invariants_hold_after_every_step(method, grow, sparsity, interval, opt, distribution, seed):
    torch.manual_seed(seed)
    model = mlp()
    optimizer = OPTIMIZERS[opt](model.parameters())
    extra = {"grow": grow} if grow else {}
    sp = itop.build(method, model, optimizer, sparsity=sparsity, update_interval=interval,
                    total_steps=24, distribution=distribution, seed=seed, **extra)
    counts = {s.name: s.active for s in sp.layer_stats()}
    union = {k: v.clone() for k, v in sp.masks().items()}
    total = sum(m.numel() for m in union.values())
    assert sp.itop_rate() == pytest.approx(sum(int(m.sum()) for m in union.values()) / total)
    last_rate = sp.itop_rate()
    params = params_by_name(model)
    for x, y in batches(24, seed=seed):
        before = masks_of(sp)
        record = train_step(model, optimizer, sp, x, y)
        check_invariants(sp, model, counts)
        after = sp.masks()
        if record is not None:
            for name, m in after.items():
                grown = m & ~before[name]
                # Grown weights start at zero, their optimizer state too unless the method
                # keeps it (SNFS: tested in test_snfs_grown_weights_keep_the_dense_momentum).
                assert bool((params[name][grown] == 0).all())
                for v in optimizer.state[params[name]].values():
                    if sp.reset_optimizer_state and torch.is_tensor(v) and v.shape == m.shape:
                        assert bool((v[grown] == 0).all())
        for name, m in after.items():
            union[name] |= m
        rate = sp.itop_rate()
        assert rate == pytest.approx(sum(int(m.sum()) for m in union.values()) / total)
        assert rate >= last_rate
        last_rate = rate


def test_rigl_grows_exactly_the_top_abs_grad_inactive():
    torch.manual_seed(3)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = itop.build("rigl", model, opt, sparsity=0.9, update_interval=1000, total_steps=10**4, seed=1)
    x, y = batches(1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    params = params_by_name(model)
    before = masks_of(sp)
    weights = {k: params[k].detach().clone() for k in before}
    grads = {k: params[k].grad.clone() for k in before}
    record = sp.update_topology(drop_fraction=0.3)
    after = sp.masks()
    for name, m0 in before.items():
        n = int(0.3 * int(m0.sum()))
        w, g = weights[name].reshape(-1), grads[name].reshape(-1).abs()
        active = m0.reshape(-1).nonzero().squeeze(1)
        dropped = active[w[active].abs().argsort()[:n]]
        keep = m0.reshape(-1).clone()
        keep[dropped] = False
        score = g.clone()
        score[keep] = -1.0
        expected_grow = set(score.argsort(descending=True)[:n].tolist())
        new = after[name].reshape(-1)
        assert set(new.nonzero().squeeze(1).tolist()) == set(keep.nonzero().squeeze(1).tolist()) | expected_grow
    assert record["dropped"] == record["grown"] > 0


def test_set_and_rigl_differ_only_by_grow_criterion():
    a = itop.resolve_config("set")
    b = itop.resolve_config("rigl")
    diff = {k for k, v in a.to_dict().items() if b.to_dict()[k] != v}
    assert diff == {"grow"}


def _run(model, opt, sp, data):
    for x, y in data:
        train_step(model, opt, sp, x, y)


@pytest.mark.parametrize("method", ["set", "rigl", "snfs"])
def test_state_dict_resume_is_bit_identical(method):
    data = batches(20)

    def make():
        torch.manual_seed(7)
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        sp = itop.build(method, model, opt, sparsity=0.9, update_interval=3, total_steps=20, seed=11)
        return model, opt, sp

    model_a, opt_a, sp_a = make()
    _run(model_a, opt_a, sp_a, data)

    model_b, opt_b, sp_b = make()
    _run(model_b, opt_b, sp_b, data[:10])
    buf = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "opt": opt_b.state_dict(), "sp": sp_b.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    torch.manual_seed(999)  # a different global RNG state must not matter
    model_c = mlp()
    opt_c = torch.optim.SGD(model_c.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sp_c = itop.build(method, model_c, opt_c, sparsity=0.9, update_interval=3, total_steps=20, seed=5)
    model_c.load_state_dict(ckpt["model"])
    opt_c.load_state_dict(ckpt["opt"])
    sp_c.load_state_dict(ckpt["sp"])
    _run(model_c, opt_c, sp_c, data[10:])

    for (n, p), q in zip(model_a.named_parameters(), model_c.parameters(), strict=True):
        assert torch.equal(p, q), n
    for k, m in sp_a.masks().items():
        assert torch.equal(m, sp_c.masks()[k])
    assert sp_a.itop_rate() == sp_c.itop_rate()
    assert sp_a.stats() == sp_c.stats()
    def timeless(history):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in history]

    assert len(sp_a.history) == {"snfs": 6}.get(method, 4)  # set/rigl stop at 75% of 20 steps
    assert timeless(sp_a.history) == timeless(sp_c.history)


def test_load_state_dict_rejects_other_models():
    sp = itop.build("static", mlp(), None, sparsity=0.9, seed=0)
    other = itop.build("static", mlp(hidden=(32,)), None, sparsity=0.9, seed=0)
    with pytest.raises(CheckpointError, match="same model"):
        other.load_state_dict(sp.state_dict())
    with pytest.raises(CheckpointError, match="not a sparsifier state"):
        sp.load_state_dict({"weights": 1})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sparsity": 1.0}, "sparsity must be in"),
        ({"sparsity": -0.1}, "sparsity must be in"),
        ({"sparsity": 0.9, "update_interval": 0}, "positive integer"),
        ({"sparsity": 0.9, "update_interval": -3}, "positive integer"),
        ({"sparsity": 0.9, "distribution": "erkk"}, "did you mean"),
        ({"sparsity": 0.99, "keep_first_dense": True}, "cannot be reached"),
        ({"sparsity": 0.9, "sparsty": 0.8}, "did you mean 'sparsity'"),
        ({"sparsity": 0.9, "grow_init": "ones"}, "unknown grow init"),
        ({"sparsity": 0.9, "layer_sparsity": {"nothing.*": 0.5}}, "match no sparsified layer"),
        ({"sparsity": 0.9, "layer_sparsity": {"1.weight": 1.0}}, r"\[0, 1\)"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_fix(kwargs, match):
    model = mlp()
    with pytest.raises(ValueError, match=match):
        itop.build("rigl", model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=100, **kwargs)


def test_unknown_method_and_nothing_to_sparsify():
    with pytest.raises(ValueError, match="did you mean 'rigl'"):
        itop.build("rigll", mlp(), None, sparsity=0.9)
    with pytest.raises(ValueError, match="no weights to sparsify"):
        itop.build("static", nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), None, sparsity=0.9)
    with pytest.raises(ValueError, match="total_steps"):
        itop.build("rigl", mlp(), None, sparsity=0.9)  # cosine drop and 75% stop need the length


def test_dense_and_static_methods():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = itop.build("dense", model, opt, sparsity=0.9)
    assert sp.actual_sparsity() == 0.0 and sp.itop_rate() == 1.0
    _run(model, opt, sp, batches(3))
    assert all((p != 0).all() for n, p in model.named_parameters() if n.endswith("weight"))

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = itop.build("static", model, opt, sparsity=0.95, seed=0)
    m0 = masks_of(sp)
    _run(model, opt, sp, batches(10))
    assert all(torch.equal(m0[k], v) for k, v in sp.masks().items())
    assert sp.itop_rate() == pytest.approx(0.05, abs=1e-3)
    assert sp.history == []


def test_layer_overrides_and_dense_layers():
    model = mlp()
    sp = itop.build("static", model, None, sparsity=0.6, keep_last_dense=True,
                    layer_sparsity={"1.weight": 0.5}, seed=0)
    stats = {s.name: s for s in sp.layer_stats()}
    assert stats["5.weight"].density == 1.0
    assert stats["1.weight"].density == pytest.approx(0.5, abs=1 / 6144)
    assert sp.num_active() == round(0.4 * sp.num_weights())
    assert "5.weight" in sp.masks() and bool(sp.masks()["5.weight"].all())


def test_exclude_filter():
    model = mlp()
    sp = itop.build("static", model, None, sparsity=0.8, exclude=["5.*"], seed=0)
    assert sp.layer_names() == ["1.weight", "3.weight"]


def test_no_optimizer_mode_masks_in_step():
    model = mlp()
    sp = itop.build("static", model, None, sparsity=0.9, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    sp.step()
    check_invariants(sp, model, {s.name: s.active for s in sp.layer_stats()})


def test_finalize_removes_hook_and_leaves_sparse_weights():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = itop.build("set", model, opt, sparsity=0.9, update_interval=2, total_steps=10, seed=0)
    _run(model, opt, sp, batches(4))
    masks = masks_of(sp)
    out = sp.finalize()
    assert out is model
    params = params_by_name(model)
    for k, m in masks.items():
        assert bool((params[k][~m] == 0).all())
    # No hook any more: another optimizer step moves the inactive weights.
    _run(model, opt, None, batches(1))
    assert any(bool((params[k][~m] != 0).any()) for k, m in masks.items())
    with pytest.raises(RuntimeError, match="finalized"):
        sp.step()


def test_sparse_init_rescales_to_sparse_fan_in():
    torch.manual_seed(0)
    dense = mlp(d_in=512, hidden=(256,))
    ref = {k: v.clone() for k, v in dense.state_dict().items()}
    model = mlp(d_in=512, hidden=(256,))
    model.load_state_dict(ref)
    sp = itop.build("static", model, None, sparsity=0.9, distribution="uniform", sparse_init=True, seed=0)
    w, m = model[1].weight.detach(), sp.masks()["1.weight"]
    fan = m.sum(1, keepdim=True).float()
    expected = ref["1.weight"] * m * (512 / fan).sqrt()
    assert torch.allclose(w, expected)
    # Output variance is preserved roughly: compare to dense.
    x = torch.randn(2048, 512)
    ratio = (x @ w.T).std() / (x @ ref["1.weight"].T).std()
    assert 0.8 < ratio < 1.25


def test_bf16_weights():
    model = mlp().to(torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = itop.build("rigl", model, opt, sparsity=0.9, update_interval=2, total_steps=10, seed=0)
    counts = {s.name: s.active for s in sp.layer_stats()}
    for x, y in batches(6):
        train_step(model, opt, sp, x.to(torch.bfloat16), y)
        check_invariants(sp, model, counts)
    assert len(sp.history) >= 2


def test_channels_last_conv():
    model = convnet().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = itop.build("rigl", model, opt, sparsity=0.8, update_interval=2, total_steps=10, seed=0)
    counts = {s.name: s.active for s in sp.layer_stats()}
    for x, y in batches(6, shape=(3, 8, 8)):
        train_step(model, opt, sp, x.to(memory_format=torch.channels_last), y)
        check_invariants(sp, model, counts)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_unwraps_ddp_style_wrappers_for_names():
    class Wrapper(nn.Module):
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    inner = mlp()
    sp = itop.build("static", Wrapper(inner), None, sparsity=0.9, seed=0)
    assert sp.layer_names() == ["1.weight", "3.weight", "5.weight"]


def test_stats_and_repr():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = itop.build("rigl-itop", model, opt, sparsity=0.9, update_interval=2, total_steps=10, seed=0)
    _run(model, opt, sp, batches(5))
    s = sp.stats()
    assert s["step"] == 5 and s["updates"] == 2
    assert s["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert 0.1 < s["reliable_itop_rate"] <= s["itop_rate"] <= 1.0
    assert {"layer/1.weight/density", "layer/1.weight/itop_rate", "lifetime/mean"} <= set(s)
    assert "Sparsifier(" in repr(sp)


def test_step_returns_update_records():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = itop.build("set", model, opt, sparsity=0.9, update_interval=3, update_end=1.0,
                    drop_schedule="constant", drop_fraction=0.2, seed=0)
    records = [train_step(model, opt, sp, x, y) for x, y in batches(7)]
    assert [r is not None for r in records] == [False, False, True, False, False, True, False]
    assert records[2]["drop_fraction"] == 0.2
    selected = sum(int(0.2 * s.active) for s in sp.layer_stats())
    # Weights selected for both dropping and growing are kept: neither dropped nor grown.
    assert records[2]["dropped"] + records[2]["regrown"] == selected
    assert records[2]["grown"] == records[2]["dropped"]


def test_grad_scaler_skipped_steps_keep_zeros_and_skip_updates():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = itop.build("rigl", model, opt, sparsity=0.9, update_interval=1, total_steps=100, seed=0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    counts = {s.name: s.active for s in sp.layer_stats()}
    x, y = batches(1)[0]
    for overflow in (False, True, False):
        opt.zero_grad()
        scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
        if overflow:
            model[1].weight.grad[0, 0] = float("inf")
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        scale = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        skipped = scaler.get_scale() < scale
        assert skipped == overflow
        record = sp.step(skip_update=skipped)
        assert (record is None) == overflow
        if overflow:  # nothing moved, no topology change, zeros still zero
            assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
        check_invariants(sp, model, counts)
    assert len(sp.history) == 2


# -- fidelity to the authors' code: dropped-and-regrown weights, last step, drop rounding ------


OPTIMIZERS_WITH_STATE = {
    "sgd-momentum": (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True), ("momentum_buffer",)),
    "adam": (lambda p: torch.optim.Adam(p, lr=1e-2), ("exp_avg", "exp_avg_sq")),
}


def _one_layer_with_forced_overlap(opt_name, keep_regrown):
    """A 6x8 Linear layer at 50% (24 active) after three training steps, and criteria that drop
    the 6 active weights of lowest flat index and grow 3 of them back plus the 3 inactive
    weights of lowest index."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6))
    make, keys = OPTIMIZERS_WITH_STATE[opt_name]
    opt = make(model.parameters())
    sp = itop.build("set", model, opt, sparsity=0.5, distribution="uniform", update_interval=1000,
                    total_steps=10**4, seed=3, keep_regrown=keep_regrown)
    for x, y in batches(3, shape=(8,), classes=6):
        train_step(model, opt, sp, x, y)
    mask = sp.masks()["0.weight"].reshape(-1)
    active = mask.nonzero().squeeze(1)
    inactive = (~mask).nonzero().squeeze(1)
    drop, back, new = active[:6], active[:3], inactive[:3]
    grow_to = torch.cat([back, new])

    def prune_scores(ctx):  # lowest flat index first
        return torch.arange(ctx.weight.numel(), dtype=torch.float32).view_as(ctx.weight)

    def grow_scores(ctx):
        s = torch.zeros(ctx.weight.numel())
        s[grow_to] = 1.0
        return s.view_as(ctx.weight)

    sp.prune = itop.criteria.get_prune(prune_scores)
    sp.grow = itop.criteria.get_grow(grow_scores)
    return model, opt, sp, keys, mask.clone(), drop, back, new


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS_WITH_STATE))
def test_weight_dropped_and_regrown_in_one_update_is_never_dropped(opt_name):
    model, opt, sp, keys, mask0, drop, back, new = _one_layer_with_forced_overlap(opt_name, True)
    w = model[0].weight
    value0 = w.detach().reshape(-1).clone()
    state0 = {k: opt.state[w][k].reshape(-1).clone() for k in keys}
    grown_total0 = sp.tracker.layers["0.weight"].grown_total
    record = sp.update_topology(drop_fraction=0.25)

    gone = drop[3:]
    assert (record["dropped"], record["grown"], record["regrown"]) == (3, 3, 3)
    mask = sp.masks()["0.weight"].reshape(-1)
    expected = mask0.clone()
    expected[gone] = False
    expected[new] = True
    assert torch.equal(mask, expected) and int(mask.sum()) == 24
    value = w.detach().reshape(-1)
    assert torch.equal(value[back], value0[back]) and bool((value0[back] != 0).all())
    assert bool((value[gone] == 0).all()) and bool((value[new] == 0).all())
    for k in keys:
        state = opt.state[w][k].reshape(-1)
        assert torch.equal(state[back], state0[k][back]) and bool((state0[k][back] != 0).all()), k
        assert bool((state[gone] == 0).all()) and bool((state[new] == 0).all()), k
    # The tracker: lifetimes only for the three really dropped, the regrown ones' stretch goes
    # on (active since step 0), only the three new weights count as grown.
    track = sp.tracker.layers["0.weight"]
    assert sp.tracker.lifetimes == {3: 3}
    assert track.grown_total - grown_total0 == 3
    ages = sp.tracker.ages("0.weight", sp.step_count)
    assert ages[back].tolist() == [3, 3, 3] and ages[new].tolist() == [0, 0, 0]
    assert record["newly_explored"] == 3
    # Training goes on with the regrown weights' momentum: they move on the next step.
    x, y = batches(1, shape=(8,), classes=6, seed=9)[0]
    train_step(model, opt, sp, x, y)
    assert bool((w.detach().reshape(-1)[~mask] == 0).all())


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS_WITH_STATE))
def test_keep_regrown_off_resets_regrown_weights_like_any_grown(opt_name):
    model, opt, sp, keys, mask0, drop, back, new = _one_layer_with_forced_overlap(opt_name, False)
    w = model[0].weight
    record = sp.update_topology(drop_fraction=0.25)
    assert (record["dropped"], record["grown"], record["regrown"]) == (6, 6, 3)
    value = w.detach().reshape(-1)
    assert bool((value[back] == 0).all()) and bool((value[new] == 0).all())
    for k in keys:
        assert bool((opt.state[w][k].reshape(-1)[back] == 0).all()), k
    assert sp.tracker.lifetimes == {3: 6}
    assert sp.tracker.ages("0.weight", sp.step_count)[back].tolist() == [0, 0, 0]
    assert int(sp.masks()["0.weight"].sum()) == 24


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["set", "rigl", "snfs", "set-itop"]),
    opt=st.sampled_from(sorted(OPTIMIZERS_WITH_STATE)),
    sparsity=st.floats(0.2, 0.8),
    seed=st.integers(0, 1000),
)
def test_updates_change_only_the_net_topology(method, opt, sparsity, seed):
    """At every update, a weight active before and after keeps its value and optimizer state;
    a weight active only after starts from zero value and zero state (SNFS: the state its
    position had, the dense momentum); counts stay exact."""
    torch.manual_seed(seed)
    model = mlp()
    optimizer = OPTIMIZERS_WITH_STATE[opt][0](model.parameters())
    sp = itop.build(method, model, optimizer, sparsity=sparsity, update_interval=2, drop_fraction=0.6,
                    drop_schedule="constant", update_end=1.0, total_steps=13, seed=seed)
    counts = {s.name: s.active for s in sp.layer_stats()}
    params = params_by_name(model)
    regrown = 0
    for x, y in batches(12, seed=seed):
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        before = masks_of(sp)
        values = {k: params[k].detach().clone() for k in before}
        states = {k: {n: v.clone() for n, v in optimizer.state[params[k]].items()
                      if torch.is_tensor(v) and v.shape == params[k].shape} for k in before}
        record = sp.step()
        optimizer.zero_grad()
        check_invariants(sp, model, counts)
        if record is None:
            continue
        regrown += record["regrown"]
        assert record["dropped"] == record["grown"]
        for k, m in sp.masks().items():
            stay, new = m & before[k], m & ~before[k]
            assert torch.equal(params[k].detach()[stay], values[k][stay]), k
            assert bool((params[k].detach()[new] == 0).all()), k
            for n, v in states[k].items():
                assert torch.equal(optimizer.state[params[k]][n][stay], v[stay]), (k, n)
                expected = torch.zeros_like(v[new]) if sp.reset_optimizer_state else v[new]
                assert torch.equal(optimizer.state[params[k]][n][new], expected), (k, n)
    if method in ("set", "set-itop"):  # random regrowth at low sparsity: overlaps are certain
        assert regrown > 0


def _snfs_update(**overrides):
    """An SNFS sparsifier on the MLP after 5 SGD steps, its state just before the update at
    step 6, and the update's record."""
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sp = itop.build("snfs", model, opt, sparsity=0.9, update_interval=6, total_steps=100, seed=0,
                    **overrides)
    data = batches(7)
    for x, y in data[:5]:
        train_step(model, opt, sp, x, y)
    x, y = data[5]
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    params = params_by_name(model)
    before = masks_of(sp)
    momentum = {k: opt.state[params[k]]["momentum_buffer"].clone() for k in before}
    record = sp.step()
    opt.zero_grad()
    assert record is not None and record["grown"] > 0
    return model, opt, sp, params, before, momentum, data[6]


def test_snfs_grown_weights_keep_the_dense_momentum():
    """Dettmers & Zettlemoyer's code masks weights only: the momentum of an inactive weight
    accumulates its dense gradient, momentum growth picks the largest, and the grown weight
    starts from zero with that momentum, so it moves on the very next step."""
    model, opt, sp, params, before, momentum, (x, y) = _snfs_update()
    assert sp.reset_optimizer_state is False  # the preset's default
    for k, m in sp.masks().items():
        new = m & ~before[k]
        buf = opt.state[params[k]]["momentum_buffer"]
        assert bool((params[k].detach()[new] == 0).all()), k
        assert torch.equal(buf, momentum[k]), k  # the update touched no state at all
        if new.any():
            assert bool((buf[new] != 0).all()), k  # a dense momentum, not a fresh one
            # momentum growth: every grown weight's |momentum| is at least that of any
            # candidate left inactive (the kept weights are not candidates)
            left = ~m
            if left.any():
                assert float(buf[new].abs().min()) >= float(buf[left].abs().max()), k
    grown = {k: m & ~before[k] for k, m in sp.masks().items()}
    train_step(model, opt, sp, x, y)
    moved = sum(int((params[k].detach()[g] != 0).sum()) for k, g in grown.items())
    assert moved == sum(int(g.sum()) for g in grown.values())


def test_snfs_with_reset_optimizer_state_starts_grown_weights_without_history():
    _, opt, sp, params, before, momentum, _ = _snfs_update(reset_optimizer_state=True)
    for k, m in sp.masks().items():
        buf = opt.state[params[k]]["momentum_buffer"]
        new, gone, stay = m & ~before[k], before[k] & ~m, m & before[k]
        assert bool((buf[new] == 0).all()) and bool((buf[gone] == 0).all()), k
        assert torch.equal(buf[stay], momentum[k][stay]), k


def test_kept_optimizer_state_needs_dense_execution():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with pytest.raises(itop.errors.ConfigError, match="reset_optimizer_state"):
        itop.build("rigl", model, opt, sparsity=0.9, total_steps=100, reset_optimizer_state=False,
                   execution="sparse")
    with pytest.raises(itop.errors.ConfigError, match="reset_optimizer_state must be true or false"):
        itop.build("snfs", mlp(), None, sparsity=0.9, total_steps=100, reset_optimizer_state="no")


@pytest.mark.parametrize("method", ["set", "rigl-itop", "snfs"])
def test_no_topology_update_on_the_last_step(method):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = itop.build(method, model, opt, sparsity=0.9, update_interval=4, update_end=1.0,
                    total_steps=12, seed=0)
    _run(model, opt, sp, batches(12))
    assert [r["step"] for r in sp.history] == [4, 8]  # not 12, the last step
    assert sp.update_schedule.num_updates(12) == 2


def test_drop_rounding_floor_and_ceil():
    def run(rounding):
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        sp = itop.build("rigl", model, opt, sparsity=0.9, update_interval=1000, total_steps=10**4,
                        seed=0, drop_rounding=rounding)
        x, y = batches(1)[0]
        train_step(model, opt, sp, x, y)
        counts = [s.active for s in sp.layer_stats()]
        return counts, sp.update_topology(drop_fraction=0.005)

    counts, floor = run("floor")
    assert all(0.005 * c < 1 for c in counts[-1:])  # the last layer drops nothing when floored
    assert floor["dropped"] + floor["regrown"] == sum(int(0.005 * c) for c in counts)
    counts, ceil = run("ceil")
    assert ceil["dropped"] + ceil["regrown"] == sum(-(-0.005 * c // 1) for c in counts)
    assert ceil["dropped"] + ceil["regrown"] > floor["dropped"] + floor["regrown"]
    with pytest.raises(ValueError, match="unknown drop rounding"):
        itop.build("rigl", mlp(), None, sparsity=0.9, total_steps=100, drop_rounding="round")


def test_drop_rounding_tolerates_float_error():
    from itop.sparsifier import DROP_ROUNDINGS

    assert 0.29 * 100 < 29 and DROP_ROUNDINGS["floor"](0.29 * 100) == 29
    assert 0.07 * 100 > 7 and DROP_ROUNDINGS["ceil"](0.07 * 100) == 7
    assert DROP_ROUNDINGS["ceil"](0.005 * 139) == 1 and DROP_ROUNDINGS["floor"](0.005 * 139) == 0


# -- checks of what the library is given (issue 14) ------------------------------------------------


def test_an_optimizer_that_does_not_train_the_model_is_refused():
    model, other = mlp(), mlp()
    with pytest.raises(itop.ConfigError, match=r"does not hold 3 of the sparsified weights \(e.g. '1.weight'\)"):
        itop.build("set", model, torch.optim.SGD(other.parameters(), lr=0.1), sparsity=0.9, total_steps=10)
    partial = torch.optim.SGD(model[1].parameters(), lr=0.1)  # only the first layer
    with pytest.raises(itop.ConfigError, match="does not hold 2 of"):
        itop.build("set", model, partial, sparsity=0.9, total_steps=10)
    # Layers kept dense need no masking: an optimizer without them is fine.
    itop.build("static", model, partial, sparsity=0.9, exclude=["3.weight", "5.weight"])


@pytest.mark.parametrize("replace", ["assign", "meta"])
def test_parameters_replaced_after_build_are_named(replace):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = itop.build("rigl", model, opt, sparsity=0.9, update_interval=2, total_steps=10)
    if replace == "assign":  # what a module conversion that overwrites parameters does
        model[3].weight = nn.Parameter(model[3].weight.detach().clone())
        x, y = batches(1)[0]
        with pytest.raises(itop.ConfigError, match=r"parameter '3.weight' was replaced after the sparsifier was built"):
            train_step(model, opt, sp, x, y)
    else:
        model.to("meta")
        with pytest.raises(itop.ConfigError, match="'1.weight' was replaced .* build the sparsifier"):
            sp.step()


def test_layers_too_small_for_their_density_warn(caplog):
    import logging

    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(2, 1))
    with caplog.at_level(logging.WARNING, logger="itop.sparsifier"):
        sp = itop.Sparsifier(model, sparsity=0.9, distribution="uniform")
    assert sp.layer_stats()[1].active == 1
    assert "1 layer(s) too small for their density keep 1 weight" in caplog.text and "2.weight" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="itop.sparsifier"):
        sp = itop.Sparsifier(mlp(), sparsity=0.99999)
    assert ("sparsity 0.99999 asks for 0 active weight(s), but every sparse layer keeps at least one: 3 are "
            "active") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="itop.sparsifier"):
        itop.Sparsifier(mlp(), sparsity=0.9)
    assert caplog.text == ""


@pytest.mark.parametrize("execution", ["dense", "sparse"])
def test_num_parameters_counts_active_weights_and_every_unmanaged_parameter(execution):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 5), nn.LayerNorm(5))
    dense_total = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = itop.build("set", model, opt, sparsity=0.9, total_steps=10, update_interval=2,
                    execution=execution)
    weights = 30 * 40 + 40 * 5
    assert sp.num_weights() == weights
    assert sp.num_parameters() == dense_total - weights + sp.num_active()
    if execution == "dense":  # what a reader would count: the model's non-zero parameters
        nonzero = sum(int((p != 0).sum()) for p in model.parameters())
        assert sp.num_parameters() >= nonzero

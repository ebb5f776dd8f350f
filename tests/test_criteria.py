import pytest
import torch

from itop._backend import RandomState
from itop.criteria import (
    GradientGrowth,
    LayerContext,
    MagnitudePrune,
    MomentumGrowth,
    RandomGrowth,
    RandomPrune,
    ScoreCriterion,
    SignedMagnitudePrune,
    TaylorPrune,
    UnfiredGrowth,
    get_grow,
    get_prune,
)
from itop.errors import ConfigError, DivergenceError


def make_ctx(numel=200, active_frac=0.3, state=None, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(numel // 10, 10, generator=g))
    active = torch.randperm(numel, generator=g)[: int(active_frac * numel)]
    mask = torch.zeros(numel)
    mask[active] = 1
    mask = mask.view_as(w)
    with torch.no_grad():
        w.mul_(mask)
    if grad:
        w.grad = torch.randn(w.shape, generator=g)
    ever = mask.reshape(-1) != 0
    return LayerContext("w", w, mask, active, state or {}, ever, 10, RandomState(seed))


def test_magnitude_drops_smallest_active():
    ctx = make_ctx()
    drop = MagnitudePrune().select_drop(ctx, 15)
    mags = ctx.weight.detach().reshape(-1).abs()
    expected = ctx.active[mags[ctx.active].argsort()[:15]]
    assert set(drop.tolist()) == set(expected.tolist())


def test_default_select_equals_fast_path():
    ctx = make_ctx()
    slow = ScoreCriterion(lambda c: c.weight.detach().abs())
    assert set(slow.select_drop(ctx, 20).tolist()) == set(MagnitudePrune().select_drop(ctx, 20).tolist())
    assert set(TaylorPrune().select_drop(ctx, 20).tolist()) == set(
        ScoreCriterion(TaylorPrune().scores).select_drop(ctx, 20).tolist()
    )


def test_signed_magnitude_drops_each_sign_closest_to_zero():
    ctx = make_ctx(numel=1000, active_frac=0.5)
    n = 100
    drop = SignedMagnitudePrune().select_drop(ctx, n)
    assert drop.numel() == n and drop.unique().numel() == n
    w = ctx.weight.detach().reshape(-1)
    vals = w[ctx.active]
    pos, neg = vals[vals >= 0], vals[vals < 0]
    dpos, dneg = w[drop][w[drop] >= 0], w[drop][w[drop] < 0]
    # Split in proportion to the sign counts, and within each sign the ones closest to zero.
    assert abs(dpos.numel() - round(n * pos.numel() / vals.numel())) <= 1
    assert dpos.max() <= pos.sort().values[dpos.numel()]
    assert dneg.min() >= neg.sort(descending=True).values[dneg.numel()]
    # The score form ranks within each sign.
    s = SignedMagnitudePrune().scores(ctx)
    assert s.shape == ctx.weight.shape


def test_gradient_growth_takes_top_abs_grad_outside_keep():
    ctx = make_ctx()
    keep = ctx.active[:40]
    grow = GradientGrowth().select_grow(ctx, keep, 25)
    g = ctx.grad.reshape(-1).abs().clone()
    g[keep] = -1
    assert set(grow.tolist()) == set(g.argsort(descending=True)[:25].tolist())


def test_gradient_growth_needs_grad():
    ctx = make_ctx(grad=False)
    with pytest.raises(ConfigError, match="after loss.backward"):
        GradientGrowth().select_grow(ctx, ctx.active, 5)


def test_non_finite_scores_raise_divergence():
    ctx = make_ctx()
    ctx.weight.grad[0, 0] = float("nan")
    with pytest.raises(DivergenceError, match="diverged"):
        GradientGrowth().select_grow(ctx, ctx.active, 5)


def test_momentum_growth_reads_sgd_and_adam_state():
    ctx = make_ctx()
    buf = torch.randn(ctx.weight.shape)
    ctx.optimizer_state = {"momentum_buffer": buf}
    assert torch.equal(MomentumGrowth().scores(ctx), buf.abs())
    m, v = torch.randn(ctx.weight.shape), torch.rand(ctx.weight.shape)
    ctx.optimizer_state = {"exp_avg": m, "exp_avg_sq": v, "step": torch.tensor(3.0)}
    assert torch.allclose(MomentumGrowth().scores(ctx), m.abs() / (v.sqrt() + 1e-8))
    ctx.optimizer_state = {}
    with pytest.raises(ConfigError, match="momentum"):
        MomentumGrowth().scores(ctx)


def keep_only(ctx, keep):
    """As during an update: the mask holds exactly the kept weights when growth runs."""
    ctx.mask = torch.zeros_like(ctx.mask)
    ctx.mask.view(-1)[keep] = 1
    return keep


@pytest.mark.parametrize("criterion", [RandomGrowth(), UnfiredGrowth()])
def test_random_growth_exact_distinct_outside_keep(criterion):
    ctx = make_ctx(numel=2000, active_frac=0.1)
    keep = keep_only(ctx, ctx.active[:150])
    grow = criterion.select_grow(ctx, keep, 120)
    assert grow.numel() == 120 and grow.unique().numel() == 120
    assert not set(grow.tolist()) & set(keep.tolist())


def test_unfired_prefers_never_active_then_falls_back():
    ctx = make_ctx(numel=200, active_frac=0.3)
    inactive = [i for i in range(200) if i not in set(ctx.active.tolist())]
    unfired = inactive[:10]  # only ten never-active positions (active ones are always fired)
    ever = torch.ones(200, dtype=torch.bool)
    ever[unfired] = False
    ctx.ever_active = ever
    keep = keep_only(ctx, ctx.active[:40])
    grow = UnfiredGrowth().select_grow(ctx, keep, 25)
    assert set(unfired) <= set(grow.tolist())
    assert grow.unique().numel() == 25
    assert not set(grow.tolist()) & set(keep.tolist())
    ever[:] = True
    ever[inactive[:100]] = False
    grow = UnfiredGrowth().select_grow(ctx, keep, 25)
    assert set(grow.tolist()) <= set(inactive[:100])


def test_random_prune_is_among_active():
    ctx = make_ctx()
    drop = RandomPrune().select_drop(ctx, 30)
    assert set(drop.tolist()) <= set(ctx.active.tolist()) and drop.unique().numel() == 30


def test_lookup():
    assert isinstance(get_prune("magnitude"), MagnitudePrune)
    assert isinstance(get_grow("gradient"), GradientGrowth)
    assert isinstance(get_grow(lambda c: c.weight), ScoreCriterion)
    with pytest.raises(ConfigError, match="did you mean 'gradient'"):
        get_grow("gradeint")
    with pytest.raises(ConfigError):
        get_prune(3)

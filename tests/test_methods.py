import pytest
import torch
from helpers import mlp

import itop
from itop.errors import ConfigError


def test_registry_has_the_paper_methods():
    names = {m.name for m in itop.list_methods()}
    assert {"dense", "static", "set", "rigl", "snfs", "set-itop", "rigl-itop"} <= names


def test_itop_presets_follow_the_paper():
    for name, grow, interval in (("set-itop", "random", 1500), ("rigl-itop", "gradient", 4000)):
        c = itop.resolve_config(name)
        assert (c.distribution, c.prune, c.grow) == ("erk", "magnitude", grow)
        assert c.update_interval == interval
        assert (c.drop_fraction, c.final_drop_fraction, c.drop_schedule) == (0.5, 0.005, "cosine")
        assert c.update_end == 1.0 and c.sparse_init is False and c.grow_init == "zero"


def test_overrides_and_forced_values():
    assert itop.resolve_config("rigl", update_interval=7).update_interval == 7
    assert itop.resolve_config("dense", sparsity=0.9).sparsity == 0.0
    assert itop.resolve_config("static", update_interval=5).update_interval is None
    with pytest.raises(ConfigError, match="did you mean 'update_interval'"):
        itop.resolve_config("rigl", update_intervl=7)


def test_rigl_stops_updates_at_75_percent():
    model = mlp()
    sp = itop.build("rigl", model, torch.optim.SGD(model.parameters(), lr=0.1), sparsity=0.9,
                    total_steps=1000)
    assert sp.update_schedule.end == 750
    assert sp.drop_schedule(0) == pytest.approx(0.3) and sp.drop_schedule(750) == pytest.approx(0.0)


def test_register_custom_method():
    itop.register_method("taylor-unfired", "test method", prune="taylor", grow="unfired",
                         update_interval=2, drop_schedule="constant")
    try:
        model = mlp()
        sp = itop.build("taylor-unfired", model, torch.optim.SGD(model.parameters(), lr=0.1),
                        sparsity=0.9)
        assert type(sp.prune).__name__ == "TaylorPrune" and type(sp.grow).__name__ == "UnfiredGrowth"
        with pytest.raises(ConfigError, match="unknown sparsifier option"):
            itop.register_method("bad", "x", update_every=3)
    finally:
        itop.METHODS.unregister("taylor-unfired")


def test_erk_power_scale_is_passed():
    a = itop.build("static", mlp(), None, sparsity=0.9, seed=0)
    b = itop.build("static", mlp(), None, sparsity=0.9, erk_power_scale=0.0, seed=0)
    da = [s.density for s in a.layer_stats()]
    db = [s.density for s in b.layer_stats()]
    assert da != db
    assert db == pytest.approx([0.1, 0.1, 0.1], abs=2e-3)


def test_total_steps_validated():
    with pytest.raises(ConfigError, match="total_steps"):
        itop.build("set-itop", mlp(), None, sparsity=0.9, total_steps=0)


def _gmp(sparsity=0.9, total=1000, **kw):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sp = itop.build("gmp", model, opt, sparsity=sparsity, update_interval=50, total_steps=total, seed=0, **kw)
    return model, opt, sp


def test_gmp_follows_the_cubic_schedule_and_ends_at_the_target():
    from itop.distributions import allocate, uniform
    from itop.schedules import CubicSparsity

    model, opt, sp = _gmp()
    assert sp.actual_sparsity() == 0.0 and sp.itop_rate() == 1.0  # dense start
    shapes = {s.name: s.shape for s in sp.layer_stats()}
    total = sp.num_weights()
    cubic = CubicSparsity(0.0, 0.9, 100, 750)  # prune_start 0.1, last multiple of 50 <= 0.75 * 1000
    for t in range(1, 1001):  # counts depend only on the schedule: no training needed
        sp.step()
        if t in (100, 150, 300, 500, 750, 1000):
            s_t = cubic(t) if t > 100 else 0.0
            expected = allocate(shapes, uniform(shapes, 1 - s_t) if s_t > 0 else dict.fromkeys(shapes, 1.0),
                                total=round((1 - s_t) * total))
            assert {s.name: s.active for s in sp.layer_stats()} == expected, t
    assert sp.num_active() == round(0.1 * total)
    assert sp.itop_rate() == 1.0  # every weight was active at the dense start
    assert all(r["grown"] == 0 for r in sp.history) and len(sp.history) == 13


def test_gmp_global_pruning_keeps_the_global_top_magnitudes():
    model, opt, sp = _gmp(global_pruning=True, prune_start=0.0, prune_end=0.05)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if n in sp.layer_names()}
    sp._step = 50
    sp.update_topology()
    assert sp.num_active() == round(0.1 * sp.num_weights())
    allw = torch.cat([w.abs().reshape(-1) for w in weights.values()])
    threshold = allw.sort(descending=True).values[sp.num_active() - 1]
    for name, m in sp.masks().items():
        assert bool((weights[name].abs()[m] >= threshold).all())


@pytest.mark.parametrize("global_pruning", [False, True])
def test_gmp_reaches_its_final_sparsity_only_at_the_last_pruning_step(global_pruning):
    # The schedule ends at step 750 (the last multiple of ΔT=50 <= 0.75 * 1000).
    model, opt, sp = _gmp(global_pruning=global_pruning)
    reached = []
    for _ in range(1000):
        sp.step()
        reached.append(sp.at_final_sparsity())
    assert not any(reached[:749]) and all(reached[749:])
    static = itop.build("static", mlp(), None, sparsity=0.9, seed=0)
    assert static.at_final_sparsity()


def test_gmp_bad_window():
    with pytest.raises(ConfigError, match="cannot reach sparsity"):
        _gmp(prune_start=0.1, prune_end=0.12)  # no multiple of ΔT=50 inside steps 100..120
    with pytest.raises(ConfigError, match="prune_start < prune_end"):
        _gmp(prune_start=0.8, prune_end=0.5)


def test_pruning_at_init_methods_need_their_inputs():
    model = mlp()
    with pytest.raises(ConfigError, match="batches"):
        itop.build("snip", model, None, sparsity=0.9)
    with pytest.raises(ConfigError, match="batches"):
        itop.build("grasp", model, None, sparsity=0.9)
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    sp = itop.build("snip", model, None, sparsity=0.9, batches=[(x, y)])
    assert sp.num_active() == round(0.1 * sp.num_weights())
    assert sp.itop_rate() == pytest.approx(0.1, abs=1e-3)
    sp = itop.build("synflow", mlp(), None, sparsity=0.95, input_shape=(64,), synflow_rounds=10)
    assert sp.num_active() == round(0.05 * sp.num_weights())


def test_rounds_must_be_positive():
    with pytest.raises(ConfigError, match="rounds must be an integer >= 1"):
        itop.resolve_config("imp", rounds=0).validate()

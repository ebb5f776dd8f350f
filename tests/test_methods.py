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
        itop.METHODS.pop("taylor-unfired", None)


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

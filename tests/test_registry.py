import pytest

import itop
from itop.criteria import GROW_CRITERIA, PRUNE_CRITERIA
from itop.distributions import DISTRIBUTIONS
from itop.errors import ConfigError
from itop.methods import METHODS
from itop.pruning import PRUNE_AT_INIT
from itop.registry import Registry
from itop.schedules import DROP_SCHEDULES
from itop.sparsifier import DROP_ROUNDINGS, GROW_INITS
from itop.training.factories import AMP_MODES, LR_SCHEDULES, OPTIMIZERS


def test_duplicates_are_refused_unless_replaced():
    r = Registry("widget")
    r.register("a", 1)
    with pytest.raises(ConfigError, match="widget 'a' is already registered"):
        r.register("a", 2)
    assert r.lookup("a") == 1
    r.register("a", 3, replace=True)
    assert r["a"] == 3 and list(r) == ["a"] and len(r) == 1


def test_decorator_form_and_nearest_name():
    r = Registry("widget")

    @r.register("sprocket")
    def sprocket():
        return "s"

    assert r.lookup("sprocket") is sprocket
    with pytest.raises(ConfigError, match="unknown widget 'sprockett'; did you mean 'sprocket'"):
        r.lookup("sprockett")
    with pytest.raises(ConfigError, match="non-empty"):
        r.register("", 1)


def test_copy_is_independent():
    r = Registry("widget")
    r.register("a", 1)
    c = r.copy()
    c.register("b", 2)
    assert "b" not in r and set(c) == {"a", "b"}


@pytest.mark.parametrize("table", [METHODS, PRUNE_CRITERIA, GROW_CRITERIA, DISTRIBUTIONS, DROP_SCHEDULES,
                                   GROW_INITS, DROP_ROUNDINGS, PRUNE_AT_INIT, OPTIMIZERS, LR_SCHEDULES,
                                   AMP_MODES])
def test_every_name_table_is_one_registry(table):
    assert isinstance(table, Registry)
    name = next(iter(table))
    with pytest.raises(ConfigError, match="already registered"):
        table.register(name, table[name])
    with pytest.raises(ConfigError, match="did you mean"):
        table.lookup(name + "x")


def test_register_method_refuses_a_taken_name():
    with pytest.raises(ConfigError, match="method 'rigl' is already registered"):
        itop.register_method("rigl", "again", grow="random")

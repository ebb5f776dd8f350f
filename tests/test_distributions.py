import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from itop.distributions import (
    allocate,
    custom,
    erdos_renyi,
    erdos_renyi_kernel,
    get_distribution,
    uniform,
)
from itop.errors import ConfigError

LENET = {"fc1": (300, 784), "fc2": (100, 300), "fc3": (10, 100)}


def numel(s):
    return math.prod(s)


def test_erk_matches_hand_computation():
    # Raw scales (n_in + n_out) / (n_in * n_out): fc3's eps * raw passes 1, so it becomes dense
    # and the budget 0.1 * 266200 - 1000 = 25620 is split over fc1/fc2 with eps = 25620 / 1484.
    d = erdos_renyi_kernel(LENET, 0.1)
    eps = 25620 / (1084 + 400)
    assert d["fc3"] == 1.0
    assert d["fc1"] == pytest.approx(eps * 1084 / 235200)
    assert d["fc2"] == pytest.approx(eps * 400 / 30000)
    counts = allocate(LENET, d)
    assert sum(counts.values()) == 26620
    assert counts["fc3"] == 1000


def test_erk_includes_kernel_and_er_does_not():
    shapes = {"conv": (64, 32, 3, 3), "fc": (10, 64)}
    erk = erdos_renyi_kernel(shapes, 0.01)  # low enough that no layer turns dense
    er = erdos_renyi(shapes, 0.01)
    # ERK's raw scale for the conv: (64+32+3+3)/(64*32*9); ER's: (64+32)/(64*32).
    ratio_erk = erk["fc"] / erk["conv"]
    assert ratio_erk == pytest.approx(((10 + 64) / 640) / (102 / (64 * 32 * 9)))
    assert er["fc"] / er["conv"] == pytest.approx(((10 + 64) / 640) / (96 / (64 * 32)))


def test_uniform_without_fixed_is_the_global_density():
    assert uniform(LENET, 0.05) == pytest.approx({k: 0.05 for k in LENET})


def test_fixed_layers_count_in_the_budget():
    d = uniform(LENET, 0.1, {"fc3": 1.0})
    total = sum(numel(s) for s in LENET.values())
    got = sum(d[k] * numel(s) for k, s in LENET.items())
    assert got == pytest.approx(0.1 * total)
    assert d["fc1"] == d["fc2"] < 0.1


def test_power_scale_zero_is_uniform():
    assert erdos_renyi_kernel(LENET, 0.1, power_scale=0.0) == pytest.approx(uniform(LENET, 0.1))


def test_unreachable_density_is_a_clear_error():
    # The first layer kept dense already holds 88% of the weights: 2% density is impossible.
    with pytest.raises(ConfigError, match="cannot be reached"):
        erdos_renyi_kernel(LENET, 0.02, {"fc1": 1.0})
    with pytest.raises(ConfigError, match="cannot be reached"):
        uniform(LENET, 0.99, {"fc1": 0.01})


def test_bad_inputs():
    with pytest.raises(ConfigError):
        uniform(LENET, 0.0)
    with pytest.raises(ConfigError):
        uniform(LENET, 1.5)
    with pytest.raises(ConfigError):
        uniform(LENET, 0.5, {"nope": 0.5})
    with pytest.raises(ConfigError, match="did you mean 'erk'"):
        get_distribution("erkk")
    with pytest.raises(ConfigError, match="missing"):
        custom(LENET, None, {"fc1": 0.5})


def test_custom_checks_the_global_density():
    fixed = {"fc1": 0.1, "fc2": 0.1, "fc3": 0.1}
    assert custom(LENET, 0.1, fixed) == fixed
    with pytest.raises(ConfigError, match="adjust"):
        custom(LENET, 0.5, fixed)


shapes_strategy = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=4),
    st.one_of(
        st.tuples(st.integers(1, 64), st.integers(1, 64)),
        st.tuples(st.integers(1, 32), st.integers(1, 16), st.integers(1, 5), st.integers(1, 5)),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(shapes=shapes_strategy, density=st.floats(0.01, 1.0), kind=st.sampled_from(["uniform", "er", "erk"]))
def test_exact_global_count_and_bounds(shapes, density, kind):
    total = sum(numel(s) for s in shapes.values())
    target = round(density * total)
    d = get_distribution(kind)(shapes, density)
    assert all(0.0 < v <= 1.0 + 1e-12 for v in d.values())
    counts = allocate(shapes, d, total=target)
    assert all(1 <= counts[k] <= numel(shapes[k]) for k in shapes)
    if target >= len(shapes):  # every layer keeps >= 1 weight
        assert sum(counts.values()) == target

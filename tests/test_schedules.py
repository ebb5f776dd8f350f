import math

import pytest

from itop.errors import ConfigError
from itop.schedules import ConstantDrop, CosineDrop, LinearDrop, UpdateSchedule, make_drop_schedule


def test_update_steps_every_interval_within_window():
    s = UpdateSchedule(100, start=0, end=750)
    steps = [t for t in range(1, 1001) if s.is_update_step(t)]
    assert steps == [100, 200, 300, 400, 500, 600, 700]
    assert s.num_updates(1000) == 7


def test_update_start_excluded_and_static():
    s = UpdateSchedule(10, start=20)
    assert not s.is_update_step(20)
    assert s.is_update_step(30)
    assert not any(UpdateSchedule(None).is_update_step(t) for t in range(1, 100))


@pytest.mark.parametrize("bad", [0, -5, 2.5])
def test_bad_interval(bad):
    with pytest.raises(ConfigError, match="positive integer"):
        UpdateSchedule(bad)


def test_end_before_start():
    with pytest.raises(ConfigError):
        UpdateSchedule(10, start=100, end=50)


def test_cosine_endpoints_and_midpoint():
    c = CosineDrop(0.5, 0.005, end=1000)
    assert c(0) == pytest.approx(0.5)
    assert c(1000) == pytest.approx(0.005)
    assert c(500) == pytest.approx(0.005 + 0.495 * 0.5)
    assert c(250) == pytest.approx(0.005 + 0.495 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert c(5000) == pytest.approx(0.005)
    values = [c(t) for t in range(0, 1001, 50)]
    assert values == sorted(values, reverse=True)


def test_linear_and_constant():
    lin = LinearDrop(0.4, 0.0, end=100, start=0)
    assert lin(50) == pytest.approx(0.2)
    assert ConstantDrop(0.3)(12345) == 0.3


def test_make_drop_schedule():
    assert make_drop_schedule("constant", 0.3)(7) == 0.3
    with pytest.raises(ConfigError, match="total_steps"):
        make_drop_schedule("cosine", 0.5)
    with pytest.raises(ConfigError, match="did you mean 'cosine'"):
        make_drop_schedule("cosin", 0.5, end=10)
    with pytest.raises(ConfigError):
        ConstantDrop(1.5)


def test_last_step_is_never_an_update():
    s = UpdateSchedule(10, total_steps=30)
    assert [t for t in range(1, 31) if s.is_update_step(t)] == [10, 20]
    assert s.num_updates(30) == 2
    assert UpdateSchedule(10).is_update_step(30)  # without total_steps the end is unknown
    assert [t for t in range(1, 31) if UpdateSchedule(10, end=25, total_steps=30).is_update_step(t)] == [10, 20]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_total_steps(bad):
    with pytest.raises(ConfigError, match="total_steps"):
        UpdateSchedule(10, total_steps=bad)

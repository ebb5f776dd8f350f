import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from itop._backend import RandomState, bottom_n, flat_gather, flat_set_, sample_positions, top_n


def test_top_and_bottom_n_match_sorting():
    s = torch.randn(1000)
    for n in (0, 1, 17, 999, 1000):
        assert set(top_n(s, n).tolist()) == set(s.argsort(descending=True)[:n].tolist())
        assert set(bottom_n(s, n).tolist()) == set(s.argsort()[:n].tolist())


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 3000), frac=st.floats(0.0, 1.0), seed=st.integers(0, 10**6), data=st.data())
def test_sample_positions_exact_distinct_allowed(size, frac, seed, data):
    g = torch.Generator().manual_seed(seed)
    allowed = torch.rand(size, generator=g) < frac
    count = int(allowed.sum())
    n = data.draw(st.integers(0, count))
    pos = sample_positions(size, n, RandomState(seed), torch.device("cpu"), ~allowed)
    assert pos.numel() == n
    assert pos.unique().numel() == n
    assert bool(allowed[pos].all())


def test_sample_positions_is_uniform():
    # Each of 20 allowed positions out of 40 should be drawn about equally often.
    allowed = torch.zeros(40, dtype=torch.bool)
    allowed[::2] = True
    rng = RandomState(0)
    hits = np.zeros(40)
    for _ in range(3000):
        hits[sample_positions(40, 5, rng, torch.device("cpu"), (~allowed).float()).numpy()] += 1
    expected = 3000 * 5 / 20
    assert hits[1::2].sum() == 0
    assert np.abs(hits[::2] - expected).max() < 0.15 * expected


def test_sample_too_many_raises():
    with pytest.raises(ValueError):
        sample_positions(10, 11, RandomState(0), torch.device("cpu"))


def test_random_state_round_trip():
    rng = RandomState(3)
    rng.numpy.integers(0, 10, 5)
    state = rng.state_dict()
    a = sample_positions(10**6, 500, rng, torch.device("cpu"))
    rng2 = RandomState(99)
    rng2.load_state_dict(state)
    b = sample_positions(10**6, 500, rng2, torch.device("cpu"))
    assert torch.equal(a, b)


def test_flat_helpers_on_channels_last():
    w = torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last)
    assert not w.is_contiguous()
    idx = torch.tensor([0, 5, 47])
    assert torch.equal(flat_gather(w, idx), w.reshape(-1)[idx])
    flat_set_(w, idx, 0.0)
    assert (w.reshape(-1)[idx] == 0).all()
    assert w.is_contiguous(memory_format=torch.channels_last)

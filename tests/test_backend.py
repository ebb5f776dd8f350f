import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from itop import _backend
from itop._backend import (
    SAMPLED_MIN_SIZE,
    RandomState,
    bottom_n,
    flat_gather,
    flat_member,
    flat_set_,
    fresh_abs,
    sample_positions,
    set_sampled_selection,
    top_n,
)


def test_top_and_bottom_n_match_sorting():
    s = torch.randn(1000)
    for n in (0, 1, 17, 999, 1000):
        assert set(top_n(s, n).tolist()) == set(s.argsort(descending=True)[:n].tolist())
        assert set(bottom_n(s, n).tolist()) == set(s.argsort()[:n].tolist())


def _reference(s: torch.Tensor, n: int, largest: bool) -> torch.Tensor:
    """The plain full selection: a stable sort (NaN counted as +inf), first n, ascending."""
    key = torch.nan_to_num(s.double(), nan=float("inf"), posinf=float("inf"), neginf=float("-inf"))
    order = torch.sort(-key if largest else key, stable=True).indices
    return torch.sort(order[:n]).values


def _scores(size: int, levels: int, seed: int, inf_share: float) -> torch.Tensor:
    """Scores with heavy ties (``levels`` distinct values; 0 means continuous) and some -inf
    entries (the kept positions of a growth selection)."""
    g = np.random.default_rng(seed)
    v = g.standard_normal(size) if levels == 0 else g.integers(0, levels, size).astype(np.float64)
    v[g.random(size) < inf_share] = -np.inf
    return torch.from_numpy(v.astype(np.float32))


@settings(max_examples=80, deadline=None)
@given(
    size=st.one_of(st.integers(1, 2000), st.integers(SAMPLED_MIN_SIZE, 250_000)),
    levels=st.sampled_from([0, 1, 2, 3, 17, 1000]),
    inf_share=st.sampled_from([0.0, 0.5, 0.95]),
    seed=st.integers(0, 10**6),
    data=st.data(),
)
def test_selection_is_exactly_the_full_selection(size, levels, inf_share, seed, data):
    # Sampled prefilter, full selection and the torch (non-CPU) path: one and the same set,
    # with ties broken towards the lower index, for every n including 0 and all.
    n = data.draw(st.one_of(st.just(0), st.just(size), st.integers(0, size), st.integers(0, size // 50)))
    s = _scores(size, levels, seed, inf_share)
    for largest, fn in ((True, top_n), (False, bottom_n)):
        want = _reference(s, n, largest)
        got = fn(s, n)
        assert torch.equal(got, want)
        old = set_sampled_selection(False)
        try:
            assert torch.equal(fn(s, n), want)
        finally:
            set_sampled_selection(old)
        if 0 < n < size:
            assert torch.equal(_backend._exact_select_torch(s, n, largest), want)


def test_selection_other_dtypes_and_non_finite():
    s = _scores(100_000, 5, 1, 0.3).double()
    assert torch.equal(top_n(s, 700), _reference(s, 700, True))
    h = _scores(100_000, 5, 2, 0.3).half()
    assert torch.equal(bottom_n(h, 700), _reference(h.float(), 700, False))
    # NaN and +inf rank level, above every number: a diverged score is always selected.
    s = _scores(100_000, 0, 3, 0.5)
    s[[5, 70_000]] = float("nan")
    s[[9, 99_999]] = float("inf")
    assert top_n(s, 3).tolist() == [5, 9, 70_000]
    assert set(top_n(s, 500).tolist()) >= {5, 9, 70_000, 99_999}
    assert torch.equal(top_n(s, 500), _reference(s, 500, True))
    assert torch.equal(bottom_n(s, 500), _reference(s, 500, False))


def _count_exact(monkeypatch) -> list[int]:
    sizes: list[int] = []
    exact = _backend._exact_select

    def counted(v, n, largest):
        sizes.append(v.size)
        return exact(v, n, largest)

    monkeypatch.setattr(_backend, "_exact_select", counted)
    return sizes


def test_sampled_path_ranks_only_survivors(monkeypatch):
    sizes = _count_exact(monkeypatch)
    s = _scores(500_000, 0, 4, 0.9)  # a growth selection: kept weights are -inf
    assert torch.equal(top_n(s, 1000), _reference(s, 1000, True))
    s = _scores(500_000, 0, 4, 0.0)
    assert torch.equal(bottom_n(s, 1000), _reference(s, 1000, False))
    # Neither selection ranked the whole layer: the threshold left a small candidate set.
    assert len(sizes) == 2 and max(sizes) < 500_000 // 20


def test_bad_sample_estimate_falls_back_to_full_selection(monkeypatch):
    # The sampled positions hold the layer's largest scores, so the threshold drawn from them
    # is far above the true n-th largest: too few survive, and the full selection must run.
    size, n = 300_000, 3000
    s = torch.zeros(size)
    s[torch.arange(0, size, 7)] = 0.5  # ties at the true boundary
    picked = torch.from_numpy(_backend._sample_index(size).copy())
    s[picked] = 1.0 + torch.rand(picked.numel(), generator=torch.Generator().manual_seed(0))
    assert _backend._sampled_select(s.numpy(), n, True) is None
    sizes = _count_exact(monkeypatch)
    got = top_n(s, n)
    assert sizes == [size]  # the fallback ranked every score
    assert torch.equal(got, _reference(s, n, True))
    # Same for the smallest: the sampled positions hold the smallest scores.
    s = -s
    sizes.clear()
    assert torch.equal(bottom_n(s, n), _reference(s, n, False))
    assert sizes == [size]


def test_sample_positions_ignore_global_random_state():
    torch.manual_seed(1)
    np.random.seed(1)
    a = _backend._sample_index(123_457).copy()
    _backend._SAMPLES.clear()
    torch.manual_seed(2)
    np.random.seed(2)
    assert np.array_equal(a, _backend._sample_index(123_457))


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 5000), seed=st.integers(0, 10**6), data=st.data())
def test_flat_member_matches_isin(size, seed, data):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, size, (data.draw(st.integers(0, 300)),), generator=g)
    members = torch.randint(0, size, (data.draw(st.integers(0, 300)),), generator=g)
    assert torch.equal(flat_member(idx, members, size), torch.isin(idx, members))


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


def test_fresh_abs_is_a_new_tensor():
    g = torch.randn(6, 4, 3, 3)
    out = fresh_abs(g)
    assert torch.equal(out, g.abs()) and out.data_ptr() != g.data_ptr()
    cl = g.to(memory_format=torch.channels_last)  # no flat numpy view: torch's abs
    assert torch.equal(fresh_abs(cl), g.abs())

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from itop.tracker import ExplorationTracker


def test_lifetimes_and_reliable_rate():
    t = ExplorationTracker(reliable_steps=10)
    t.register("a", torch.tensor([0, 1, 2]), numel=10, step=0)
    assert t.itop_rate() == 0.3
    assert t.reliable_itop_rate(step=5) == 0.0
    assert t.reliable_itop_rate(step=10) == 0.3
    # At step 10 weight 0 is dropped (lived 10) and 5 grown; at 15 weight 5 is dropped (lived 5).
    assert t.record("a", torch.tensor([0]), torch.tensor([5]), 10) == 1
    assert t.record("a", torch.tensor([5]), torch.tensor([6]), 15) == 1
    assert t.itop_rate() == 0.5
    assert t.lifetimes == {10: 1, 5: 1}
    stats = t.lifetime_stats()
    assert stats["pruned"] == 2 and stats["mean"] == 7.5 and stats["fraction_unreliable"] == 0.5
    # Reliable at step 15: 0 (lived 10), 1 and 2 (active since 0); not 5 (lived 5) nor 6 (new).
    assert t.reliable_itop_rate(step=15) == 0.3
    assert t.ages("a", 15).tolist()[:7] == [-1, 15, 15, -1, -1, -1, 0]


def test_regrown_in_same_update_starts_a_new_stretch():
    t = ExplorationTracker(reliable_steps=1)
    t.register("a", torch.tensor([0, 1]), numel=4)
    assert t.record("a", torch.tensor([0]), torch.tensor([0]), 7) == 0
    assert t.lifetimes == {7: 1}
    assert t.ages("a", 9)[0] == 2
    assert t.itop_rate() == 0.5


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 49), st.integers(0, 49)), min_size=1, max_size=30))
def test_rate_is_union_of_masks_and_monotone(moves):
    t = ExplorationTracker(reliable_steps=1)
    active = set(range(10))
    union = set(active)
    t.register("a", torch.tensor(sorted(active)), numel=50)
    last = t.itop_rate()
    for step, (d, g) in enumerate(moves, 1):
        if d not in active or (g in active and g != d):
            continue
        active.discard(d)
        active.add(g)
        union |= active
        t.record("a", torch.tensor([d]), torch.tensor([g]), step)
        assert t.itop_rate() == len(union) / 50
        assert t.itop_rate() >= last
        last = t.itop_rate()
    state = t.state_dict()
    t2 = ExplorationTracker(reliable_steps=5)
    t2.register("a", torch.tensor([0]), numel=50)
    t2.load_state_dict(state)
    assert t2.itop_rate() == t.itop_rate() and t2.lifetimes == t.lifetimes

import pytest
import torch
from helpers import batches, mlp, train_step

import itop
from itop.errors import ConfigError
from itop.lottery import IterativeMagnitudePruning


def test_round_sparsities_reach_the_target():
    imp = IterativeMagnitudePruning(sparsity=0.875, rounds=3)
    assert [imp.round_sparsity(k) for k in range(imp.num_trainings)] == [0.0, 0.5, 0.75, 0.875]
    with pytest.raises(ConfigError, match="round must be in 0..3"):
        imp.round_sparsity(4)


def test_build_imp_says_how_to_run_it():
    model = mlp()
    with pytest.raises(ConfigError, match="itop.lottery.IterativeMagnitudePruning"):
        itop.build("imp", model, torch.optim.SGD(model.parameters(), lr=0.1), sparsity=0.9)


def test_run_in_a_user_loop_prunes_globally_and_rewinds():
    torch.manual_seed(0)
    model = mlp()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    data = batches(6)
    imp = IterativeMagnitudePruning(sparsity=0.75, rounds=2, rewind_step=0)
    starts, masks = [], []

    def train_round(model, optimizer, sparsifier, k, on_step):
        starts.append({k2: v.clone() for k2, v in model.state_dict().items()})
        masks.append(sparsifier.masks())
        for step, (x, y) in enumerate(data, 1):
            train_step(model, optimizer, sparsifier, x, y)
            on_step(step)

    final = imp.run(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), train_round)
    assert len(starts) == 3
    assert final.actual_sparsity() == pytest.approx(0.75, abs=1e-3)
    total = final.num_weights()
    for k, expected in ((1, 0.5), (2, 0.25)):
        kept = sum(int(m.sum()) for m in masks[k].values())
        assert kept == round(expected * total)
        # each round's mask is inside the previous one
        assert all(bool((masks[k][n] <= masks[k - 1][n]).all()) for n in masks[k])
        # survivors start at their initial values (rewind to step 0), the rest at zero
        for n, m in masks[k].items():
            assert torch.equal(starts[k][n], init[n] * m)
    assert imp.itop_rate() == 1.0  # round 0 is dense


def test_rewind_step_beyond_round_zero_is_one_clear_error():
    model = mlp()
    imp = IterativeMagnitudePruning(sparsity=0.5, rounds=1, rewind_step=100)

    def train_round(model, optimizer, sparsifier, k, on_step):
        for step, (x, y) in enumerate(batches(2), 1):
            train_step(model, optimizer, sparsifier, x, y)
            on_step(step)

    with pytest.raises(ConfigError, match="rewind_step 100"):
        imp.run(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), train_round)

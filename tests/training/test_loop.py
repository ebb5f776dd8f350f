"""The training loop: gradient accumulation (``accumulate``) and what ``on_step`` receives."""

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from itop.errors import ConfigError
from itop.training import Trainer
from itop.training.config import load_config
from itop.training.loop import micro_batch_groups

# digits: 1294 training samples after the validation split; augment off so that a sample is
# the same whichever batch it falls in.
BASE = {"dataset": "digits", "model": "lenet-300-100", "method": "rigl", "sparsity": 0.9,
        "update_interval": 5, "epochs": 2, "augment": False, "tensorboard": False, "progress": "none",
        "threads": 1, "lr": 0.05}


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def cfg(tmp_path, **kw):
    return load_config(None, {**BASE, "out_dir": str(tmp_path), "name": "run", **kw})


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the model is built in float64
    yield
    torch.set_default_dtype(old)


def test_micro_batch_groups_align_to_the_epoch():
    assert list(micro_batch_groups(iter(range(10)), 0, 4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert list(micro_batch_groups(iter(range(4, 10)), 4, 4)) == [[4, 5, 6, 7], [8, 9]]
    # A resume at a batch that is not a group boundary finishes that group first.
    assert list(micro_batch_groups(iter(range(6, 10)), 6, 4)) == [[6, 7], [8, 9]]
    assert list(micro_batch_groups(iter(range(3)), 0, 1)) == [[0], [1], [2]]


@given(n=st.integers(0, 60), start=st.integers(0, 60), size=st.integers(1, 9))
def test_groups_cover_the_rest_of_the_epoch_once_and_end_on_boundaries(n, start, size):
    start = min(start, n)
    groups = list(micro_batch_groups(iter(range(start, n)), start, size))
    assert [b for g in groups for b in g] == list(range(start, n))  # every batch once, in order
    assert all(1 <= len(g) <= size for g in groups)
    # every group but the last ends on a multiple of size (a checkpoint there resumes aligned)
    assert all((g[-1] + 1) % size == 0 for g in groups[:-1])


def test_accumulated_micro_batches_train_like_one_big_batch(tmp_path, float64):
    big = Trainer(cfg(tmp_path / "big", batch_size=48))
    big.fit()
    acc = Trainer(cfg(tmp_path / "acc", batch_size=12, accumulate=4))
    acc.fit()
    assert next(acc.model.parameters()).dtype == torch.float64
    # 1294 samples: 27 batches of 48 (the last of 46) = 108 micro-batches of 12 in 27 groups;
    # the last group is 12 + 12 + 12 + 10, so each micro-batch's loss must weigh by its share.
    assert len(acc.data.train) == 1294
    assert acc.batches_per_epoch == 108 and big.batches_per_epoch == 27
    assert acc.steps_per_epoch == big.steps_per_epoch == 27 and acc.total_steps == big.total_steps == 54
    assert acc.progress.step == big.progress.step == 54
    assert acc.sparsifier.step_count == big.sparsifier.step_count == 54  # optimizer steps
    # ΔT = 5 optimizer steps, up to 3/4 of training (RigL's update_end)
    assert [r["step"] for r in acc.sparsifier.history] == [r["step"] for r in big.sparsifier.history] \
        == list(range(5, 40, 5))
    for name, mask in big.sparsifier.masks().items():
        assert torch.equal(mask, acc.sparsifier.masks()[name]), name
    for (name, p), q in zip(big.model.state_dict().items(), acc.model.state_dict().values(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-10, msg=name)
    assert acc.sparsifier.itop_rate() == big.sparsifier.itop_rate()
    assert acc.optimizer.param_groups[0]["lr"] == big.optimizer.param_groups[0]["lr"]
    # FLOPs count the samples of each optimizer step, not of one micro-batch.
    assert acc.flops.state_dict() == pytest.approx(big.flops.state_dict())
    a, b = acc.summary(), big.summary()
    for key in ("test_acc_selected", "final_test_acc", "final_test_loss", "training_flops", "updates"):
        assert a[key] == pytest.approx(b[key], rel=1e-9), key


def _records(run_dir):
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rec.pop("seconds", None)
        out.append(rec)
    return out


def test_resume_inside_an_epoch_with_accumulation_is_identical(tmp_path):
    over = {"batch_size": 32, "accumulate": 3, "checkpoint_every_steps": 4}
    straight = Trainer(cfg(tmp_path / "a", **over))
    straight.fit()
    spe = straight.steps_per_epoch
    assert spe == 14  # 41 micro-batches of 32 in groups of 3
    killed = Trainer(cfg(tmp_path / "b", **over, max_steps=spe + 6))
    killed.fit()
    assert killed.progress.step == spe + 6 and killed.progress.batch == 18  # a group boundary
    resumed = Trainer(cfg(tmp_path / "b", **over, resume="auto"))
    resumed.fit()
    assert resumed.progress.step == 2 * spe
    for (n, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    for k, m in straight.sparsifier.masks().items():
        assert torch.equal(m, resumed.sparsifier.masks()[k]), k
    assert _records(tmp_path / "a" / "run") == _records(tmp_path / "b" / "run")


def test_lr_reference_batch_counts_accumulated_micro_batches(tmp_path):
    t = Trainer(cfg(tmp_path, batch_size=16, accumulate=4, lr=0.1, lr_reference_batch=128, epochs=1))
    assert t.optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.1 * 64 / 128)


def test_on_step_gets_optimizer_steps(tmp_path):
    seen = []
    t = Trainer(cfg(tmp_path, batch_size=64, accumulate=3, epochs=1), on_step=seen.append)
    t.fit()
    assert [i.step for i in seen] == list(range(1, 8))  # 21 micro-batches in 7 groups
    assert {i.steps for i in seen} == {7} and seen[-1].global_step == 7 == seen[-1].total_steps
    assert all(i.done == i.step and i.seconds > 0 and i.loss > 0 for i in seen)


def test_accumulate_must_be_a_positive_integer(tmp_path):
    with pytest.raises(ConfigError, match="accumulate must be a positive number"):
        cfg(tmp_path, accumulate=0)

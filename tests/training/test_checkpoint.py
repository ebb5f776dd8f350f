import pytest
import torch

from itop.errors import CheckpointError
from itop.training.checkpoint import (
    checkpoint_path,
    find_checkpoints,
    load_checkpoint,
    load_latest,
    prune_checkpoints,
    save_checkpoint,
)


def test_atomic_save_and_safe_load(tmp_path):
    p = save_checkpoint({"w": torch.arange(3), "n": 1}, tmp_path / "a" / "x.pt")
    assert load_checkpoint(p)["n"] == 1
    assert [f.name for f in p.parent.iterdir()] == ["x.pt"]  # no temporary left behind


class Evil:
    pass


def test_refuses_pickled_objects(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"obj": Evil()}, p)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(p)


def test_missing_and_truncated(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    p = save_checkpoint({"w": torch.randn(100)}, tmp_path / "t.pt")
    p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(p)


def test_latest_falls_back_and_prune_keeps_newest(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint({"step": step}, checkpoint_path(tmp_path, step))
    assert [int(p.name[9:18]) for p in find_checkpoints(tmp_path)] == [10, 20, 30]
    checkpoint_path(tmp_path, 30).write_bytes(b"garbage")
    path, state = load_latest(tmp_path)
    assert state["step"] == 20 and path == checkpoint_path(tmp_path, 20)
    prune_checkpoints(tmp_path, keep=1)
    assert find_checkpoints(tmp_path) == [checkpoint_path(tmp_path, 30)]
    assert load_latest(tmp_path / "empty") is None

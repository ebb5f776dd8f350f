import errno
import logging
import os
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itop.errors import CheckpointError
from itop.training.checkpoint import (
    checkpoint_path,
    find_checkpoints,
    load_checkpoint,
    load_latest,
    prune_checkpoints,
    remove_stale_temporaries,
    save_checkpoint,
    state_digests,
)


def test_atomic_save_and_safe_load(tmp_path):
    p = save_checkpoint({"w": torch.arange(3), "n": 1}, tmp_path / "a" / "x.pt")
    state = load_checkpoint(p)
    assert state["n"] == 1 and torch.equal(state["w"], torch.arange(3))
    assert "checksum" not in state  # verified and removed on load
    assert [f.name for f in p.parent.iterdir()] == ["x.pt"]  # no temporary left behind


class Evil:
    pass


def test_refuses_pickled_objects_naming_what_and_why(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"obj": Evil()}, p)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert "Evil" in msg and "weights-only" in msg and "could run code" in msg and "\n" not in msg


def test_missing_empty_truncated_text_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_checkpoint(tmp_path / "empty.pt")
    p = save_checkpoint({"w": torch.randn(100)}, tmp_path / "t.pt")
    p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(p)
    (tmp_path / "notes.pt").write_text("hello, this is text\n")
    with pytest.raises(CheckpointError, match=r"is not a PyTorch checkpoint \(it starts with b'hell'\)"):
        load_checkpoint(tmp_path / "notes.pt")
    save_checkpoint({"w": torch.zeros(1)}, tmp_path / "run" / "best.pt")
    with pytest.raises(CheckpointError, match=r"is a folder, not a checkpoint file.*run/best\.pt"):
        load_checkpoint(tmp_path / "run")


def test_fix_is_the_callers(tmp_path):
    with pytest.raises(CheckpointError, match=", or evaluate another one$"):
        load_checkpoint(tmp_path / "nope.pt", fix="evaluate another one")


def _flip_inside(path, tensor: torch.Tensor) -> None:
    """Flip one bit inside the stored bytes of ``tensor`` (which loads fine afterwards)."""
    raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    data = bytearray(path.read_bytes())
    at = data.find(raw[:32])
    assert at >= 0 and data.find(raw[:32], at + 1) < 0
    data[at + 5] ^= 0x04
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("entry", ["model", "sparsifier"])
def test_a_flipped_bit_inside_a_tensor_is_corrupt(tmp_path, entry):
    state = {"model": {"w": torch.randn(64, 64)}, "sparsifier": {"active": torch.arange(500)}, "step": 3}
    p = save_checkpoint(state, tmp_path / "c.pt")
    _flip_inside(p, state[entry]["w" if entry == "model" else "active"])
    torch.load(p, weights_only=True)  # the damage is invisible to torch
    with pytest.raises(CheckpointError, match=rf"corrupt \(checksum mismatch in '{entry}'"):
        load_checkpoint(p)


def test_digest_covers_plain_values_and_structure():
    base = {"progress": {"step": 3, "lr": 0.1}, "w": torch.ones(2)}
    d = state_digests(base)
    assert state_digests({"progress": {"step": 4, "lr": 0.1}, "w": torch.ones(2)})["progress"] != d["progress"]
    assert state_digests({"progress": {"lr": 0.1, "step": 3}, "w": torch.ones(2)})["progress"] != d["progress"]
    assert state_digests({"progress": {"step": 3, "lr": 0.1}, "w": torch.ones(2, 1)})["w"] != d["w"]
    assert state_digests({"progress": {"step": 3, "lr": 0.1}, "w": torch.ones(2).double()})["w"] != d["w"]
    assert state_digests({"progress": [3, 0.1], "w": 1})["progress"] != state_digests({"progress": (3, 0.1), "w": 1})["progress"]


def test_checkpoint_without_checksum_loads_with_a_warning(tmp_path, caplog):
    p = tmp_path / "old.pt"
    torch.save({"w": torch.ones(3)}, p)  # as written before checksums existed
    with caplog.at_level(logging.WARNING):
        assert torch.equal(load_checkpoint(p)["w"], torch.ones(3))
    assert "no checksum" in caplog.text


def test_damaged_checksum_record_is_corrupt(tmp_path):
    p = tmp_path / "c.pt"
    torch.save({"w": torch.ones(3), "checksum": {"algorithm": "sha256"}}, p)
    with pytest.raises(CheckpointError, match="checksum record is damaged"):
        load_checkpoint(p)
    torch.save({"w": torch.ones(3), "checksum": {"algorithm": "sha256", "entries": {}}}, p)
    with pytest.raises(CheckpointError, match="mismatch in 'w'"):
        load_checkpoint(p)


leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.text(max_size=8),
    st.floats(allow_nan=True, allow_infinity=True),
)


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.int32,
                                  torch.bool, torch.uint8]))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    t = (torch.randn(shape) * 100).to(dtype) if dtype.is_floating_point or dtype == torch.bool else \
        torch.randint(0, 100, shape, dtype=dtype)
    if draw(st.booleans()) and t.dim() == 2:
        t = t.t()  # not contiguous
    return t


values = st.recursive(
    st.one_of(leaf, tensors()),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                            st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 9)), inner, max_size=3)),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=st.dictionaries(st.text(min_size=1, max_size=6), values, min_size=1, max_size=4))
def test_any_state_round_trips_through_its_checksum(tmp_path, state):
    """Whatever a checkpoint holds, what torch.load gives back hashes to what was saved."""
    state.pop("checksum", None)
    if not state:
        return
    p = save_checkpoint(state, tmp_path / "h.pt")
    loaded = load_checkpoint(p)
    assert state_digests(loaded) == state_digests(state)


def test_non_contiguous_and_channels_last_tensors_hash_by_value():
    w = torch.randn(4, 3, 5, 5)
    assert state_digests({"w": w.to(memory_format=torch.channels_last)}) == state_digests({"w": w})
    assert state_digests({"w": w.transpose(0, 1)}) == state_digests({"w": w.transpose(0, 1).contiguous()})


def test_latest_falls_back_past_truncated_and_corrupt(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint({"step": step, "w": torch.arange(64.0) + step}, checkpoint_path(tmp_path, step))
    assert [int(p.name[9:18]) for p in find_checkpoints(tmp_path)] == [10, 20, 30]
    checkpoint_path(tmp_path, 30).write_bytes(b"garbage")
    _flip_inside(checkpoint_path(tmp_path, 20), torch.arange(64.0) + 20)
    failures = []
    path, state = load_latest(tmp_path, failures=failures)
    assert state["step"] == 10 and path == checkpoint_path(tmp_path, 10)
    assert [("not a PyTorch" in str(f), "checksum mismatch" in str(f)) for f in failures] == [(True, False),
                                                                                                (False, True)]
    prune_checkpoints(tmp_path, keep=1)
    assert find_checkpoints(tmp_path) == [checkpoint_path(tmp_path, 30)]
    assert load_latest(tmp_path / "empty") is None


def test_stale_temporaries_are_removed_after_a_successful_write(tmp_path):
    stale = [tmp_path / ".ckpt-step000000005.pt.ab12cd34.tmp", tmp_path / ".best.pt.zz_9xy1q.tmp"]
    keep = [tmp_path / "notes.tmp", tmp_path / ".summary.json.tmp", tmp_path / "ckpt-step000000004.pt"]
    for p in stale + keep:
        p.write_bytes(b"x" * 10)
    save_checkpoint({"n": 1}, tmp_path / "best.pt")
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)
    stale[0].write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [stale[0]]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    p = save_checkpoint({"n": 1}, tmp_path / "best.pt")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CheckpointError, match="could not write .*best.pt: No space left on device; the files "
                                              "written before are intact"):
        save_checkpoint({"n": 2}, p)
    monkeypatch.undo()
    assert load_checkpoint(p)["n"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["best.pt"]


def test_checkpoints_are_zip_archives_that_torch_reads_as_usual(tmp_path):
    p = save_checkpoint({"w": torch.ones(2)}, tmp_path / "z.pt")
    assert zipfile.is_zipfile(p)
    raw = torch.load(p, weights_only=True)
    assert raw["checksum"]["algorithm"] == "sha256" and set(raw["checksum"]["entries"]) == {"w"}

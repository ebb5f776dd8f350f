"""Model selection: the best validation epoch among those at the run's final sparsity."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from itop.report.read import collect
from itop.training import Trainer
from itop.training.config import load_config
from itop.training.selection import eligible, is_better, select_best


def _rec(epoch, val, test, **kw):
    return {"type": "epoch", "epoch": epoch, "val_acc": val, "test_acc": test, **kw}


def test_epochs_before_the_final_sparsity_are_never_selected():
    records = [_rec(1, 0.90, 0.89, at_final_sparsity=False), _rec(2, 0.80, 0.79, at_final_sparsity=True),
               _rec(3, 0.85, 0.84, at_final_sparsity=True)]
    assert select_best(records)["epoch"] == 3
    assert not is_better(records[0], None)  # not even as the first candidate


def test_legacy_records_are_judged_by_their_sparsity_against_the_last():
    # Records of older runs have no at_final_sparsity flag: a gradually pruned run's early,
    # denser epochs are recognised by their sparsity.
    records = [_rec(1, 0.90, 0.89, sparsity=0.5), _rec(2, 0.89, 0.88, sparsity=0.9),
               _rec(3, 0.84, 0.83, sparsity=0.99), _rec(4, 0.86, 0.85, sparsity=0.99)]
    assert select_best(records)["epoch"] == 4
    assert eligible(records[0]) and not eligible(records[0], final_sparsity=0.99)


@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=12))
def test_selection_is_the_best_eligible_epoch(spec):
    records = [_rec(i + 1, val, val, at_final_sparsity=ok) for i, (val, ok) in enumerate(spec)]
    best = select_best(records)
    candidates = [r for r in records if r["at_final_sparsity"]]
    if not candidates:
        assert best is None
    else:
        top = max(r["val_acc"] for r in candidates)
        assert best["epoch"] == min(r["epoch"] for r in candidates if r["val_acc"] == top)


FAST = {"batch_size": 64, "tensorboard": False, "model": "lenet-300-100", "progress": "none"}


def test_gradual_pruning_selects_an_epoch_at_its_target_sparsity(tmp_path):
    # GMP prunes between 10% and 50% of training here: the first epochs are denser (and on
    # digits, better) than the 95%-sparse result; none of them may be reported.
    cfg = load_config(None, {**FAST, "epochs": 6, "method": "gmp", "sparsity": 0.95, "update_interval": 5,
                             "prune_end": 0.5, "out_dir": str(tmp_path), "name": "gmp"})
    summary = Trainer(cfg).fit()
    epochs = [json.loads(line) for line in (tmp_path / "gmp" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("type") == "epoch"]
    flags = [e["at_final_sparsity"] for e in epochs]
    assert flags[0] is False and flags[-1] is True and flags == sorted(flags)
    chosen = next(e for e in epochs if e["epoch"] == summary["selected_epoch"])
    assert chosen["at_final_sparsity"] and chosen["sparsity"] == pytest.approx(0.95, abs=1e-3)
    eligible_val = [e["val_acc"] for e in epochs if e["at_final_sparsity"]]
    assert chosen["val_acc"] == max(eligible_val)


def test_fixed_sparsity_runs_may_select_any_epoch(tmp_path):
    cfg = load_config(None, {**FAST, "epochs": 2, "method": "rigl", "update_interval": 5,
                             "out_dir": str(tmp_path), "name": "rigl"})
    Trainer(cfg).fit()
    epochs = [json.loads(line) for line in (tmp_path / "rigl" / "metrics.jsonl").read_text().splitlines()]
    assert all(e["at_final_sparsity"] for e in epochs if e.get("type") == "epoch")


def test_report_redoes_a_selection_made_before_the_final_sparsity(tmp_path, caplog):
    cfg = load_config(None, {**FAST, "epochs": 6, "method": "gmp", "sparsity": 0.95, "update_interval": 5,
                             "prune_end": 0.5, "out_dir": str(tmp_path), "name": "old"})
    Trainer(cfg).fit()
    run = tmp_path / "old"
    # Make the run look as an older itop wrote it: no flags, and epoch 1 (denser) selected.
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for rec in lines:
        rec.pop("at_final_sparsity", None)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    summary = json.loads((run / "summary.json").read_text())
    right = summary["selected_epoch"]
    first = next(r for r in lines if r.get("type") == "epoch")
    summary.update(selected_epoch=1, test_acc_selected=first["test_acc"], best_val_acc=first["val_acc"])
    (run / "summary.json").write_text(json.dumps(summary))
    with caplog.at_level("WARNING"):
        (loaded,) = collect([tmp_path])
    assert loaded.summary["selected_epoch"] == right
    assert any("selected epoch 1 ->" in r.getMessage() for r in caplog.records)
    assert json.loads((run / "summary.json").read_text())["selected_epoch"] == 1  # the folder is untouched

"""itop eval: a saved model scored again gives the numbers of the run that saved it."""

import json

import pytest
import torch

from itop.cli import main
from itop.training import Trainer, evaluate_checkpoint
from itop.training.config import load_config


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_eval_of_best_pt_reproduces_the_selected_epoch(tmp_path, capsys):
    """With topology updates the final mask differs from the initial one: the weights grown since
    must survive the static holder that itop eval builds for the saved masks."""
    cfg = load_config(None, {"method": "rigl", "update_interval": 5, "epochs": 2, "batch_size": 64,
                             "threads": 1, "tensorboard": False, "progress": "none",
                             "out_dir": str(tmp_path), "name": "run"})
    summary = Trainer(cfg).fit()
    assert summary["updates"] > 0
    result = evaluate_checkpoint(tmp_path / "run" / "best.pt", device="cpu")
    assert result["task"] == "classification"
    assert result["test_acc"] == summary["test_acc_selected"]
    assert result["test_loss"] == summary["test_loss_selected"]
    assert result["zero_weights_fraction"] == pytest.approx(result["sparsity"])
    assert main(["eval", str(tmp_path / "run" / "best.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["test_acc"] == result["test_acc"]

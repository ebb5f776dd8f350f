"""The command line with sparse execution: train, summary, export, eval, bad input."""

import json
import logging

import pytest
from _sparse_threads import one_thread  # noqa: F401  (the fixture)

from itop.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = ["--dataset", "digits", "--model", "mlp", "--model-args", "{hidden: [96, 48]}", "--method", "rigl",
       "--sparsity", "0.8", "--epochs", "2", "--batch-size", "64", "--update-interval", "5",
       "--tensorboard", "false", "--progress", "none", "--threads", "1"]


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("itop: error:"), err
    return err[0]


def test_train_export_and_eval_in_sparse_mode(tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="itop.sparsifier"):
        assert main(["train", *RUN, "--execution", "sparse", "--out-dir", str(tmp_path), "--name", "sp"]) == 0
    out = capsys.readouterr().out
    assert "execution: sparse" in out  # in the resolved config
    assert "3 layers run sparse: layers.1.weight" in caplog.text  # the log names them
    summary = json.loads((tmp_path / "sp" / "summary.json").read_text())
    assert summary["execution"] == "sparse" and summary["completed"] and summary["updates"] >= 1

    assert main(["eval", str(tmp_path / "sp" / "best.pt"), "--json"]) == 0
    ckpt = _last_json(capsys)
    assert ckpt["execution"] == "sparse"
    assert ckpt["test_acc"] == pytest.approx(summary["test_acc_selected"])
    assert ckpt["itop_rate"] == pytest.approx(summary["itop_rate"])

    export = tmp_path / "model.pt"
    assert main(["export", str(tmp_path / "sp" / "best.pt"), "-o", str(export)]) == 0
    out = capsys.readouterr().out
    assert "file size:" in out and "stored dense" in out
    assert main(["eval", str(export), "--json"]) == 0
    exp = _last_json(capsys)
    assert exp["test_acc"] == pytest.approx(ckpt["test_acc"])
    assert exp["file_bytes"] < exp["dense_bytes"]

    before = export.read_bytes()  # an existing output is never overwritten
    assert main(["export", str(tmp_path / "sp" / "best.pt"), "-o", str(export)]) == 2
    assert "already exists" in _error(capsys) and export.read_bytes() == before

    # Resuming the sparse run in the other mode: one line, the checkpoint belongs to another run.
    assert main(["train", *RUN, "--execution", "dense", "--out-dir", str(tmp_path), "--name", "sp",
                 "--resume", "auto"]) == 2
    assert "execution" in _error(capsys)


def test_dense_executed_run_exports_its_masked_layers(tmp_path, capsys):
    assert main(["train", *RUN, "--out-dir", str(tmp_path), "--name", "d"]) == 0
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["execution"] == "dense"
    assert main(["train", *RUN, "--execution", "sparse", "--out-dir", str(tmp_path), "--name", "s"]) == 0
    sparse = json.loads((tmp_path / "s" / "summary.json").read_text())
    for key in ("training_flops_relative", "inference_flops_relative", "itop_rate", "sparsity", "updates"):
        assert sparse[key] == pytest.approx(summary[key]), key  # same accounting in both modes
    capsys.readouterr()
    assert main(["export", str(tmp_path / "d" / "best.pt"), "-o", str(tmp_path / "m.pt"), "--json"]) == 0
    info = _last_json(capsys)
    assert info["layers"] == 3 and info["nnz"] < info["weights"]
    assert main(["eval", str(tmp_path / "m.pt"), "--json"]) == 0
    assert _last_json(capsys)["test_acc"] == pytest.approx(summary["test_acc_selected"])


def test_bad_input_gives_one_line(tmp_path, capsys):
    assert main(["train", *RUN, "--method", "snfs", "--execution", "sparse", "--out-dir", str(tmp_path)]) == 2
    assert "execution: dense" in _error(capsys)
    assert main(["train", *RUN, "--execution", "spares", "--out-dir", str(tmp_path)]) == 2
    assert "did you mean 'sparse'" in _error(capsys)
    assert main(["train", *RUN, "--method", "dense", "--out-dir", str(tmp_path), "--name", "dense"]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "dense" / "best.pt"), "-o", str(tmp_path / "x.pt")]) == 2
    assert "nothing to compress" in _error(capsys)
    assert not (tmp_path / "x.pt").exists()
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert main(["eval", str(tmp_path / "junk.pt")]) == 2
    _error(capsys)

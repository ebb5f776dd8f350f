"""Transformers from the command line: gpt-mini on a text file, vit-tiny on images; itop eval."""

import gzip
import json
import math
import struct

import numpy as np
import pytest
import torch
from conftest import FASHION_DIR

from itop.cli import main
from itop.training import Trainer
from itop.training.config import load_config

TINY_GPT = '{n_layer: 1, n_embd: 32, n_head: 2}'
COMMON = ["--threads", "1", "--tensorboard", "false", "--progress", "none"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """About 6000 characters of a tiny language: repetitive enough to learn in seconds."""
    rng = np.random.default_rng(0)
    words = ["sparse", "dense", "weights", "grow", "prune", "the", "net", "every", "step", "and"]
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(" ".join(words[i] for i in rng.integers(0, len(words), 1000)) + "\n", encoding="utf-8")
    return path


def _gpt_args(text_file, out, *extra):
    return ["train", "--model", "gpt-mini", "--dataset", "text", "--data-file", str(text_file),
            "--data-args", "{block_size: 32}", "--model-args", TINY_GPT, "--optimizer", "adamw", "--lr", "1e-2",
            "--lr-schedule", "constant",
            "--weight-decay", "0.01", "--batch-size", "16", "--sparsity", "0.8", "--update-interval", "10",
            "--out-dir", str(out), "--name", "gpt", *COMMON, *extra]


def test_gpt_on_a_text_file_from_the_cli_and_itop_eval(text_file, tmp_path, capsys):
    assert main(_gpt_args(text_file, tmp_path, "--epochs", "4", "--accumulate", "2")) == 0
    out = capsys.readouterr().out
    assert "test next-token accuracy" in out and "test perplexity" in out
    run = tmp_path / "gpt"
    s = json.loads((run / "summary.json").read_text())
    windows = _train_windows(text_file)
    assert s["task"] == "language-model" and s["completed"]
    assert s["steps"] == 4 * math.ceil(math.ceil(len(windows) / 16) / 2)  # optimizer steps
    assert s["final_test_perplexity"] == pytest.approx(math.exp(s["final_test_loss"]))
    assert s["final_test_bits_per_token"] == pytest.approx(s["final_test_loss"] / math.log(2))
    assert s["final_test_perplexity"] < windows.vocab_size / 2  # uniform guessing: the vocabulary size
    assert s["updates"] > 0 and s["itop_rate"] > 0.2 and s["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert 0 < s["inference_flops_relative"] < 1  # attention's products stay dense
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["type"] == "epoch"]
    assert {"train_perplexity", "val_bits_per_token", "test_perplexity", "test_acc"} <= set(epochs[-1])
    assert epochs[-1]["task"] == "language-model"
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    # The attention projections are sparse (and the embeddings dense).
    assert "blocks.0.self_attn.in_proj_weight" in epochs[-1]["layers"]
    assert "tok_embed.weight" not in epochs[-1]["layers"]

    assert main(["eval", str(run / "best.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["task"] == "language-model"
    # best.pt is the selected epoch: itop eval gives exactly the numbers of the run
    assert result["test_loss"] == s["test_loss_selected"] and result["test_acc"] == s["test_acc_selected"]
    assert result["test_perplexity"] == pytest.approx(s["test_perplexity_selected"])
    assert result["zero_weights_fraction"] == pytest.approx(result["sparsity"])

    # The text file moved: itop eval takes its new place.
    moved = tmp_path / "moved.txt"
    moved.write_bytes(text_file.read_bytes())
    assert main(["eval", str(run / "best.pt"), "--json", "--data-file", str(moved)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["test_loss"] == result["test_loss"]


def _train_windows(text_file):
    from itop.data import load_dataset

    return load_dataset("text", data_file=str(text_file), block_size=32).train


def _gpt_trainer(text_file, tmp_path, method, **extra):
    return Trainer(load_config(None, {
        "model": "gpt-mini", "dataset": "text", "data_file": str(text_file), "data_args": {"block_size": 32},
        "model_args": {"n_layer": 1, "n_embd": 32, "n_head": 2}, "method": method, "sparsity": 0.8,
        "epochs": 1, "max_steps": 2, "threads": 1, "tensorboard": False, "progress": "none",
        "out_dir": str(tmp_path), "name": method, **extra}))


@pytest.mark.parametrize("method, extra", [("snip", {}), ("synflow", {"synflow_rounds": 5}), ("grasp", {})])
def test_pruning_at_init_on_a_language_model(text_file, tmp_path, method, extra):
    """SNIP/GraSP score with the LM loss over all positions (GraSP's second derivative through
    attention included), SynFlow feeds token ids; then training runs on the pruned masks."""
    static = _gpt_trainer(text_file, tmp_path, "static")
    t = _gpt_trainer(text_file, tmp_path, method, **extra)
    counts = {k: int(m.sum()) for k, m in t.sparsifier.masks().items()}
    assert sum(counts.values()) == sum(int(m.sum()) for m in static.sparsifier.masks().values())
    assert counts != {k: int(m.sum()) for k, m in static.sparsifier.masks().items()}  # scored, not ERK
    t.fit()
    assert t.progress.step == 2 and t.sparsifier.stats(per_layer=False)["sparsity"] == pytest.approx(0.8, abs=1e-3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data-args", "{data_file: other.txt, block_size: 32}"], "data_file is given twice"),
        (["--dataset", "digits", "--model", "lenet-300-100"], "data_file for dataset 'digits'"),
        (None, "it is a language model"),
        (["--accumulate", "0"], "accumulate must be a positive number"),
    ],
)
def test_bad_text_runs_are_one_line_errors(text_file, tmp_path, capsys, args, message):
    if args is None:  # a language model on images
        argv = ["train", "--model", "gpt-mini", "--dataset", "digits", "--out-dir", str(tmp_path), *COMMON]
    else:
        argv = _gpt_args(text_file, tmp_path, "--epochs", "1") + args
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("itop: error:") and message in err and len(err.splitlines()) == 1


def test_vit_on_digits_from_the_cli(tmp_path, capsys):
    assert main(["train", "--model", "vit-tiny", "--dataset", "digits", "--model-args", "{dim: 32, depth: 2}",
                 "--epochs", "1", "--batch-size", "32", "--accumulate", "2", "--optimizer", "adamw", "--lr", "1e-3",
                 "--weight-decay", "0.05", "--sparsity", "0.8", "--update-interval", "5",
                 "--out-dir", str(tmp_path), "--name", "vit", *COMMON]) == 0
    s = json.loads((tmp_path / "vit" / "summary.json").read_text())
    assert s["task"] == "classification" and s["completed"] and s["updates"] > 0
    assert "final_test_perplexity" not in s
    layers = json.loads((tmp_path / "vit" / "metrics.jsonl").read_text().splitlines()[-1])["layers"]
    assert any(k.endswith("self_attn.in_proj_weight") for k in layers), sorted(layers)


def _idx(array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not present")
def test_vit_on_a_fashion_mnist_subset_from_the_cli(tmp_path, capsys):
    """The real IDX files, cut to their first 2000/500 images (the same format, read by the same code)."""
    from itop.data.idx import read_idx

    sub = tmp_path / "fashion"
    sub.mkdir()
    for prefix, n in (("train", 2000), ("t10k", 500)):
        for kind, ndim in (("images", 3), ("labels", 1)):
            name = f"{prefix}-{kind}-idx{ndim}-ubyte.gz"
            (sub / name).write_bytes(_idx(read_idx(FASHION_DIR, name, ndim=ndim)[:n]))
    assert main(["train", "--model", "vit-tiny", "--dataset", "fashion-mnist", "--data-dir", str(sub),
                 "--download", "false", "--model-args", "{dim: 32, depth: 2}", "--epochs", "2",
                 "--batch-size", "64", "--optimizer", "adamw", "--lr", "3e-3", "--lr-schedule", "constant", "--weight-decay", "0.05",
                 "--sparsity", "0.8", "--update-interval", "10", "--out-dir", str(tmp_path), "--name", "vit",
                 *COMMON]) == 0
    s = json.loads((tmp_path / "vit" / "summary.json").read_text())
    assert s["completed"] and s["updates"] > 0 and s["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert s["final_test_acc"] > 0.3  # chance is 0.1; 0.45 here

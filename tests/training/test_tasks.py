"""Tasks: the loss, counts and derived metrics the loop and the evaluation use."""

import math

import pytest
import torch
from torch import nn

from itop.data import load_dataset
from itop.errors import ConfigError
from itop.training import evaluate
from itop.training.config import load_config
from itop.training.factories import make_task_for
from itop.training.tasks import TASKS, LanguageModelTask, Task, full_precision, make_task


def test_classification_scores_samples():
    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(7, 5, generator=g), torch.randint(0, 5, (7,), generator=g)
    task = make_task("classification", label_smoothing=0.1)
    assert torch.equal(task.loss(out, y), nn.functional.cross_entropy(out, y, label_smoothing=0.1))
    assert task.count(y) == 7
    assert int(task.correct(out, y)) == int((out.argmax(1) == y).sum())
    loss_sum, correct, count = task.sums(out, y).tolist()
    # evaluation has no label smoothing: test losses compare across runs
    assert loss_sum == pytest.approx(float(nn.functional.cross_entropy(out, y, reduction="sum")))
    assert (correct, count) == (int((out.argmax(1) == y).sum()), 7)
    assert task.metrics("test", 0.5, 0.75) == {"test_loss": 0.5, "test_acc": 0.75}


def test_language_model_scores_every_position():
    g = torch.Generator().manual_seed(1)
    out, y = torch.randn(3, 6, 11, generator=g), torch.randint(0, 11, (3, 6), generator=g)
    task = make_task("language-model")
    assert isinstance(task, LanguageModelTask)
    manual = sum(nn.functional.cross_entropy(out[i, t], y[i, t], reduction="sum") for i in range(3) for t in range(6))
    torch.testing.assert_close(task.loss(out, y), manual / 18)
    assert task.count(y) == 18  # tokens, not sequences
    assert int(task.correct(out, y)) == int((out.argmax(-1) == y).sum())
    loss = 1.25
    m = task.metrics("val", loss, 0.5)
    assert m["val_perplexity"] == pytest.approx(math.exp(1.25))
    assert m["val_bits_per_token"] == pytest.approx(1.25 / math.log(2))
    assert set(task.metrics("val", float("nan"), 0.0)) == set(m)  # a diverged loss still records


def test_outputs_of_the_wrong_shape_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"expects outputs of shape \(N, classes\).*model made for this dataset"):
        Task().loss(torch.zeros(2, 4, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"\(N, T, vocab\)"):
        LanguageModelTask().loss(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ConfigError, match="did you mean 'language-model'"):
        make_task("language-modle")
    assert list(TASKS) == ["classification", "language-model"]


def test_half_precision_outputs_get_a_float32_loss():
    assert full_precision(torch.zeros(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert full_precision(torch.zeros(2, dtype=torch.float64)).dtype == torch.float64
    assert full_precision(torch.zeros(2, dtype=torch.long)).dtype == torch.long


def test_the_dataset_chooses_the_task(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("abcdefgh " * 40)
    cfg = load_config(None, {"dataset": "text", "data_file": str(text), "model": "gpt-mini", "label_smoothing": 0.1})
    lm = make_task_for(cfg, load_dataset("text", data_file=str(text), block_size=8))
    assert isinstance(lm, LanguageModelTask) and lm.label_smoothing == 0.1
    digits = load_config(None, {})
    assert type(make_task_for(digits, load_dataset("digits"))) is Task


def test_evaluate_averages_over_tokens(tmp_path):
    """evaluate() with the LM task: loss and next-token accuracy per token over the whole split."""
    from itop.models import build_model

    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. " * 30)
    splits = load_dataset("text", data_file=str(text), block_size=16, val_fraction=0.0)
    torch.manual_seed(0)
    model = build_model("gpt-mini", **splits.model_shape(), n_layer=1, n_embd=16, n_head=2)
    loader = splits.loader("test", batch_size=3, shuffle=False)
    loss, acc = evaluate(model, loader, torch.device("cpu"), task=LanguageModelTask())
    x = torch.stack([splits.test[i][0] for i in range(len(splits.test))])
    y = torch.stack([splits.test[i][1] for i in range(len(splits.test))])
    with torch.no_grad():
        out = model(x)
    assert loss == pytest.approx(float(nn.functional.cross_entropy(out.flatten(0, 1), y.flatten())), rel=1e-6)
    assert acc == pytest.approx(float((out.argmax(-1) == y).float().mean()))

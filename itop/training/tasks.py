"""Tasks: what a model's outputs mean and how a run scores them, chosen by the dataset.

The loop and the evaluation never look at outputs themselves (no ``argmax(1) == y`` there): a
:class:`Task` gives the training loss, the per-batch sums behind the reported metrics, and the
metrics derived from the mean loss. The dataset names its task
(:attr:`itop.data.DatasetSplits.task`), so a new kind of data brings its scoring with it:

* ``classification``: ``(N, C)`` logits and ``(N,)`` class ids; cross-entropy (with the run's
  label smoothing for training), accuracy over samples.
* ``language-model``: ``(N, T, V)`` next-token logits and ``(N, T)`` next-token ids (a causal
  LM such as ``gpt-mini`` on the ``text`` dataset); cross-entropy over all ``N x T`` positions,
  next-token accuracy weighted by tokens, and from the mean loss (nats per token) the
  perplexity ``exp(loss)`` and bits per token ``loss / ln 2`` (Radford et al. 2019 report
  both; the ``text`` dataset's tokens are characters, so this is bits per character).

Records and summaries keep the names ``*_loss`` and ``*_acc`` for every task (model selection
reads ``val_acc``), and add the task's derived metrics under ``*_perplexity`` and
``*_bits_per_token``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

__all__ = ["TASKS", "ClassificationTask", "LanguageModelTask", "Task", "full_precision", "make_task"]


def full_precision(out: torch.Tensor) -> torch.Tensor:
    """Half-precision outputs (under autocast) as float32 for the loss; float32 and float64 stay."""
    return out.float() if out.is_floating_point() and out.element_size() < 4 else out


class Task:
    """Classification: one prediction per sample.

    Args:
        label_smoothing: Label smoothing of the training loss (evaluation uses plain
            cross-entropy, so test losses compare across runs).
    """

    name: ClassVar[str] = "classification"
    #: Dimensions of a target tensor of one batch (the outputs have one more: the classes).
    target_dims: ClassVar[int] = 1

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = float(label_smoothing)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(label_smoothing={self.label_smoothing})"

    def predictions(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (P, C), targets (P,))`` of the batch's ``P`` predictions."""
        if y.dim() != self.target_dims or out.dim() != self.target_dims + 1 or out.shape[:-1] != y.shape:
            raise ConfigError(
                f"the {self.name} task expects outputs of shape {self._shapes()}, got outputs "
                f"{tuple(out.shape)} for targets {tuple(y.shape)}; use a model made for this dataset"
            )
        return out.reshape(-1, out.shape[-1]), y.reshape(-1)

    def _shapes(self) -> str:
        return "(N, classes) for targets (N,)"

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss: mean cross-entropy over the batch's predictions (a scalar)."""
        logits, targets = self.predictions(out, y)
        return nn.functional.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    def count(self, y: torch.Tensor) -> int:
        """Number of predictions in a batch with targets ``y`` (the weight of its mean loss)."""
        return y.numel()

    def correct(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Number of predictions whose arg-max is the target (a 0-d tensor)."""
        logits, targets = self.predictions(out, y)
        return (logits.argmax(-1) == targets).sum()

    def sums(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[summed cross-entropy, correct, predictions]`` of a batch (float64), for evaluation."""
        logits, targets = self.predictions(out, y)
        loss = nn.functional.cross_entropy(full_precision(logits), targets, reduction="sum").double()
        correct = (logits.argmax(-1) == targets).sum().double()
        return torch.stack([loss, correct, torch.tensor(float(targets.numel()), dtype=torch.float64,
                                                        device=loss.device)])

    def derived(self, loss: float) -> dict[str, float]:
        """Metrics derived from a mean loss, by name without the split (none for classification)."""
        return {}

    def metrics(self, prefix: str, loss: float, acc: float) -> dict[str, float]:
        """``{prefix_loss, prefix_acc, prefix_<derived>...}`` of one split (``train``, ``test``)."""
        return {f"{prefix}_loss": loss, f"{prefix}_acc": acc,
                **{f"{prefix}_{k}": v for k, v in self.derived(loss).items()}}


ClassificationTask = Task


class LanguageModelTask(Task):
    """Next-token prediction: one prediction per position of each sequence.

    Perplexity and bits per token are derived from the mean cross-entropy over tokens
    (nats): ``exp(loss)`` and ``loss / ln 2``. A mean loss over a whole split, not a mean of
    batch perplexities, so the numbers do not depend on the batch size.
    """

    name: ClassVar[str] = "language-model"
    target_dims: ClassVar[int] = 2

    def _shapes(self) -> str:
        return "(N, T, vocab) for targets (N, T)"

    def derived(self, loss: float) -> dict[str, float]:
        if not math.isfinite(loss):
            return {"perplexity": float("nan"), "bits_per_token": float("nan")}
        return {"perplexity": math.exp(min(loss, 700.0)), "bits_per_token": loss / math.log(2.0)}


#: Task name -> class (``cls(label_smoothing)``); a dataset names its entry in ``DatasetSplits.task``.
TASKS: Registry[type[Task]] = Registry("task")
TASKS.register(Task.name, Task)
TASKS.register(LanguageModelTask.name, LanguageModelTask)


def make_task(name: str, label_smoothing: float = 0.0) -> Task:
    """The task called ``name`` (an unknown name is a one-line error with the nearest one)."""
    return TASKS.lookup(name)(label_smoothing)

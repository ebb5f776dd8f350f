"""Dynamic sparse training with PyTorch Lightning (``lightning.Trainer``).

Add one callback::

    from itop.integrations.lightning import ItopCallback

    trainer = lightning.Trainer(max_epochs=10, callbacks=[ItopCallback("rigl", sparsity=0.9)])
    trainer.fit(module, data)                 # or trainer.fit(module, data, ckpt_path="last")

What it does, hook by hook:

* ``on_fit_start``: builds the :class:`~itop.Sparsifier` on the LightningModule and the
  optimizer ``configure_optimizers`` returned (``optimizer_index`` picks one of several), with
  ``total_steps = trainer.estimated_stepping_batches`` for the schedules. Lightning has set up
  the strategy by then (the model is on its device, the process group exists under DDP).
* ``on_train_batch_end``: one :meth:`~itop.Sparsifier.step` per optimizer step, detected by
  ``trainer.global_step`` advancing, so with ``accumulate_grad_batches=N`` the sparsifier
  steps once every N batches: ΔT and every schedule count optimizer steps, and RigL's gradient
  growth sees the accumulated gradient (Lightning zeroes gradients only at the start of the
  next accumulation window). ``itop/sparsity``, ``itop/itop_rate``,
  ``itop/reliable_itop_rate``, ``itop/updates`` and the lifetime statistics go to the
  loggers through ``LightningModule.log_dict`` at each optimizer step.
* Checkpoints: the sparsifier's state (masks, step, R_s tracker, random streams) is this
  callback's ``state_dict()``, which Lightning stores in every checkpoint and hands back to
  ``load_state_dict()`` when ``fit(..., ckpt_path=...)`` resumes, before ``on_fit_start``; the
  sparsifier is then rebuilt from it, so training continues exactly.
* DDP is Lightning's: every rank builds the same sparsifier, and the engine broadcasts rank 0's
  initial masks and every drop/grow decision, so masks are identical across ranks.

Which weights are sparse follows :class:`~itop.TargetSelector` (Linear, Conv,
``nn.MultiheadAttention`` projections, HF ``Conv1D``; embeddings, norms and biases dense);
the table of sparse and dense weights is logged when fitting starts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..sparsifier import Sparsifier
from ..targets import TargetSelector
from ._common import Recipe, metrics, unwrap_optimizer

try:
    from lightning.pytorch import Callback
    from lightning.pytorch.core.optimizer import _MockOptimizer
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"itop.integrations.lightning needs lightning ({e}); install it with pip install 'itop[lightning]'"
    ) from None

__all__ = ["ItopCallback"]

log = logging.getLogger(__name__)


class ItopCallback(Callback):
    """A ``lightning.pytorch.Callback`` that trains the LightningModule sparsely.

    Args:
        method: A registered method (``itop.list_methods()``), e.g. ``"rigl"``, ``"set"``.
        targets: Which weights to sparsify (default: see the module docstring).
        per_layer: Also log each layer's density and R_s.
        optimizer_index: Which of ``trainer.optimizers`` to hook, when there are several.
        prog_bar: Show R_s in the progress bar.
        **overrides: :class:`~itop.SparseConfig` fields, e.g. ``sparsity=0.9``,
            ``update_interval=100``.
    """

    def __init__(
        self,
        method: str = "rigl",
        *,
        targets: TargetSelector | None = None,
        per_layer: bool = False,
        optimizer_index: int = 0,
        prog_bar: bool = False,
        **overrides: Any,
    ) -> None:
        super().__init__()
        self.recipe = Recipe(method, targets, dict(overrides))
        self.per_layer = bool(per_layer)
        self.optimizer_index = int(optimizer_index)
        self.prog_bar = bool(prog_bar)
        self._sparsifier: Sparsifier | None = None
        self._pending: Mapping[str, Any] | None = None
        self._seen_step = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.recipe.method)

    @property
    def sparsifier(self) -> Sparsifier:
        """The sparsifier (built when fitting starts)."""
        if self._sparsifier is None:
            raise ConfigError(
                "ItopCallback builds its sparsifier when fitting starts, once Lightning has "
                "created the optimizer; call trainer.fit() first"
            )
        return self._sparsifier

    # -- hooks ---------------------------------------------------------------------------------

    def on_fit_start(self, trainer, pl_module) -> None:
        # without an optimizer Lightning runs with a placeholder, which never steps
        optimizers = [o for o in trainer.optimizers if not isinstance(o, _MockOptimizer)]
        if not optimizers:
            raise ConfigError(
                "ItopCallback found no optimizer: the LightningModule's configure_optimizers "
                "returned none; return the optimizer that trains the model"
            )
        if not 0 <= self.optimizer_index < len(optimizers):
            raise ConfigError(
                f"optimizer_index {self.optimizer_index} is out of range: the trainer has "
                f"{len(optimizers)} optimizer(s)"
            )
        if self._sparsifier is not None:  # a second fit() call
            self._pending = self._sparsifier.state_dict()
            self._sparsifier.finalize()
            self._sparsifier = None
        total = trainer.estimated_stepping_batches
        total = int(total) if isinstance(total, (int, float)) and math.isfinite(total) and total > 0 else None
        optimizer = unwrap_optimizer(optimizers[self.optimizer_index])
        self._sparsifier = self.recipe.build(pl_module, optimizer, total, self._pending)
        if self._pending is not None:
            log.info("itop: sparsifier resumed at step %d (R_s %.4f)",
                     self._sparsifier.step_count, self._sparsifier.itop_rate())
        self._pending = None

    def on_train_start(self, trainer, pl_module) -> None:
        # global_step is restored from a checkpoint only after on_fit_start
        self._seen_step = int(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        steps = int(trainer.global_step) - self._seen_step
        if steps <= 0:
            return
        self._seen_step = int(trainer.global_step)
        sparsifier = self.sparsifier
        for _ in range(steps):
            sparsifier.step()
        pl_module.log_dict(metrics(sparsifier, self.per_layer), on_step=True, on_epoch=False,
                           prog_bar=False, logger=True, batch_size=1)
        if self.prog_bar:
            pl_module.log("R_s", sparsifier.itop_rate(), on_step=True, on_epoch=False,
                          prog_bar=True, logger=False, batch_size=1)

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        if self._sparsifier is not None:
            return self._sparsifier.state_dict()
        return dict(self._pending) if self._pending is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self._sparsifier is not None:  # restored after setup (some strategies do)
            self._sparsifier.load_state_dict(state_dict)
        else:
            self._pending = state_dict

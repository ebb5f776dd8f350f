"""Dynamic sparse training with the Hugging Face ``transformers.Trainer``.

Add one callback to any ``Trainer``::

    from itop.integrations.hf import ItopCallback

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[ItopCallback("rigl", sparsity=0.9, update_interval=100)])
    trainer.train()                       # or trainer.train(resume_from_checkpoint=True)

What it does, event by event:

* ``on_train_begin``: builds the :class:`~itop.Sparsifier` on ``Trainer.model`` and the
  Trainer's optimizer (which exists from this event on; accelerate's wrapper is unwrapped so
  masks are applied after every real optimizer step), with ``total_steps = max_steps`` for the
  schedules. When the Trainer resumes from a checkpoint, the sparsifier is rebuilt from the
  state saved in that checkpoint (masks, step, R_s tracker, random streams), so training
  continues exactly as if it had not stopped.
* ``on_optimizer_step``: one :meth:`~itop.Sparsifier.step` per optimizer step, i.e. once per
  ``gradient_accumulation_steps`` micro-batches. ΔT and every schedule therefore count
  optimizer steps, and RigL's gradient growth sees the accumulated (and clipped) gradient: this
  event comes after ``optimizer.step()`` and before the Trainer's ``model.zero_grad()``. A step
  the mixed-precision scaler skipped does not update the topology.
* ``on_log``: adds ``itop/sparsity``, ``itop/itop_rate``, ``itop/reliable_itop_rate``,
  ``itop/updates`` and the lifetime statistics to the logged values and to
  ``trainer.state.log_history``. Reporting callbacks that run before this one (TensorBoard,
  W&B: the Trainer's defaults) do not see them; :meth:`ItopCallback.attach` puts the callback
  first so that they do.
* ``on_save``: writes the sparsifier's state as ``itop_sparsifier.pt`` into the checkpoint
  folder the Trainer just wrote (``<output_dir>/checkpoint-<step>``), atomically.

Which weights are sparse follows :class:`~itop.TargetSelector`: Linear layers, GPT-2's
``Conv1D`` and ``nn.MultiheadAttention`` projections; embeddings, norms and biases stay dense,
and a weight tied to the token embedding (the LM head of GPT-2, BERT, ...) stays dense with a
warning unless ``targets=TargetSelector(patterns=("transformer.wte.weight",))`` names it.
The table of sparse and dense weights is logged when training starts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from ..sparsifier import Sparsifier
from ..targets import TargetSelector
from ._common import Recipe, metrics, unwrap_optimizer

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"itop.integrations.hf needs transformers ({e}); install it with pip install 'itop[hf]'"
    ) from None

__all__ = ["STATE_FILE", "ItopCallback"]

log = logging.getLogger(__name__)

#: File name of the sparsifier state inside a Trainer checkpoint folder.
STATE_FILE = "itop_sparsifier.pt"


class ItopCallback(TrainerCallback):
    """A ``transformers.TrainerCallback`` that trains the Trainer's model sparsely.

    Args:
        method: A registered method (``itop.list_methods()``), e.g. ``"rigl"``, ``"set"``,
            ``"rigl-itop"``.
        targets: Which weights to sparsify (default: see the module docstring).
        per_layer: Also log each layer's density and R_s.
        resume_from: Checkpoint folder to read the sparsifier state from when the Trainer
            resumes; by default the folder the Trainer resumes from,
            ``<output_dir>/checkpoint-<global_step>``.
        **overrides: :class:`~itop.SparseConfig` fields, e.g. ``sparsity=0.9``,
            ``update_interval=100``, ``distribution="erk"``.
    """

    def __init__(
        self,
        method: str = "rigl",
        *,
        targets: TargetSelector | None = None,
        per_layer: bool = False,
        resume_from: str | os.PathLike | None = None,
        **overrides: Any,
    ) -> None:
        self.recipe = Recipe(method, targets, dict(overrides))
        self.per_layer = bool(per_layer)
        self.resume_from = resume_from
        self._sparsifier: Sparsifier | None = None
        self.last_update: dict[str, Any] | None = None

    # -- access --------------------------------------------------------------------------------

    @property
    def sparsifier(self) -> Sparsifier:
        """The sparsifier (built when training starts)."""
        if self._sparsifier is None:
            raise ConfigError(
                "ItopCallback builds its sparsifier when training starts, once the Trainer has "
                "created its optimizer; call trainer.train() first"
            )
        return self._sparsifier

    def attach(self, trainer: Any) -> ItopCallback:
        """Put this callback first among ``trainer``'s callbacks, so that every reporting
        callback (TensorBoard, W&B, the progress printer) logs the sparsity metrics.

        Returns:
            ``self``.
        """
        handler = trainer.callback_handler
        if self in handler.callbacks:
            handler.callbacks.remove(self)
        handler.callbacks.insert(0, self)
        return self

    # -- events --------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None or optimizer is None:
            raise ConfigError(
                "ItopCallback found no optimizer on the Trainer when training started "
                "(a setup that creates it later, e.g. DeepSpeed, is not supported); let the "
                "Trainer create one or pass optimizers=(optimizer, scheduler) to Trainer"
            )
        if self._sparsifier is not None:  # a second train() call: start from this one's state
            self._sparsifier.finalize()
            self._sparsifier = None
        saved = self._saved_state(args, state) if state.global_step > 0 else None
        total = int(state.max_steps) if state.max_steps and state.max_steps > 0 else None
        self._sparsifier = self.recipe.build(model, unwrap_optimizer(optimizer), total, saved)
        if saved is not None:
            log.info("itop: sparsifier resumed at step %d (R_s %.4f)",
                     self._sparsifier.step_count, self._sparsifier.itop_rate())
        return control

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        skipped = bool(getattr(optimizer, "step_was_skipped", False))
        record = self.sparsifier.step(skip_update=skipped)
        if record is not None:
            self.last_update = record
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._sparsifier is None or logs is None:
            return control
        values = metrics(self._sparsifier, self.per_layer)
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)
        return control

    def on_save(self, args, state, control, **kwargs):
        if self._sparsifier is None or not state.is_world_process_zero:
            return control
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            raise CheckpointError(
                f"the Trainer's checkpoint folder {folder} does not exist, so the sparsifier "
                "state cannot be saved beside it; save checkpoints under output_dir"
            )
        path = folder / STATE_FILE
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self._sparsifier.state_dict(), tmp)
        os.replace(tmp, path)
        return control

    # -- resume --------------------------------------------------------------------------------

    def _saved_state(self, args, state) -> Mapping[str, Any]:
        step = int(state.global_step)
        if self.resume_from is not None:
            candidates = [Path(self.resume_from)]
        else:
            candidates = []
            if isinstance(getattr(args, "resume_from_checkpoint", None), str):
                candidates.append(Path(args.resume_from_checkpoint))
            candidates.append(Path(args.output_dir) / f"checkpoint-{step}")
        for folder in candidates:
            path = folder / STATE_FILE
            if not path.is_file():
                continue
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - any unreadable file is one message
                raise CheckpointError(f"cannot read the sparsifier state {path}: {e}; the checkpoint is damaged") from None
            if int(saved.get("step", -1)) != step:
                raise CheckpointError(
                    f"the sparsifier state in {path} is at step {saved.get('step')} but the Trainer "
                    f"resumed at step {step}; resume from the checkpoint folder it was saved in"
                )
            return saved
        where = ", ".join(str(c) for c in candidates)
        raise CheckpointError(
            f"the Trainer resumed at step {step} but no itop sparsifier state ({STATE_FILE}) is in "
            f"{where}; resume from a checkpoint saved with ItopCallback, or pass "
            "ItopCallback(resume_from=CHECKPOINT_FOLDER)"
        )

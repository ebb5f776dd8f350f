"""Lottery tickets: iterative magnitude pruning (IMP) with rewinding, as a library algorithm.

Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks",
ICLR 2019; Frankle, Dziugaite, Roy & Carbin, "Linear Mode Connectivity and the Lottery Ticket
Hypothesis", ICML 2020 (rewinding to step k instead of to initialisation).

IMP is not one sparse training but ``rounds + 1`` of them: round 0 trains the dense model; each
of the ``rounds`` pruning steps removes the same fraction of the remaining weights by *global*
magnitude, rewinds the survivors to their values at ``rewind_step`` of round 0, and trains
again with that mask fixed; the last round reaches the target sparsity. Its ITOP rate counts
every weight active in any round (1.0: round 0 is dense). Because it spans several trainings,
``itop.build("imp", ...)`` refuses and points here. In your own loop::

    imp = IterativeMagnitudePruning(sparsity=0.9, rounds=3, rewind_step=0)

    def train_round(model, optimizer, sparsifier, round, on_step):
        for step, (x, y) in enumerate(batches, 1):
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            sparsifier.step(); on_step(step)        # on_step captures the rewind point

    sparsifier = imp.run(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), train_round)

``itop train --method imp`` runs the same algorithm with a run folder per round.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .errors import ConfigError, check_sparsity
from .methods import SparseConfig, from_config, resolve_config
from .pruning import global_topk
from .sparsifier import Sparsifier

__all__ = ["IterativeMagnitudePruning", "global_magnitude_masks"]

log = logging.getLogger(__name__)

Masks = dict[str, torch.Tensor]


def global_magnitude_masks(model: nn.Module, sparsifier: Sparsifier, keep: int) -> Masks:
    """Masks keeping the ``keep`` largest-magnitude *active* weights over all sparsified layers.

    Inactive weights never come back (their score is below every active one), so each round's
    mask is a subset of the previous one, as IMP requires.
    """
    params = sparsifier.dense_weights()  # by name in either execution mode
    scores = {
        n: torch.where(m, params[n].detach().abs().float(), torch.full_like(params[n], -1.0, dtype=torch.float32))
        for n, m in sparsifier.masks().items()
    }
    return global_topk(scores, keep)


class IterativeMagnitudePruning:
    """The schedule and state of IMP: per-round sparsity, masks, rewind point, explored union.

    Args:
        sparsity: Target sparsity of the last round, in [0, 1).
        rounds: Pruning rounds (>= 1); round ``k`` keeps ``(1 - sparsity) ** (k / rounds)``.
        rewind_step: Training step of round 0 whose weights the survivors are rewound to
            (0: the initialisation, as in the original lottery ticket paper).
        config: Sparsifier settings of each round's static mask (distribution and targets
            matter; topology updates are forced off). Default: the ``imp`` preset.
    """

    def __init__(self, sparsity: float, rounds: int = 5, rewind_step: int = 0,
                 config: SparseConfig | None = None) -> None:
        check_sparsity(sparsity)
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ConfigError(f"rounds must be an integer >= 1 (train-prune-rewind rounds), got {rounds!r}")
        if isinstance(rewind_step, bool) or not isinstance(rewind_step, int) or rewind_step < 0:
            raise ConfigError(f"rewind_step must be an integer >= 0, got {rewind_step!r}")
        self.sparsity = float(sparsity)
        self.rounds = rounds
        self.rewind_step = rewind_step
        self.config = config if config is not None else resolve_config("imp", sparsity=sparsity)
        self.keep_fraction = (1.0 - self.sparsity) ** (1.0 / rounds)
        self.masks: Masks | None = None  # the mask of the next round (None: dense)
        self.rewind_state: dict[str, torch.Tensor] | None = None
        self.union: Masks | None = None

    @property
    def num_trainings(self) -> int:
        """``rounds + 1``: the dense round 0 and one training per pruning round."""
        return self.rounds + 1

    def round_sparsity(self, k: int) -> float:
        """Sparsity trained in round ``k`` (0 for the dense round; the target in the last)."""
        if not 0 <= k <= self.rounds:
            raise ConfigError(f"IMP round must be in 0..{self.rounds}, got {k}")
        if k == 0:
            return 0.0
        return self.sparsity if k == self.rounds else round(1.0 - self.keep_fraction**k, 6)

    def round_config(self, k: int) -> SparseConfig:
        """The static sparsifier config of round ``k``."""
        return dataclasses.replace(self.config, sparsity=self.round_sparsity(k), rounds=1, update_interval=None)

    def capture(self, model: nn.Module) -> None:
        """Remember the weights to rewind to (call at ``rewind_step`` of round 0)."""
        self.rewind_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def rewind(self, model: nn.Module) -> None:
        """Load the captured weights into ``model``."""
        if self.rewind_state is None:
            raise ConfigError(
                f"no weights captured at rewind_step {self.rewind_step}: round 0 trained fewer steps; lower it"
            )
        model.load_state_dict(self.rewind_state)

    def end_round(self, k: int, model: nn.Module, sparsifier: Sparsifier) -> Masks | None:
        """Record round ``k``'s mask in the union and compute the next round's mask.

        Returns:
            The masks of round ``k + 1`` (``None`` after the last round).
        """
        current = sparsifier.masks()
        self.union = current if self.union is None else {n: self.union[n] | m for n, m in current.items()}
        if k >= self.rounds:
            self.masks = None
            return None
        keep = round(self.keep_fraction ** (k + 1) * sparsifier.num_weights())
        self.masks = global_magnitude_masks(model, sparsifier, keep)
        return self.masks

    def itop_rate(self) -> float:
        """Fraction of sparsifiable weights active in any round so far."""
        if self.union is None:
            return 0.0
        return sum(int(m.sum()) for m in self.union.values()) / sum(m.numel() for m in self.union.values())

    def run(
        self,
        model: nn.Module,
        make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
        train_round: Callable[[nn.Module, torch.optim.Optimizer, Sparsifier, int, Callable[[int], None]], None],
        masks: Mapping[str, torch.Tensor] | None = None,
    ) -> Sparsifier:
        """Run every round with your training function; returns the last round's sparsifier.

        Args:
            model: The model at initialisation.
            make_optimizer: A fresh optimizer for each round.
            train_round: ``fn(model, optimizer, sparsifier, round, on_step)`` trains one round;
                it calls ``on_step(step)`` after each ``sparsifier.step()`` so that the rewind
                point is captured in round 0.
            masks: Round 0's masks (default: dense).
        """
        if self.rewind_step == 0:
            self.capture(model)
        self.masks = dict(masks) if masks is not None else None
        sparsifier = None
        for k in range(self.num_trainings):
            if k > 0:
                self.rewind(model)
            optimizer = make_optimizer(model)
            sparsifier = from_config(self.round_config(k), model, optimizer, masks=self.masks)
            log.info("IMP round %d/%d: sparsity %.4f", k, self.rounds, sparsifier.actual_sparsity())

            def on_step(step: int, k: int = k) -> None:
                if k == 0 and step == self.rewind_step:
                    self.capture(model)

            train_round(model, optimizer, sparsifier, k, on_step)
            if k == 0 and self.rewind_state is None:
                self.rewind(model)  # raises: rewind_step beyond round 0
            self.end_round(k, model, sparsifier)
        assert sparsifier is not None
        return sparsifier

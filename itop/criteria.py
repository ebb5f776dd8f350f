"""Prune and grow criteria: which active weights to drop, which inactive ones to grow.

A criterion is a small object with a ``scores(ctx)`` method returning one score per weight
(same shape as the weight). A prune criterion drops the *lowest*-scoring active weights; a grow
criterion grows the *highest*-scoring candidates. ``select`` turns scores into exactly ``n``
positions; the built-in criteria override it with faster equivalents that only touch the
positions that matter, so an update over a ResNet-50 costs milliseconds per layer.

Any callable ``fn(ctx) -> Tensor`` is accepted where a criterion is expected (wrapped in
:class:`ScoreCriterion`), so a new criterion is one function. SET and RigL differ only in their
grow criterion (:class:`RandomGrowth` vs :class:`GradientGrowth`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ._backend import (
    RandomState,
    all_finite,
    bottom_n,
    flat_gather,
    fresh_abs,
    sample_positions,
    top_n,
)
from .errors import ConfigError, DivergenceError
from .registry import Registry

__all__ = [
    "GROW_CRITERIA",
    "PRUNE_CRITERIA",
    "Criterion",
    "GradientGrowth",
    "LayerContext",
    "MagnitudePrune",
    "MomentumGrowth",
    "RandomGrowth",
    "RandomPrune",
    "ScoreCriterion",
    "SignedMagnitudePrune",
    "TaylorPrune",
    "UnfiredGrowth",
    "get_grow",
    "get_prune",
]


@dataclass
class LayerContext:
    """Everything a criterion may look at for one layer at one topology update.

    Attributes:
        name: Parameter name, e.g. ``"layer1.0.conv1.weight"``.
        weight: The parameter (masked: inactive entries are zero).
        mask: The current mask, same shape and dtype as ``weight`` (1 active, 0 inactive).
            While ``select_grow`` runs it holds exactly the kept weights (this update's drops
            cleared, nothing grown yet).
        active: Flat indices of the active weights *before* this update's prune.
        optimizer_state: The optimizer's state dict for this parameter (may be empty).
        ever_active: Bool tensor, True where the weight has been active at any time so far.
        step: The training step of this update.
        rng: The engine's random streams (use them, not global RNGs, so resumes are exact).
    """

    name: str
    weight: torch.Tensor
    mask: torch.Tensor
    active: torch.Tensor
    optimizer_state: Mapping[str, Any]
    ever_active: torch.Tensor
    step: int
    rng: RandomState
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def grad(self) -> torch.Tensor | None:
        """The dense gradient of the weight (inactive positions included), or None."""
        return self.weight.grad

    def require_grad(self, criterion: str) -> torch.Tensor:
        grad = self.weight.grad
        if grad is None:
            raise ConfigError(
                f"criterion '{criterion}' needs gradients but '{self.name}' has none: call "
                "sparsifier.step() after loss.backward() and optimizer.step(), before zero_grad()"
            )
        return grad


class Criterion:
    """Base class. Subclasses implement :meth:`scores`; ``select_*`` may be overridden.

    Attributes:
        name: Short name used in logs and configs.
        dense_gradient: When the criterion needs the dense weight gradient, for FLOP
            accounting: ``"never"``, ``"update"`` (at topology updates, RigL) or ``"always"``
            (every step, e.g. SNFS's momentum of inactive weights).
    """

    name = "criterion"
    dense_gradient = "never"
    #: ``scores`` returns a new tensor the engine may overwrite (saves a copy per update).
    fresh_scores = False

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        raise NotImplementedError

    def select_drop(self, ctx: LayerContext, n: int) -> torch.Tensor:
        """Flat indices of the ``n`` active weights with the lowest scores."""
        s = _finite(self.scores(ctx).reshape(-1)[ctx.active], self.name, ctx)
        return ctx.active[bottom_n(s, n).to(ctx.active.device)]

    def select_grow(self, ctx: LayerContext, keep: torch.Tensor, n: int) -> torch.Tensor:
        """Flat indices of the ``n`` highest-scoring weights not in ``keep`` (flat indices).

        NaN and +inf rank above every number, so if the scores hold any, some are selected:
        checking the selected scores is enough to catch a diverged run.
        """
        scores = self.scores(ctx)
        s = scores.reshape(-1)
        if s.dtype != torch.float32:
            s = s.float()
        elif not self.fresh_scores or s.data_ptr() != scores.data_ptr():
            s = s.clone()
        s.index_fill_(0, keep, float("-inf"))
        chosen = top_n(s, n).to(s.device)
        _finite(s.index_select(0, chosen), self.name, ctx)
        return chosen.to(ctx.weight.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _finite(s: torch.Tensor, name: str, ctx: LayerContext) -> torch.Tensor:
    if not all_finite(s):
        raise DivergenceError(
            f"criterion '{name}' got non-finite values in '{ctx.name}' at step {ctx.step}: "
            "the loss has diverged; lower the learning rate or check the data"
        )
    return s


class ScoreCriterion(Criterion):
    """Wrap a plain function ``fn(ctx) -> scores`` as a criterion."""

    def __init__(self, fn: Callable[[LayerContext], torch.Tensor], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "custom")

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        return self.fn(ctx)

    def __repr__(self) -> str:
        return f"ScoreCriterion({self.name})"


# ----------------------------------------------------------------------------------------------
# Prune criteria (drop the lowest scores among the active weights)


class MagnitudePrune(Criterion):
    """Drop the active weights of smallest magnitude ``|w|`` (SET, RigL, ITOP)."""

    name = "magnitude"
    fresh_scores = True

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        return ctx.weight.detach().abs()

    def select_drop(self, ctx: LayerContext, n: int) -> torch.Tensor:
        values = flat_gather(ctx.weight.detach(), ctx.active).float().abs_()
        return ctx.active.index_select(0, bottom_n(_finite(values, self.name, ctx), n).to(ctx.active.device))


class SignedMagnitudePrune(Criterion):
    """SET's original rule: drop the smallest positive and the largest negative weights.

    Mocanu et al. 2018 remove a fraction of the positive weights closest to zero and the same
    fraction of the negative weights closest to zero, so the balance of signs is kept. The
    ``n`` drops are split between the signs in proportion to their counts (zeros count as
    positive and go first).
    """

    name = "signed-magnitude"

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        # Rank within each sign, normalised by the group size: equal fractions of each get low.
        w = ctx.weight.detach().reshape(-1).float()
        out = torch.full_like(w, float("inf"))
        for group in (w >= 0, w < 0):
            idx = group.nonzero().squeeze(1)
            order = w[idx].abs().argsort()
            ranks = torch.empty_like(order, dtype=w.dtype)
            ranks[order] = torch.arange(idx.numel(), dtype=w.dtype, device=w.device)
            out[idx] = ranks / max(idx.numel(), 1)
        return out.view_as(ctx.weight)

    def select_drop(self, ctx: LayerContext, n: int) -> torch.Tensor:
        values = _finite(flat_gather(ctx.weight.detach(), ctx.active).float(), self.name, ctx)
        positive = values >= 0
        pos_idx = positive.nonzero().squeeze(1)
        neg_idx = (~positive).nonzero().squeeze(1)
        n_pos = min(pos_idx.numel(), round(n * pos_idx.numel() / max(values.numel(), 1)))
        n_neg = n - n_pos
        if n_neg > neg_idx.numel():
            n_neg, n_pos = neg_idx.numel(), n - neg_idx.numel()
        drop_pos = pos_idx[bottom_n(values[pos_idx], n_pos).to(pos_idx.device)]
        drop_neg = neg_idx[top_n(values[neg_idx], n_neg).to(neg_idx.device)]
        return ctx.active[torch.cat([drop_pos, drop_neg])]


class TaylorPrune(Criterion):
    """Drop the weights of lowest first-order Taylor importance ``|w * g|``.

    Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019: the
    estimated change of the loss when the weight is removed.
    """

    name = "taylor"
    fresh_scores = True

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        return (ctx.weight.detach() * ctx.require_grad(self.name)).abs()

    def select_drop(self, ctx: LayerContext, n: int) -> torch.Tensor:
        grad = flat_gather(ctx.require_grad(self.name), ctx.active)
        values = (flat_gather(ctx.weight.detach(), ctx.active) * grad).float().abs_()
        return ctx.active.index_select(0, bottom_n(_finite(values, self.name, ctx), n).to(ctx.active.device))


class RandomPrune(Criterion):
    """Drop active weights uniformly at random (an ablation baseline)."""

    name = "random"

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        return _random_scores(ctx)

    def select_drop(self, ctx: LayerContext, n: int) -> torch.Tensor:
        pick = sample_positions(ctx.active.numel(), n, ctx.rng, ctx.active.device)
        return ctx.active[pick]


def _random_scores(ctx: LayerContext) -> torch.Tensor:
    if ctx.weight.device.type == "cpu":
        values = ctx.rng.numpy.random(ctx.weight.numel(), dtype="float32")
        return torch.from_numpy(values).view_as(ctx.weight)
    gen = ctx.rng.torch_generator(ctx.weight.device)
    return torch.rand(ctx.weight.shape, device=ctx.weight.device, generator=gen)


# ----------------------------------------------------------------------------------------------
# Grow criteria (grow the highest scores among the candidates)


def _flat_mask(ctx: LayerContext) -> torch.Tensor:
    # During an update the mask already has this update's drops cleared and no grows set, so
    # its nonzero entries are exactly the kept weights.
    return ctx.mask.reshape(-1)


class RandomGrowth(Criterion):
    """Grow inactive weights uniformly at random (SET; Mocanu et al. 2018)."""

    name = "random"

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        return _random_scores(ctx)

    def select_grow(self, ctx: LayerContext, keep: torch.Tensor, n: int) -> torch.Tensor:
        numel = ctx.weight.numel()
        return sample_positions(numel, n, ctx.rng, ctx.weight.device, _flat_mask(ctx), numel - keep.numel())


class GradientGrowth(Criterion):
    """Grow the inactive weights with the largest dense-gradient magnitude ``|g|``.

    Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020 (RigL): the
    weights whose growth would reduce the loss fastest. Uses the gradient of the current batch
    at the update step.
    """

    name = "gradient"
    dense_gradient = "update"
    fresh_scores = True

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        return fresh_abs(ctx.require_grad(self.name))


class MomentumGrowth(Criterion):
    """Grow the inactive weights with the largest momentum magnitude (SNFS).

    Dettmers & Zettlemoyer, "Sparse Networks from Scratch: Faster Training without Losing
    Performance", 2019. Reads the optimizer's state by tensor name, not optimizer class: SGD's
    ``momentum_buffer``, or Adam/AdamW's ``exp_avg / (sqrt(exp_avg_sq) + eps)``.
    (SNFS's momentum-based redistribution of density across layers is not applied: layer
    counts stay fixed by the density distribution.)
    """

    name = "momentum"
    dense_gradient = "always"
    fresh_scores = True

    def __init__(self, eps: float = 1e-8):
        self.eps = eps

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        state = ctx.optimizer_state
        if "momentum_buffer" in state and state["momentum_buffer"] is not None:
            return state["momentum_buffer"].abs()
        if "exp_avg" in state and "exp_avg_sq" in state:
            return state["exp_avg"].abs() / (state["exp_avg_sq"].sqrt() + self.eps)
        raise ConfigError(
            f"criterion 'momentum' found no momentum for '{ctx.name}' (state keys: "
            f"{sorted(state)}); use SGD with momentum > 0 or Adam/AdamW, and start topology "
            "updates after the first optimizer step"
        )


class UnfiredGrowth(Criterion):
    """Grow weights that were never active before, at random; random among the rest after.

    An exploration-maximising grow rule for ITOP: every grown weight raises the ITOP rate
    R_s until the whole network has been visited, then it falls back to :class:`RandomGrowth`.
    """

    name = "unfired"

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        return _random_scores(ctx) + (~ctx.ever_active).to(torch.float32)

    def select_grow(self, ctx: LayerContext, keep: torch.Tensor, n: int) -> torch.Tensor:
        numel = ctx.weight.numel()
        device = ctx.weight.device
        ever = ctx.ever_active.reshape(-1)
        n_unfired = numel - int(ever.sum())
        if n_unfired >= n:  # unfired weights are never kept: only "ever active" blocks them
            return sample_positions(numel, n, ctx.rng, device, ever, n_unfired)
        first = (~ever).nonzero().squeeze(1)
        blocked = (_flat_mask(ctx) != 0) | ~ever  # kept, or already taken above
        more = sample_positions(
            numel, n - n_unfired, ctx.rng, device, blocked, numel - keep.numel() - n_unfired
        )
        return torch.cat([first, more])


PRUNE_CRITERIA: Registry[type[Criterion]] = Registry("prune criterion")
PRUNE_CRITERIA.register("magnitude", MagnitudePrune)
PRUNE_CRITERIA.register("signed-magnitude", SignedMagnitudePrune)
PRUNE_CRITERIA.register("taylor", TaylorPrune)
PRUNE_CRITERIA.register("random", RandomPrune)

GROW_CRITERIA: Registry[type[Criterion]] = Registry("grow criterion")
GROW_CRITERIA.register("random", RandomGrowth)
GROW_CRITERIA.register("gradient", GradientGrowth)
GROW_CRITERIA.register("momentum", MomentumGrowth)
GROW_CRITERIA.register("unfired", UnfiredGrowth)


def _get(kind: str, table: Registry[type[Criterion]], spec: Any) -> Criterion:
    if isinstance(spec, Criterion):
        return spec
    if isinstance(spec, str):
        return table.lookup(spec)()
    if callable(spec):
        return ScoreCriterion(spec)
    raise ConfigError(f"{kind} criterion must be a name, a Criterion or a function; got {spec!r}")


def get_prune(spec: str | Criterion | Callable) -> Criterion:
    """Resolve a prune criterion from a name, an instance or a score function."""
    return _get("prune", PRUNE_CRITERIA, spec)


def get_grow(spec: str | Criterion | Callable) -> Criterion:
    """Resolve a grow criterion from a name, an instance or a score function."""
    return _get("grow", GROW_CRITERIA, spec)

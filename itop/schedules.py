"""Schedules: when the topology changes, and how much of it.

Schedules hold no state: they are told the step and answer. That makes resuming exact and lets
a user swap any of them for a function of their own.

* :class:`UpdateSchedule` says whether a step is a topology-update step (every ``interval``
  steps, from ``start`` until ``end``).
* A drop-fraction schedule maps a step to the fraction of each layer's active weights that an
  update drops (and regrows): :class:`ConstantDrop`, :class:`CosineDrop` (RigL; the ITOP paper
  anneals 0.5 -> 0.005), :class:`LinearDrop`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ConfigError
from .registry import Registry

__all__ = [
    "DROP_SCHEDULES",
    "ConstantDrop",
    "CosineDrop",
    "CubicSparsity",
    "DropSchedule",
    "LinearDrop",
    "UpdateSchedule",
    "make_drop_schedule",
]

DropSchedule = Callable[[int], float]


@dataclass(frozen=True)
class UpdateSchedule:
    """Topology updates every ``interval`` steps in ``(start, end)``.

    A step ``t`` (counted from 1 after the first optimizer step) is an update step when
    ``t % interval == 0``, ``start < t < end`` and ``t < total_steps``. The last step of
    training is never an update, also when updates run to the end: weights grown there would
    never be trained, yet they would count in the ITOP rate. The schedule can only know which
    step is the last when it is told ``total_steps`` (:func:`itop.build` passes it on).

    Choosing ``interval`` (ΔT) is the central trade-off of ITOP (Liu et al. 2021): smaller
    intervals mean more updates and a higher ITOP rate R_s, but every regrown weight needs
    enough steps to prove itself before the next prune, or exploration stops being reliable.
    The paper used ΔT = 1500 for SET and 4000 for RigL on CIFAR (batch 128, 250 epochs).

    Args:
        interval: Steps between updates (ΔT); ``None`` means never (static sparse training).
        start: No update at or before this step.
        end: No update at or after this step (``None``: the end of training). RigL stops at
            75% of training (``end = 0.75 * total_steps``).
        total_steps: Length of training in steps; step ``total_steps`` (the last) is never
            an update. ``None``: unknown, only ``end`` limits the updates.
    """

    interval: int | None
    start: int = 0
    end: int | None = None
    total_steps: int | None = None

    def __post_init__(self) -> None:
        if self.interval is not None and (not isinstance(self.interval, int) or self.interval <= 0):
            raise ConfigError(
                f"update interval (ΔT) must be a positive integer number of steps, got "
                f"{self.interval!r}; use None for no topology updates"
            )
        if self.start < 0:
            raise ConfigError(f"update start step must be >= 0, got {self.start}")
        if self.end is not None and self.end <= self.start:
            raise ConfigError(
                f"update end step ({self.end}) must be after the start step ({self.start})"
            )
        if self.total_steps is not None and (
            isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int) or self.total_steps <= 0
        ):
            raise ConfigError(f"total_steps must be a positive integer, got {self.total_steps!r}")

    def is_update_step(self, step: int) -> bool:
        """Whether the topology changes after the optimizer step numbered ``step``."""
        if self.interval is None or step <= self.start:
            return False
        if self.end is not None and step >= self.end:
            return False
        if self.total_steps is not None and step >= self.total_steps:
            return False
        return step % self.interval == 0

    def num_updates(self, total_steps: int) -> int:
        """How many update steps fall in ``1..total_steps``."""
        return sum(1 for t in range(1, total_steps + 1) if self.is_update_step(t))


@dataclass(frozen=True)
class ConstantDrop:
    """The same drop fraction at every update."""

    fraction: float

    def __post_init__(self) -> None:
        _check_fraction("drop fraction", self.fraction)

    def __call__(self, step: int) -> float:
        return self.fraction


@dataclass(frozen=True)
class CosineDrop:
    """Cosine annealing from ``initial`` at ``start`` to ``final`` at ``end``.

    ``f(t) = final + (initial - final) * (1 + cos(pi * (t - start) / (end - start))) / 2``,
    the schedule of RigL (Evci et al. 2020) and of the ITOP paper (0.5 -> 0.005).
    """

    initial: float
    final: float
    end: int
    start: int = 0

    def __post_init__(self) -> None:
        _check_fraction("initial drop fraction", self.initial)
        _check_fraction("final drop fraction", self.final)
        if self.end <= self.start:
            raise ConfigError("the cosine drop schedule needs end > start (give total_steps)")

    def __call__(self, step: int) -> float:
        p = min(max((step - self.start) / (self.end - self.start), 0.0), 1.0)
        return self.final + (self.initial - self.final) * 0.5 * (1.0 + math.cos(math.pi * p))


@dataclass(frozen=True)
class LinearDrop:
    """Linear decay from ``initial`` at ``start`` to ``final`` at ``end``."""

    initial: float
    final: float
    end: int
    start: int = 0

    def __post_init__(self) -> None:
        _check_fraction("initial drop fraction", self.initial)
        _check_fraction("final drop fraction", self.final)
        if self.end <= self.start:
            raise ConfigError("the linear drop schedule needs end > start (give total_steps)")

    def __call__(self, step: int) -> float:
        p = min(max((step - self.start) / (self.end - self.start), 0.0), 1.0)
        return self.initial + (self.final - self.initial) * p


def _check_fraction(what: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{what} must be in [0, 1], got {value}")


def _constant(initial: float, final: float, start: int, end: int | None) -> DropSchedule:
    return ConstantDrop(initial)


def _annealed(name: str, cls: type) -> Callable[[float, float, int, int | None], DropSchedule]:
    def build(initial: float, final: float, start: int, end: int | None) -> DropSchedule:
        if end is None:
            raise ConfigError(f"the '{name}' drop schedule needs total_steps; pass total_steps=")
        return cls(initial, final, end, start)

    return build


#: Drop-fraction schedules by name: ``build(initial, final, start, end) -> schedule``.
DROP_SCHEDULES: Registry[Callable[[float, float, int, int | None], DropSchedule]] = Registry("drop schedule")
DROP_SCHEDULES.register("constant", _constant)
DROP_SCHEDULES.register("cosine", _annealed("cosine", CosineDrop))
DROP_SCHEDULES.register("linear", _annealed("linear", LinearDrop))


def make_drop_schedule(
    kind: str, initial: float, final: float = 0.0, start: int = 0, end: int | None = None
) -> DropSchedule:
    """Build a drop-fraction schedule by name (``constant``, ``cosine`` or ``linear``)."""
    return DROP_SCHEDULES.lookup(kind)(initial, final, start, end)


@dataclass(frozen=True)
class CubicSparsity:
    """Gradual pruning's cubic sparsity schedule (Zhu & Gupta 2017, "To prune, or not to prune").

    ``s(t) = final + (initial - final) * (1 - (t - start) / (end - start)) ** 3`` for ``t`` in
    ``[start, end]``; ``initial`` before ``start`` and ``final`` after ``end``. Pruning happens
    at the update steps inside the window (every ΔT), fast at first and slowly at the end.
    """

    initial: float
    final: float
    start: int
    end: int

    def __post_init__(self) -> None:
        _check_fraction("initial sparsity", self.initial)
        if not 0.0 <= self.final < 1.0:
            raise ConfigError(f"final sparsity must be in [0, 1), got {self.final}")
        if self.final < self.initial:
            raise ConfigError("gradual pruning needs final sparsity >= initial sparsity")
        if self.end <= self.start:
            raise ConfigError(
                f"gradual pruning cannot reach sparsity {self.final}: its window "
                f"[{self.start}, {self.end}] holds no pruning step; widen prune_start/prune_end "
                "or lower update_interval"
            )

    def __call__(self, step: int) -> float:
        p = min(max((step - self.start) / (self.end - self.start), 0.0), 1.0)
        return self.final + (self.initial - self.final) * (1.0 - p) ** 3

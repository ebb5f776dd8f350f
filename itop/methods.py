"""Named methods: dense, static, SET, RigL, SNFS and the ITOP presets.

A method is a set of defaults for :class:`SparseConfig`, the flat, serialisable description
of a sparsifier that configs and the CLI use. :func:`build` merges method defaults with the
user's overrides and returns a :class:`~itop.sparsifier.Sparsifier`. New methods are added with
:func:`register_method`; nothing here branches on a method's name.

Choosing ΔT (``update_interval``): more updates explore more weights and raise the ITOP rate
R_s, which is what improves accuracy (Liu et al. 2021, claim 1), but a regrown weight needs
enough steps to grow before the next prune judges it. Too small a ΔT turns exploration
unreliable and stops helping. The ITOP paper used ΔT = 1500 (SET) and 4000 (RigL) on CIFAR
with batch 128 for 250 epochs; scale ΔT with the number of steps per epoch when your batch size
or dataset differ, and watch ``reliable_itop_rate`` and the lifetime statistics.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .criteria import get_grow, get_prune
from .distributions import erdos_renyi_kernel, get_distribution
from .errors import ConfigError, check_sparsity, did_you_mean
from .registry import Registry
from .schedules import CubicSparsity, UpdateSchedule, make_drop_schedule
from .sparsifier import DROP_ROUNDINGS, GROW_INITS, Sparsifier
from .storage import get_execution
from .targets import TargetSelector

__all__ = ["METHODS", "Method", "SparseConfig", "build", "get_method", "list_methods", "register_method"]


# Field metadata read by the run-config schema (itop.training.config): how a key shows in sweep
# run names (label "" = the value alone), words that stand for values, and ``midrun``: whether a
# resumed run can take a new value from the resume step (True: the engine reads it only through
# schedules and criteria, which are told the step) or why not. Inert for the engine.
_VALUE_ONLY = {"label": ""}
_MIDRUN = {"midrun": True}
_AT_INIT = {"midrun": "it acts at initialisation only, which this run has passed"}
_LAYOUT = {"midrun": "it decides which weights are sparse and how many each layer keeps, fixed when "
                     "the run started"}


@dataclass
class SparseConfig:
    """Flat description of a sparsifier; every field has a config/CLI key of the same name.

    This is the one declaration of the sparsifier's keys: the run config (``itop train``,
    sweeps) reads its keys, types and defaults from here, so a new key is one field.

    Attributes:
        sparsity: Global fraction of zero weights, in [0, 1).
        distribution: ``uniform``, ``er``, ``erk`` (or ``custom`` with ``layer_sparsity``).
        erk_power_scale: Exponent of the ERK raw scale.
        prune: Prune criterion name.
        grow: Grow criterion name.
        update_interval: ΔT in steps; ``None`` for a static mask.
        update_start: First step after which updates may happen.
        update_end: Fraction of ``total_steps`` after which updates stop (RigL: 0.75).
        drop_fraction: Drop fraction at the start of training.
        final_drop_fraction: Drop fraction at the end (cosine/linear schedules).
        drop_schedule: ``constant``, ``cosine`` or ``linear``.
        grow_init: ``zero``, ``keep`` or ``normal``.
        keep_regrown: A weight dropped and regrown in the same update is treated as never
            dropped (keeps its value and optimizer state; the tracker sees no change), as the
            authors' code does. ``false``: it is reset like any grown weight.
        reset_optimizer_state: Zero the optimizer state of dropped and grown weights at each
            update (RigL; the ITOP CIFAR code's effect). ``false``: leave it, so a grown weight
            starts with the momentum dense gradients built at its position (SNFS, and the ITOP
            ImageNet code); the ``snfs`` preset's default. Needs ``execution: dense``.
        drop_rounding: ``floor`` or ``ceil`` of ``drop_fraction * active`` (Google's RigL/SET
            code floors, the ITOP and SNFS code ceils).
        sparse_init: Rescale initial weights to the sparse fan-in (Evci et al. 2022).
        keep_first_dense: Keep the first sparsifiable layer dense.
        keep_last_dense: Keep the last sparsifiable layer dense.
        layer_sparsity: Name pattern -> fixed sparsity of the matching layers.
        exclude: Name patterns of weights not sparsified at all.
        include: Name patterns of further parameters to sparsify beyond the default layer
            types (embeddings, positional tables, custom layers; ``TargetSelector.patterns``).
        reliable_steps: Threshold of the reliable R_s (default: ``update_interval``).
        seed: Seed of the engine's random streams (``None``: from torch's global RNG).
        initial_sparsity: Gradual magnitude pruning (GMP): start at this sparsity and prune
            to ``sparsity`` along the cubic schedule of Zhu & Gupta (2017).
        prune_start: GMP: fraction of training where pruning starts.
        prune_end: GMP: fraction of training where the target sparsity is reached.
        global_pruning: GMP: per-layer counts by global magnitude instead of the distribution.
        init_pruning: Prune at initialisation with ``snip``, ``grasp`` or ``synflow``
            (:mod:`itop.pruning`), then train the mask statically.
        init_batches: Batches of training data scored by SNIP/GraSP.
        synflow_rounds: SynFlow's pruning rounds.
        rounds: Iterative magnitude pruning (lottery tickets): number of train-prune-rewind
            rounds; each prunes the same fraction of the remaining weights.
        rewind_step: IMP: the training step whose weights survivors are rewound to.
        execution: ``dense`` (masked dense weights, the default and the reference) or
            ``sparse`` (masked ``nn.Linear`` layers store and compute with their active
            weights only; :mod:`itop.storage`).
    """

    sparsity: float = field(default=0.9, metadata={"role": "identity"})
    distribution: str = field(default="erk", metadata={**_VALUE_ONLY, **_LAYOUT})
    erk_power_scale: float = field(default=1.0, metadata=_LAYOUT)
    prune: str = field(default="magnitude", metadata={**_VALUE_ONLY, **_MIDRUN})
    grow: str = field(default="random", metadata={**_VALUE_ONLY, **_MIDRUN})
    update_interval: int | None = field(default=100, metadata={"label": "dt", "rank": 4,
                                                               "words": {"never": None}, **_MIDRUN})
    update_start: int = field(default=0, metadata=_MIDRUN)
    update_end: float = field(default=1.0, metadata=_MIDRUN)
    drop_fraction: float = field(default=0.3, metadata=_MIDRUN)
    final_drop_fraction: float = field(default=0.0, metadata=_MIDRUN)
    drop_schedule: str = field(default="cosine", metadata={**_VALUE_ONLY, **_MIDRUN})
    grow_init: str = field(default="zero", metadata={**_VALUE_ONLY, **_MIDRUN})
    keep_regrown: bool = field(default=True, metadata=_MIDRUN)
    reset_optimizer_state: bool = field(default=True, metadata=_MIDRUN)
    drop_rounding: str = field(default="floor", metadata=_MIDRUN)
    sparse_init: bool = field(default=False, metadata=_AT_INIT)
    keep_first_dense: bool = field(default=False, metadata=_LAYOUT)
    keep_last_dense: bool = field(default=False, metadata=_LAYOUT)
    layer_sparsity: dict[str, float] = field(default_factory=dict, metadata=_LAYOUT)
    exclude: list[str] = field(default_factory=list, metadata=_LAYOUT)
    include: list[str] = field(default_factory=list, metadata=_LAYOUT)
    reliable_steps: int | None = field(default=None, metadata={
        "midrun": "the reliable R_s counted so far used the old threshold, and a mix of two measures neither"})
    seed: int | None = None
    initial_sparsity: float | None = field(default=None, metadata={
        "midrun": "it shapes the whole gradual-pruning curve from step 0"})
    prune_start: float = field(default=0.1, metadata=_MIDRUN)
    prune_end: float = field(default=0.75, metadata=_MIDRUN)
    global_pruning: bool = field(default=False, metadata=_MIDRUN)
    init_pruning: str | None = field(default=None, metadata={**_VALUE_ONLY, **_AT_INIT})
    init_batches: int = field(default=1, metadata=_AT_INIT)
    synflow_rounds: int = field(default=100, metadata=_AT_INIT)
    rounds: int = field(default=1, metadata={"midrun": "it shapes the rounds of iterative magnitude pruning"})
    rewind_step: int = field(default=0, metadata={"midrun": "it shapes the rounds of iterative magnitude pruning"})
    # The value alone in sweep run names ("...-sparse-..."); fixed for a run's life: its layers
    # and optimizer state are laid out for the mode it started in.
    execution: str = field(default="dense", metadata={
        "label": "", "rank": 8,
        "midrun": "the model's layers and the optimizer state are laid out for the mode the run started in"})

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> SparseConfig:
        """Check every value without needing a model; raise :class:`ConfigError` naming the fix."""
        check_sparsity(self.sparsity)
        UpdateSchedule(self.update_interval, self.update_start)
        if not 0.0 < self.update_end <= 1.0:
            raise ConfigError(f"update_end is a fraction of training in (0, 1], got {self.update_end}")
        make_drop_schedule(self.drop_schedule, self.drop_fraction, self.final_drop_fraction, 0, 1)
        get_distribution(self.distribution)
        get_prune(self.prune)
        get_grow(self.grow)
        GROW_INITS.lookup(self.grow_init)
        DROP_ROUNDINGS.lookup(self.drop_rounding)
        for key in ("keep_regrown", "reset_optimizer_state"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be true or false, got {getattr(self, key)!r}")
        for pattern, s in self.layer_sparsity.items():
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
                raise ConfigError(f"layer_sparsity['{pattern}'] must be in [0, 1), got {s!r}")
        if self.reliable_steps is not None and self.reliable_steps <= 0:
            raise ConfigError(f"reliable_steps must be a positive number of steps, got {self.reliable_steps}")
        if self.initial_sparsity is not None:
            if not 0.0 <= self.initial_sparsity <= self.sparsity:
                raise ConfigError(
                    f"initial_sparsity must be in [0, sparsity={self.sparsity}], got {self.initial_sparsity}"
                )
            if not 0.0 <= self.prune_start < self.prune_end <= 1.0:
                raise ConfigError(
                    f"gradual pruning needs 0 <= prune_start < prune_end <= 1 (fractions of training), "
                    f"got {self.prune_start} and {self.prune_end}"
                )
            if self.update_interval is None:
                raise ConfigError("gradual pruning prunes at update steps: set update_interval (ΔT)")
        if self.init_pruning is not None:
            from .pruning import PRUNE_AT_INIT

            PRUNE_AT_INIT.lookup(self.init_pruning)
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"rounds must be an integer >= 1 (train-prune-rewind rounds), got {self.rounds!r}")
        get_execution(self.execution)
        if self.rewind_step < 0 or self.init_batches < 1 or self.synflow_rounds < 1:
            raise ConfigError("rewind_step must be >= 0, init_batches and synflow_rounds >= 1")
        return self


@dataclass(frozen=True)
class Method:
    """A named method: defaults, plus values that the method always forces."""

    name: str
    description: str
    defaults: Mapping[str, Any]
    forced: Mapping[str, Any] = field(default_factory=dict)


METHODS: Registry[Method] = Registry("method")


def register_method(
    name: str, description: str, *, forced: Mapping[str, Any] | None = None, replace: bool = False,
    **defaults: Any,
) -> Method:
    """Register a method under ``name`` (usable by :func:`build` and the CLI).

    Args:
        name: Method name; a name already taken is refused unless ``replace``.
        description: One line for listings.
        forced: Keys the method always sets, whatever the user passes (e.g. dense: sparsity 0).
        replace: Replace an existing method of the same name.
        **defaults: :class:`SparseConfig` fields the method changes by default.
    """
    _check_keys({**defaults, **(forced or {})})
    return METHODS.register(name, Method(name, description, dict(defaults), dict(forced or {})), replace=replace)


def get_method(name: str) -> Method:
    return METHODS.lookup(name)


def list_methods() -> list[Method]:
    return [METHODS[k] for k in METHODS.names()]


def _check_keys(values: Mapping[str, Any]) -> None:
    valid = SparseConfig.keys()
    for key in values:
        if key not in valid:
            hint = did_you_mean(key, valid) or f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown sparsifier option '{key}'{hint}")


def resolve_config(method: str, **overrides: Any) -> SparseConfig:
    """Method defaults, then the user's overrides, then the method's forced values."""
    m = get_method(method)
    _check_keys(overrides)
    values = {**m.defaults, **overrides, **m.forced}
    return SparseConfig(**values)


def _as_steps(value: float, total_steps: int | None, what: str) -> int | None:
    if value >= 1.0:
        return None
    if total_steps is None:
        raise ConfigError(f"{what} < 1 is a fraction of training: pass total_steps=")
    return int(value * total_steps)


def from_config(
    config: SparseConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    total_steps: int | None = None,
    *,
    batches: Iterable | None = None,
    input_shape: Sequence[int] | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    targets: TargetSelector | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    input_dtype: torch.dtype | None = None,
) -> Sparsifier:
    """Build a :class:`Sparsifier` from a :class:`SparseConfig`.

    Args:
        config: The flat description.
        model: The model to sparsify.
        optimizer: Its optimizer.
        total_steps: Training length in steps (schedules given as fractions need it).
        batches: Training batches, for pruning at initialisation with SNIP or GraSP.
        input_shape: Input shape without the batch dimension, for SynFlow.
        masks: Explicit initial masks (overrides the distribution and ``init_pruning``).
        targets: Which weights to sparsify (e.g. ``TargetSelector(patterns=("*.wte.weight",))``);
            the config's ``include``, ``exclude``, ``keep_first_dense``, ``keep_last_dense``
            and ``layer_sparsity`` are added to it.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` for SNIP and GraSP (default
            cross-entropy over ``(N, C)`` logits; a language model needs its own).
        input_dtype: Dtype of SynFlow's all-ones input (default: its computation dtype;
            ``torch.long`` for a model that takes token ids).
    """
    if total_steps is not None and (not isinstance(total_steps, int) or total_steps <= 0):
        raise ConfigError(f"total_steps must be a positive integer, got {total_steps!r}")
    config.validate()
    if config.rounds > 1:
        raise ConfigError(
            f"rounds={config.rounds} is iterative magnitude pruning, which trains the model "
            f"{config.rounds + 1} times: one sparsifier cannot run it; use itop.lottery.IterativeMagnitudePruning "
            "in your loop (see its docstring) or `itop train --method imp`"
        )
    end = _as_steps(config.update_end, total_steps, "update_end")
    update = UpdateSchedule(config.update_interval, config.update_start, end, total_steps)
    drop_end = end if end is not None else total_steps
    drop = make_drop_schedule(
        config.drop_schedule, config.drop_fraction, config.final_drop_fraction,
        config.update_start, drop_end,
    ) if config.update_interval is not None else 0.0
    distribution = get_distribution(config.distribution)
    if distribution is erdos_renyi_kernel and config.erk_power_scale != 1.0:
        distribution = functools.partial(erdos_renyi_kernel, power_scale=config.erk_power_scale)
    base = targets if targets is not None else TargetSelector()
    selector = dataclasses.replace(
        base,
        patterns=tuple(base.patterns) + tuple(config.include),
        exclude=tuple(base.exclude) + tuple(config.exclude),
        keep_first_dense=base.keep_first_dense or config.keep_first_dense,
        keep_last_dense=base.keep_last_dense or config.keep_last_dense,
        layer_density={**base.layer_density,
                       **{p: 1.0 - float(s) for p, s in config.layer_sparsity.items()}},
    )
    sparsity_schedule = None
    if config.initial_sparsity is not None:
        if total_steps is None:
            raise ConfigError("gradual pruning's schedule is a fraction of training: pass total_steps=")
        interval = config.update_interval
        start = int(config.prune_start * total_steps)
        # The last pruning step is the last multiple of ΔT in the window, before the last step of
        # training (never an update): the target is reached there.
        stop = (min(int(config.prune_end * total_steps), total_steps - 1) // interval) * interval
        sparsity_schedule = CubicSparsity(config.initial_sparsity, config.sparsity, start, stop)
        update = UpdateSchedule(interval, start, stop + 1, total_steps)
    if masks is None and config.init_pruning is not None:
        from .pruning import prune_at_init

        masks = prune_at_init(
            config.init_pruning, model, 1.0 - config.sparsity, batches=batches,
            input_shape=input_shape, targets=selector.select(model),
            **_init_pruning_options(config, loss_fn, input_dtype),
        )
    return Sparsifier(
        model,
        optimizer,
        sparsity=config.sparsity,
        distribution=distribution,
        prune=config.prune,
        grow=config.grow,
        update=update,
        drop=drop,
        targets=selector,
        grow_init=config.grow_init,
        keep_regrown=config.keep_regrown,
        reset_optimizer_state=config.reset_optimizer_state,
        drop_rounding=config.drop_rounding,
        sparse_init=config.sparse_init,
        reliable_steps=config.reliable_steps,
        seed=config.seed,
        masks=masks,
        sparsity_schedule=sparsity_schedule,
        global_pruning=config.global_pruning,
        execution=config.execution,
    )


def _init_pruning_options(config: SparseConfig, loss_fn: Any, input_dtype: Any) -> dict[str, Any]:
    """The options the config's pruning-at-init method takes, of SynFlow's rounds and input
    dtype and SNIP/GraSP's loss (those not given are left to the method's defaults)."""
    from .pruning import PRUNE_AT_INIT

    given = {"rounds": config.synflow_rounds, "input_dtype": input_dtype, "loss_fn": loss_fn}
    accepted = inspect.signature(PRUNE_AT_INIT.lookup(config.init_pruning)).parameters
    return {k: v for k, v in given.items() if k in accepted and v is not None}


def build(
    method: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    total_steps: int | None = None,
    batches: Iterable | None = None,
    input_shape: Sequence[int] | None = None,
    targets: TargetSelector | None = None,
    **overrides: Any,
) -> Sparsifier:
    """Build a sparsifier by method name.

    Example::

        sparsifier = itop.build("rigl", model, optimizer, sparsity=0.98,
                                distribution="erk", update_interval=100, total_steps=T)
        # the same, with masked nn.Linear layers stored and run sparse:
        sparsifier = itop.build("rigl", model, optimizer, sparsity=0.98, total_steps=T,
                                execution="sparse")

    Args:
        method: A registered method (``itop.list_methods()``).
        model: The model to sparsify.
        optimizer: Its optimizer (masks are applied after each of its steps). With
            ``execution="sparse"`` the optimizer is edited in place to train the sparse layers'
            ``values`` instead of the dense weights it was built on (state carried over).
        total_steps: Training length in steps; needed by annealed drop fractions and by
            ``update_end < 1``.
        batches: Training batches, for SNIP and GraSP.
        input_shape: Input shape without the batch dimension, for SynFlow.
        targets: Which weights to sparsify (default: Linear, Conv, attention projections);
            e.g. ``TargetSelector(patterns=("*.wte.weight",))`` to sparsify an embedding too.
        **overrides: Any :class:`SparseConfig` field.
    """
    return from_config(resolve_config(method, **overrides), model, optimizer, total_steps,
                       batches=batches, input_shape=input_shape, targets=targets)


_PAPER = dict(distribution="erk", prune="magnitude", grow_init="zero")

register_method(
    "dense", "Dense training (all weights active); the reference every method is compared to.",
    forced=dict(sparsity=0.0, update_interval=None),
)
register_method(
    "static", "Static sparse training: a random ERK mask fixed for the whole run.",
    forced=dict(update_interval=None), **_PAPER,
)
register_method(
    "set", "SET (Mocanu et al. 2018): magnitude prune, random growth; RigL-paper settings "
    "(ΔT 100, drop 0.3 cosine, updates stop at 75%).",
    grow="random", update_interval=100, drop_fraction=0.3, drop_schedule="cosine",
    final_drop_fraction=0.0, update_end=0.75, **_PAPER,
)
register_method(
    "rigl", "RigL (Evci et al. 2020): magnitude prune, dense-gradient growth; ΔT 100, "
    "drop 0.3 cosine, updates stop at 75%.",
    grow="gradient", update_interval=100, drop_fraction=0.3, drop_schedule="cosine",
    final_drop_fraction=0.0, update_end=0.75, **_PAPER,
)
register_method(
    "snfs", "SNFS (Dettmers & Zettlemoyer 2019): magnitude prune, momentum growth, grown weights "
    "keep their dense momentum; ΔT 100, drop 0.5 -> 0.005 cosine.",
    grow="momentum", update_interval=100, drop_fraction=0.5, drop_schedule="cosine",
    final_drop_fraction=0.005, update_end=1.0, drop_rounding="ceil", reset_optimizer_state=False,
    **_PAPER,
)
register_method(
    "set-itop", "SET-ITOP (Liu et al. 2021): SET with ΔT 1500 and drop 0.5 -> 0.005 cosine "
    "until the end, for reliable exploration (paper's CIFAR setting, batch 128).",
    grow="random", update_interval=1500, drop_fraction=0.5, final_drop_fraction=0.005,
    drop_schedule="cosine", update_end=1.0, drop_rounding="ceil", **_PAPER,
)
register_method(
    "rigl-itop", "RigL-ITOP (Liu et al. 2021): RigL with ΔT 4000 and drop 0.5 -> 0.005 cosine "
    "until the end (paper's CIFAR setting, batch 128).",
    grow="gradient", update_interval=4000, drop_fraction=0.5, final_drop_fraction=0.005,
    drop_schedule="cosine", update_end=1.0, drop_rounding="ceil", **_PAPER,
)

register_method(
    "gmp", "Gradual magnitude pruning (Zhu & Gupta 2017): dense start, cubic schedule to the "
    "target sparsity between 10% and 75% of training, pruning every ΔT=100 steps, then fine-tuning.",
    forced=dict(drop_fraction=0.0, drop_schedule="constant"),
    initial_sparsity=0.0, prune_start=0.1, prune_end=0.75, update_interval=100,
    update_end=1.0, distribution="uniform", prune="magnitude",
)
register_method(
    "snip", "SNIP (Lee et al. 2019): prune at initialisation by |g * w| on one batch, then a "
    "static mask.", forced=dict(update_interval=None, init_pruning="snip"),
)
register_method(
    "grasp", "GraSP (Wang et al. 2020): prune at initialisation by -w * (Hg), preserving "
    "gradient flow, then a static mask.", forced=dict(update_interval=None, init_pruning="grasp"),
)
register_method(
    "synflow", "SynFlow (Tanaka et al. 2020): data-free iterative pruning at initialisation "
    "(100 rounds), then a static mask.", forced=dict(update_interval=None, init_pruning="synflow"),
)
register_method(
    "imp", "Lottery tickets by iterative magnitude pruning with rewinding (Frankle et al. "
    "2019/2020): rounds of train, global magnitude prune, rewind to step rewind_step.",
    forced=dict(update_interval=None), rounds=5, rewind_step=0,
)

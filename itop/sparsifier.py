"""The dynamic sparse training engine.

:class:`Sparsifier` owns the masks of a model's sparsified weights and changes them during
training: every ΔT steps it drops a fraction of each layer's active weights (prune criterion)
and grows as many inactive ones (grow criterion), keeping every layer's count of active weights
exact. It tracks exploration as the In-Time Over-Parameterization rate R_s (Liu et al.,
"Do We Actually Need Dense Over-Parameterization? In-Time Over-Parameterization in Sparse
Training", ICML 2021).

Execution (``execution``): how each layer stores its weight is a storage object of
:mod:`itop.storage`; the engine decides which weights are active and talks to the storages
through one interface, whatever the mode.

* ``"dense"`` (the default and the reference): masked weights are multiplied by their mask
  right after every optimizer step (a post-step hook on the optimizer, one fused
  ``_foreach_mul_`` for all layers). The forward and backward passes are the ordinary dense
  ones, so gradients are dense: RigL sees the dense gradient at update steps, SNFS's momentum
  accumulates at inactive positions, and no hook runs during backward. Inactive weights are
  exactly zero after every optimizer step, whatever the optimizer does (momentum, weight
  decay, Adam).
* ``"sparse"``: every masked ``nn.Linear`` becomes an :class:`~itop.sparse.SparseLinear`
  storing only its active weights and running sparse kernels; the dense gradient RigL grows by
  is computed on update steps only. Layers it does not cover keep dense masking.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import distributed
from ._backend import RandomState, flat_gather, flat_member, flat_set_, sample_positions, top_n
from .criteria import Criterion, LayerContext, get_grow, get_prune
from .distributions import Distribution, allocate, get_distribution
from .errors import CheckpointError, ConfigError, check_sparsity
from .initialization import rescale_to_sparse_fan_in
from .registry import Registry
from .schedules import ConstantDrop, DropSchedule, UpdateSchedule
from .storage import (
    DenseMaskedStorage,
    Execution,
    UpdateView,
    WeightStorage,
    get_execution,
    ignore_in_ddp,
)
from .targets import Target, TargetSelector, unwrap_model
from .tracker import ExplorationTracker

__all__ = ["DROP_ROUNDINGS", "GROW_INITS", "LayerStats", "Sparsifier"]

log = logging.getLogger(__name__)

STATE_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Initial values of grown weights


# Each takes the grown positions' current values, a function returning the layer's kept
# weights (gathered only if needed) and the random streams. The current values are zero except
# for weights dropped and regrown in this update when ``keep_regrown`` is off (with it on, those
# weights are not grown at all: they keep their value and state).
def _grow_zero(old: torch.Tensor, kept: Callable[[], torch.Tensor], rng: RandomState) -> torch.Tensor:
    return torch.zeros_like(old)


def _grow_keep(old: torch.Tensor, kept: Callable[[], torch.Tensor], rng: RandomState) -> torch.Tensor:
    return old


def _grow_normal(old: torch.Tensor, kept: Callable[[], torch.Tensor], rng: RandomState) -> torch.Tensor:
    values = kept()
    std = float(values.float().std()) if values.numel() > 1 else 0.0
    std = 0.1 * std if std > 0 else 1e-3
    if old.device.type == "cpu":
        noise = torch.from_numpy(rng.numpy.standard_normal(old.numel(), dtype="float32"))
    else:
        noise = torch.randn(old.numel(), device=old.device, generator=rng.torch_generator(old.device))
    return (noise * std).to(old.dtype)


GrowInit = Callable[[torch.Tensor, Callable[[], torch.Tensor], RandomState], torch.Tensor]
GROW_INITS: Registry[GrowInit] = Registry("grow init")
GROW_INITS.register("zero", _grow_zero)  # RigL, ITOP: grown weights start at zero
GROW_INITS.register("keep", _grow_keep)  # with keep_regrown off: a weight dropped and regrown keeps its value
GROW_INITS.register("normal", _grow_normal)  # N(0, (0.1 * std of the layer's kept weights)^2)


# ----------------------------------------------------------------------------------------------
# How many weights an update drops: ``f * active`` rounded. The small tolerance keeps a product
# that is an integer up to floating-point error (0.29 * 100 = 28.999999999999996) from being
# rounded the wrong way.


def _drop_floor(x: float) -> int:
    return math.floor(x + 1e-9)


def _drop_ceil(x: float) -> int:
    return math.ceil(x - 1e-9)


DROP_ROUNDINGS: Registry[Callable[[float], int]] = Registry("drop rounding")
DROP_ROUNDINGS.register("floor", _drop_floor)  # Google's RigL and SET (rigl/sparse_optimizers.py: int cast)
DROP_ROUNDINGS.register("ceil", _drop_ceil)  # the ITOP and SNFS code (sparselearning/core.py: math.ceil)


# ----------------------------------------------------------------------------------------------


@dataclass
class LayerStats:
    """Per-layer statistics (see :meth:`Sparsifier.layer_stats`)."""

    name: str
    shape: tuple[int, ...]
    numel: int
    active: int
    density: float
    itop_rate: float
    reliable_itop_rate: float
    execution: str = "dense"


class _Layer:
    """Engine state for one sparsified weight: its active positions and their storage."""

    def __init__(self, target: Target, count: int) -> None:
        self.target: Target | None = target  # released once the storage is final
        self.name = target.name
        self.module_name = target.module_name
        self.shape = target.shape
        self.numel = target.param.numel()
        self.count = count
        self.active: torch.Tensor = torch.empty(0, dtype=torch.long)
        self.storage: WeightStorage = DenseMaskedStorage(target)

    @property
    def param(self) -> torch.Tensor:
        """The tensor the optimizer trains (the dense weight, or a sparse layer's values)."""
        return self.storage.param

    @property
    def dense(self) -> bool:
        return self.count >= self.numel

    def set_active(self, active: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.active = active.to(device=self.param.device, dtype=torch.long)
        self.storage.set_active(self.active, self.dense, optimizer)


class Sparsifier:
    """Dynamic sparse training of a model's weights, with ITOP exploration tracking.

    Typical use (see :func:`itop.build` for construction by method name)::

        sparsifier = itop.build("rigl-itop", model, optimizer, sparsity=0.98, total_steps=T)
        for x, y in data:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            sparsifier.step()
        print(sparsifier.itop_rate())

    Build the sparsifier after moving the model to its device (masks live beside the weights)
    and before wrapping or compiling is fine either way (with ``execution="sparse"``: before
    wrapping in ``DistributedDataParallel``, since layers are replaced).

    With ``execution="sparse"`` the masked ``nn.Linear`` layers of ``model`` are replaced in
    place by :class:`~itop.sparse.SparseLinear` modules holding only their active weights, and
    ``optimizer`` is edited to train their ``values`` instead of the dense weights it was built
    on (its state for them is carried over), so the three-line loop stays the same. Build the
    optimizer on ``model.parameters()`` *before* the sparsifier, as usual; an optimizer created
    afterwards simply sees the sparse parameters.

    Args:
        model: The model; ``DistributedDataParallel``/compiled wrappers are unwrapped.
        optimizer: Optimizer of the model. Masks are applied by a post-step hook on it and its
            state is reset for pruned and grown weights. ``None``: :meth:`step` applies masks.
        sparsity: Global fraction of zero weights over the sparsified layers, in [0, 1).
        distribution: How density is split across layers: ``"uniform"``, ``"er"``, ``"erk"``,
            or a function ``(shapes, density, fixed) -> {layer: density}``.
        prune: Prune criterion: a name (``"magnitude"``, ``"signed-magnitude"``, ``"taylor"``,
            ``"random"``), a :class:`~itop.criteria.Criterion` or a score function.
        grow: Grow criterion: ``"random"`` (SET), ``"gradient"`` (RigL), ``"momentum"``
            (SNFS), ``"unfired"``, a Criterion or a score function.
        update: When topology updates happen; ``None`` for a static mask.
        drop: Drop fraction per update: a float (constant) or a function of the step.
        targets: Which weights are sparsified (default: all Linear and Conv weights).
        grow_init: Initial value of grown weights: ``"zero"``, ``"keep"`` or ``"normal"``.
        keep_regrown: A weight that an update drops and regrows at once is treated as never
            dropped: it keeps its value and optimizer state, its stretch of activity goes on,
            and it counts neither as dropped nor as grown. This is what the authors' code does
            (Liu et al.'s ``sparselearning`` only changes the mask; Google's RigL only
            re-initialises connections that were inactive). ``False``: it is zeroed, its state
            reset and its stretch ended, like any other dropped and grown weight.
        reset_optimizer_state: Zero the optimizer state (momentum, Adam's moments) of dropped
            and grown weights at each update, so a grown weight starts with no history (RigL's
            ``reset_momentum``; the ITOP CIFAR code masks the momentum every step, to the same
            effect). ``False``: updates leave the state alone, so a grown weight starts with
            the momentum the dense gradients built at its position while it was inactive. That
            is SNFS (Dettmers & Zettlemoyer 2019): its ``apply_mask`` masks weights only, and
            momentum growth picks exactly the positions whose momentum is largest; the ITOP
            ImageNet code does the same. Needs ``execution="dense"`` (sparse layers keep no
            state for inactive weights).
        drop_rounding: How ``f * active`` becomes a count: ``"floor"`` (Google's RigL/SET)
            or ``"ceil"`` (the ITOP/SNFS code; a layer then drops at least one weight while
            ``f > 0``).
        sparse_init: Rescale initial active weights to the sparse fan-in (Evci et al. 2022).
        reliable_steps: Steps a weight must stay active to count in the reliable R_s
            (default: the update interval).
        seed: Seed of the engine's random streams (initial masks, random growth). ``None``
            draws one from torch's global generator, so ``torch.manual_seed`` controls it.
        masks: Initial masks by weight name (True = active) instead of random ones drawn from
            the distribution, e.g. from SNIP, GraSP or SynFlow (:mod:`itop.pruning`).
        sparsity_schedule: Gradual pruning: a function step -> target global sparsity (e.g.
            :class:`~itop.schedules.CubicSparsity`). The initial masks follow
            ``sparsity_schedule(0)``; at each update step every layer is pruned to its share of
            the scheduled sparsity, and these extra drops are not regrown.
        global_pruning: With ``sparsity_schedule``, choose the per-layer counts by global
            magnitude over all layers instead of the distribution.
        execution: ``"dense"`` (masked dense weights, the reference) or ``"sparse"`` (masked
            ``nn.Linear`` layers store and compute with their active weights only; see
            :mod:`itop.storage`). Sparse execution gives the same masks, R_s and (up to float
            rounding) losses as dense execution. It refuses criteria that read dense
            gradients or momentum at every step (SNFS's momentum growth: use ``"dense"``) and
            gradual pruning. Criteria see dense views of a sparse layer at updates: the weight,
            its mask and, as ``weight.grad``, the dense gradient when a criterion declares
            ``dense_gradient = "update"`` (RigL; computed on update steps only, see
            :meth:`request_dense_gradient`), else the gradient at the active weights (zeros
            elsewhere); ``optimizer_state`` then holds the state of the ``values`` vector.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        sparsity: float,
        distribution: str | Distribution = "erk",
        prune: str | Criterion | Callable = "magnitude",
        grow: str | Criterion | Callable = "random",
        update: UpdateSchedule | None = None,
        drop: float | DropSchedule = 0.3,
        targets: TargetSelector | None = None,
        grow_init: str = "zero",
        keep_regrown: bool = True,
        reset_optimizer_state: bool = True,
        drop_rounding: str = "floor",
        sparse_init: bool = False,
        reliable_steps: int | None = None,
        seed: int | None = None,
        masks: Mapping[str, torch.Tensor] | None = None,
        sparsity_schedule: Callable[[int], float] | None = None,
        global_pruning: bool = False,
        execution: str = "dense",
    ) -> None:
        check_sparsity(sparsity)
        self._grow_init = GROW_INITS.lookup(grow_init)
        self._round_drop = DROP_ROUNDINGS.lookup(drop_rounding)
        self.model = model
        self.optimizer = optimizer
        self.sparsity = float(sparsity)
        self.distribution = get_distribution(distribution)
        self.prune = get_prune(prune)
        self.grow = get_grow(grow)
        self.update_schedule = update if update is not None else UpdateSchedule(None)
        self.drop_schedule: DropSchedule = ConstantDrop(drop) if isinstance(drop, (int, float)) else drop
        self.selector = targets or TargetSelector()
        self.grow_init = grow_init
        self.keep_regrown = bool(keep_regrown)
        self.reset_optimizer_state = bool(reset_optimizer_state)
        self.drop_rounding = drop_rounding
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.rng = RandomState(seed)
        interval = self.update_schedule.interval
        self.tracker = ExplorationTracker(reliable_steps or interval or 1)
        self._step = 0
        self.history: list[dict[str, Any]] = []
        self._hook = None
        self._closed = False
        self.sparsity_schedule = sparsity_schedule
        self.global_pruning = global_pruning
        self._execution: Execution = get_execution(execution)
        self.execution = self._execution.name
        self._execution.check(self)
        # Criteria that read the dense gradient at updates (RigL): sparse layers compute it on
        # the steps before an update only.
        self._needs_dense_grad = any(getattr(c, "dense_gradient", "never") != "never"
                                     for c in (self.prune, self.grow))

        self._layers = self._build_layers(masks)
        if optimizer is not None:  # masks are applied after *this* optimizer's steps
            held = {id(p) for group in optimizer.param_groups for p in group["params"]}
            missing = [layer.name for layer in self._masked() if id(layer.param) not in held]
            if missing:
                raise ConfigError(
                    f"the optimizer does not hold {len(missing)} of the sparsified weights (e.g. "
                    f"'{missing[0]}'), so their inactive weights would not stay zero: pass the optimizer "
                    "that trains this model, built from its parameters after moving it to its device"
                )
        if masks is None:  # rounding to whole weights: say when it moves the sparsity
            start = self.sparsity if sparsity_schedule is None else float(sparsity_schedule(0))
            wanted = round((1.0 - start) * self.num_weights())
            shares = self.distribution(self._shapes, 1.0 - start, self._fixed) if start > 0 else {}
            small = [layer.name for layer in self._masked()
                     if layer.name not in self._fixed and shares.get(layer.name, 1.0) * layer.numel < 1]
            if self.num_active() != wanted:
                log.warning("sparsity %g asks for %d active weight(s), but every sparse layer keeps at "
                            "least one: %d are active (sparsity %.6g); lower the sparsity", start, wanted,
                            self.num_active(), self.actual_sparsity())
            elif small:
                log.warning("%d layer(s) too small for their density keep 1 weight where their share is "
                            "below one (%s); exclude them or lower the sparsity", len(small), ", ".join(small[:4])
                            + (", ..." if len(small) > 4 else ""))
        for layer in self._layers:
            self.tracker.register(layer.name, layer.active, layer.numel, 0)
        self._refresh_mask_lists()
        self.apply_masks()
        if sparse_init:
            with torch.no_grad():
                for layer in self._masked():
                    rescale_to_sparse_fan_in(*layer.storage.mask_pair())
        self._convert_layers()
        self._load_hook = None
        if optimizer is not None:
            self._hook = optimizer.register_step_post_hook(self._after_optimizer_step)
            self._load_hook = optimizer.register_load_state_dict_pre_hook(self._check_optimizer_state)
        self._prepare_next_step()
        log.info(
            "sparsifier: %d layers, sparsity %.4f, %d of %d weights active, R_s %.4f, execution %s",
            len(self._layers), self.actual_sparsity(), self.num_active(), self.num_weights(),
            self.itop_rate(), self.execution,
        )
        if log.isEnabledFor(logging.INFO):
            log.info("which weights are sparse:\n%s", self.describe())

    # -- construction --------------------------------------------------------------------------

    def _build_layers(self, masks: Mapping[str, torch.Tensor] | None) -> list[_Layer]:
        selection = self.selector.plan(self.model)
        for msg in selection.warnings:
            log.warning("%s", msg)
        targets = selection.targets
        # What describe() reports, kept without the targets (sparse execution replaces layers,
        # and the dense weights it frees must not stay referenced here).
        self._selection = dataclasses.replace(selection, targets=[], warnings=[])
        self._kinds = {t.name: t.kind for t in targets}
        self._shapes = {t.name: t.shape for t in targets}
        self._fixed = self.selector.fixed_densities(targets)
        if masks is not None:
            return [self._layer_from_mask(t, masks) for t in targets]
        start = self.sparsity if self.sparsity_schedule is None else float(self.sparsity_schedule(0))
        counts = self._target_counts(start)
        layers = []
        for t in targets:
            layer = _Layer(t, counts[t.name])
            if layer.dense:
                active = torch.arange(layer.numel, device=t.param.device)
            else:
                active = sample_positions(layer.numel, layer.count, self.rng, t.param.device)
                distributed.broadcast_(active)
            layer.set_active(active)
            layers.append(layer)
        return layers

    def _layer_from_mask(self, target: Target, masks: Mapping[str, torch.Tensor]) -> _Layer:
        if target.name not in masks:
            raise ConfigError(
                f"masks has no entry for '{target.name}'; give a mask for every sparsified weight "
                f"({', '.join(self._shapes)})"
            )
        mask = masks[target.name]
        if tuple(mask.shape) != target.shape:
            raise ConfigError(f"mask for '{target.name}' has shape {tuple(mask.shape)}, expected {target.shape}")
        active = mask.detach().reshape(-1).nonzero().squeeze(1).to(target.param.device)
        distributed.broadcast_(active)
        layer = _Layer(target, int(active.numel()))
        layer.set_active(active)
        return layer

    def _target_counts(self, sparsity: float) -> dict[str, int]:
        """Per-layer active counts for a global sparsity, by the density distribution."""
        density = 1.0 - sparsity
        total = sum(math.prod(s) for s in self._shapes.values())
        if sparsity == 0.0:
            densities = {n: 1.0 for n in self._shapes}
        else:
            densities = self.distribution(self._shapes, density, self._fixed)
        return allocate(self._shapes, densities, total=round(density * total), fixed=list(self._fixed))

    def _global_magnitude_counts(self, sparsity: float) -> dict[str, int]:
        """Per-layer counts of the globally largest active magnitudes (layers with a fixed
        density keep their count)."""
        free = [layer for layer in self._layers if layer.name not in self._fixed]
        keep = round((1.0 - sparsity) * self.num_weights()) - sum(
            layer.count for layer in self._layers if layer.name in self._fixed)
        values = torch.cat([layer.storage.gather(layer.active).float().abs().cpu() for layer in free])
        keep = min(max(keep, 0), values.numel())
        chosen = top_n(values, keep)
        owner = torch.repeat_interleave(torch.arange(len(free)), torch.tensor([layer.count for layer in free]))
        per_layer = torch.bincount(owner[chosen], minlength=len(free)).tolist()
        counts = {layer.name: layer.count for layer in self._layers}
        counts.update({layer.name: int(c) for layer, c in zip(free, per_layer, strict=True)})
        return counts

    def _convert_layers(self) -> None:
        """Give every layer the storage of the execution mode (replacing modules if needed)."""
        root = unwrap_model(self.model)
        kept: list[str] = []
        sparse: list[str] = []
        for layer in self._layers:
            storage, reason = self._execution.convert(layer.storage, layer.target, root, layer.active,
                                                      layer.dense, self.optimizer)
            layer.storage = storage
            layer.target = None
            if storage.kind == "sparse":
                sparse.append(layer.name)
            elif reason is not None:
                kept.append(f"{layer.name} ({reason})")
        if sparse:
            modules = [layer.module_name for layer in self._layers if layer.storage.kind == "sparse"]
            ignore_in_ddp(root, [f"{m}.indices" if m else "indices" for m in modules])
            log.info("execution %s: %d layers run sparse: %s", self.execution, len(sparse), ", ".join(sparse))
            if any(layer.storage.param.device.type == "cpu" for layer in self._layers
                   if layer.storage.kind == "sparse"):
                from .sparse.native import native_status

                log.info("sparse kernels on CPU: %s", native_status())
        if kept:
            log.info("execution %s: %d layers keep dense masking: %s", self.execution, len(kept), "; ".join(kept))
        self._refresh_mask_lists()

    def _masked(self) -> list[_Layer]:
        return [layer for layer in self._layers if layer.storage.mask_pair() is not None]

    def _refresh_mask_lists(self) -> None:
        pairs = [layer.storage.mask_pair() for layer in self._masked()]
        self._mask_params = [p for p, _ in pairs]
        self._mask_tensors = [m for _, m in pairs]

    def _prepare_next_step(self) -> None:
        """Tell sparse layers whether the coming backward pass must give the dense gradient."""
        wanted = self._needs_dense_grad and self.update_schedule.is_update_step(self._step + 1)
        for layer in self._layers:
            layer.storage.want_dense_grad(wanted)

    def request_dense_gradient(self) -> None:
        """Have the next backward pass compute the dense weight gradients of sparse layers.

        Only needed in ``execution="sparse"`` before calling :meth:`update_topology` by hand
        with a gradient criterion (RigL) at a step the schedule does not update at; scheduled
        updates ask for it themselves. A no-op for dense-masked layers, whose gradient is
        always dense.
        """
        for layer in self._layers:
            layer.storage.want_dense_grad(True)

    def _check_optimizer_state(self, optimizer, state_dict):
        """Refuse, before anything is loaded, optimizer state saved in the other execution mode
        (its tensors have the shape of the other mode's parameter)."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        saved = state_dict.get("state", {}) if isinstance(state_dict, Mapping) else {}
        ids = {id(p): i for i, p in enumerate(params)}
        for layer in self._layers:
            i = ids.get(id(layer.param))
            entry = saved.get(i) if i is not None else None
            if not isinstance(entry, Mapping):
                continue
            foreign = layer.storage.foreign_state_shapes(layer.count)
            for value in entry.values():
                if isinstance(value, torch.Tensor) and tuple(value.shape) in foreign:
                    raise CheckpointError(
                        f"the optimizer state of '{layer.name}' was saved in the other execution mode "
                        f"(shape {list(value.shape)}, this run trains {list(layer.param.shape)} with "
                        f"execution {self.execution}); resume with the execution the checkpoint was saved with"
                    )
        return None

    # -- per-step API --------------------------------------------------------------------------

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero every inactive weight (called automatically after each optimizer step)."""
        if self._mask_params:
            torch._foreach_mul_(self._mask_params, self._mask_tensors)

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        self.apply_masks()

    def step(self, skip_update: bool = False) -> dict[str, Any] | None:
        """Advance one training step; call once after every ``optimizer.step()``.

        Updates the topology when the schedule says so.

        Args:
            skip_update: Do not change the topology at this step even if it is an update step,
                e.g. when a ``GradScaler`` skipped the optimizer step because the gradients
                overflowed (they are not usable for growth then). The update is not postponed.

        Returns:
            The update record (see :attr:`history`) at update steps, else ``None``.
        """
        if self._closed:
            raise RuntimeError("this sparsifier was finalized; build a new one to keep training")
        self._step += 1
        update = self.update_schedule.is_update_step(self._step)
        if update or self._step == 1:  # parameters replaced after build would silently lose their masks
            model = unwrap_model(self.model)
            for layer in self._layers:
                try:
                    current = model.get_parameter(layer.storage.param_name)
                except AttributeError:
                    current = None
                if current is not layer.param:
                    raise ConfigError(
                        f"the model's parameter '{layer.name}' was replaced after the sparsifier was built "
                        "(model.to('meta'), a module conversion, load_state_dict(assign=True), ...): build "
                        "the sparsifier (and the optimizer) after the last such change"
                    )
        if self.optimizer is None:
            self.apply_masks()
        record = None
        if update:
            if skip_update:
                log.info("topology update at step %d skipped (optimizer step skipped)", self._step)
            else:
                record = self.update_topology()
        self._prepare_next_step()
        return record

    @property
    def step_count(self) -> int:
        """Number of :meth:`step` calls so far (the training step)."""
        return self._step

    # -- topology update -----------------------------------------------------------------------

    @torch.no_grad()
    def update_topology(self, drop_fraction: float | None = None) -> dict[str, Any]:
        """Drop and regrow weights in every sparse layer now.

        Each sparse layer selects ``f * active`` of its active weights (rounded as
        ``drop_rounding`` says) to drop by the prune criterion, then as many to grow by the grow
        criterion among all weights not kept, so a weight selected for dropping may be
        selected for growing too (as in RigL and the ITOP code). With ``keep_regrown`` (the
        default) such a weight is left alone, as if never dropped; only the net change is
        applied. With a sparsity schedule (gradual pruning) a layer also drops the weights above
        its scheduled count, without regrowing them. Grown weights get their initial value
        (zero by default); dropped and grown weights have their optimizer state zeroed (unless
        ``reset_optimizer_state`` is off, SNFS).

        Args:
            drop_fraction: Override the scheduled fraction ``f``.

        Returns:
            The update record appended to :attr:`history`: ``dropped`` and ``grown`` count
            the weights that changed (with ``keep_regrown`` those selected for both are not
            among them), ``regrown`` those selected for both.
        """
        t0 = time.perf_counter()
        step = self._step
        f = float(self.drop_schedule(step) if drop_fraction is None else drop_fraction)
        targets = None
        if self.sparsity_schedule is not None:
            s = float(self.sparsity_schedule(step))
            targets = self._global_magnitude_counts(s) if self.global_pruning else self._target_counts(s)
        dropped_total = grown_total = regrown_total = explored = 0
        for layer in self._layers:
            exchange = self._round_drop(f * layer.count) if not layer.dense else 0
            extra = max(0, layer.count - targets[layer.name]) if targets is not None else 0
            if exchange + extra <= 0:
                continue
            d, g, r, e = self._update_layer(layer, exchange + extra, exchange, step)
            dropped_total += d
            grown_total += g
            regrown_total += r
            explored += e
        self._refresh_mask_lists()
        record = {
            "step": step,
            "drop_fraction": f,
            "dropped": dropped_total,
            "grown": grown_total,
            "regrown": regrown_total,
            "newly_explored": explored,
            "itop_rate": self.itop_rate(),
            "seconds": time.perf_counter() - t0,
        }
        self.history.append(record)
        log.debug("topology update %s", record)
        return record

    def _context(self, layer: _Layer, view: UpdateView, step: int) -> LayerContext:
        return LayerContext(
            name=layer.name,
            weight=view.weight,
            mask=view.mask,
            active=layer.active,
            optimizer_state=view.optimizer_state,
            ever_active=self.tracker.layers[layer.name].ever,
            step=step,
            rng=self.rng,
        )

    def _update_layer(self, layer: _Layer, n_drop: int, n_grow: int, step: int) -> tuple[int, int, int, int]:
        """Drop ``n_drop`` and grow ``n_grow`` weights of one layer.

        Returns:
            ``(dropped, grown, regrown, newly explored)``: the weights that changed (net of
            the regrown ones when ``keep_regrown``), those selected for both, and the grown
            weights never active before.
        """
        # Dense views of the layer (for a dense-masked layer, its weight and mask themselves):
        # the criteria read them and the update below edits them; commit() applies the result.
        view = layer.storage.begin_update(self.optimizer, self._needs_dense_grad)
        param, mask = view.weight, view.mask
        device = param.device
        ctx = self._context(layer, view, step)
        drop = self.prune.select_drop(ctx, n_drop).to(device)
        distributed.broadcast_(drop)
        flat_set_(mask, drop, 0.0)
        keep = layer.active[flat_gather(mask, layer.active) != 0]
        grow = (self.grow.select_grow(ctx, keep, n_grow).to(device) if n_grow > 0
                else torch.empty(0, dtype=torch.long, device=device))
        distributed.broadcast_(grow)
        if grow.numel() != n_grow or drop.numel() != n_drop:
            raise RuntimeError(
                f"criteria returned {drop.numel()} drops / {grow.numel()} grows for '{layer.name}', "
                f"expected {n_drop} / {n_grow}"
            )
        if n_grow:
            flat_set_(mask, grow, 1.0)  # the new mask: kept and grown weights
        # Weights selected for both dropping and growing: with the new mask set, exactly the
        # drops whose mask is back to one. With keep_regrown only the net change is applied, so
        # values, optimizer state and tracker see them as never dropped.
        regrown = flat_gather(mask, drop) != 0 if n_grow and n_drop else None
        n_regrown = int(regrown.sum()) if regrown is not None else 0
        dropped, grown = drop, grow
        if n_regrown and self.keep_regrown:
            dropped = drop[~regrown]
            grown = grow[~flat_member(grow, drop[regrown], layer.numel)]
        old = flat_gather(param, grown)
        flat_set_(param, dropped, 0.0)
        if grown.numel():
            flat_set_(param, grown, self._grow_init(old, lambda: flat_gather(param, keep), self.rng))
        layer.active = torch.cat([keep, grow])
        layer.count = int(layer.active.numel())
        # Positions whose optimizer history is forgotten (none when the state is kept, SNFS).
        reset = torch.cat([dropped, grown]) if self.reset_optimizer_state else dropped[:0]
        layer.storage.commit(view, layer.active, reset, self.optimizer)
        explored = self.tracker.record(layer.name, dropped, grown, step)
        return int(dropped.numel()), int(grown.numel()), n_regrown, explored

    # -- reads ---------------------------------------------------------------------------------

    def num_weights(self) -> int:
        """Number of sparsifiable weights (the denominator of sparsity and R_s)."""
        return sum(layer.numel for layer in self._layers)

    def num_active(self) -> int:
        """Number of active weights now."""
        return sum(layer.count for layer in self._layers)

    def num_parameters(self) -> int:
        """Number of parameters the model holds now, counting a sparsified layer's active
        weights only: every parameter the sparsifier does not manage (biases, norms, dense
        layers) plus :meth:`num_active`. This is the "equal parameters" measure that compares a
        sparse network with a dense one of the same size (Liu et al. 2021, Section 5).
        """
        managed = {id(layer.param) for layer in self._layers}
        others = sum(p.numel() for p in self.model.parameters() if id(p) not in managed)
        return others + self.num_active()

    def at_final_sparsity(self) -> bool:
        """Whether the network is now as sparse as it trains to: always with a fixed sparsity;
        with a sparsity schedule (gradual pruning, Zhu & Gupta 2017), once the pruning steps
        have brought the active count down to the schedule's final sparsity. Model selection
        considers only such states: before, a gradually pruned network is denser than the
        result it stands for. A schedule without a ``final`` attribute is taken as reached.
        """
        final = getattr(self.sparsity_schedule, "final", None) if self.sparsity_schedule is not None else None
        if final is None:
            return True
        if self.global_pruning:
            target = round((1.0 - float(final)) * self.num_weights())
        else:
            target = sum(self._target_counts(float(final)).values())
        return self.num_active() <= target

    def actual_sparsity(self) -> float:
        """Fraction of sparsifiable weights that are inactive now."""
        return 1.0 - self.num_active() / self.num_weights()

    def itop_rate(self) -> float:
        """The ITOP rate R_s: fraction of sparsifiable weights ever active so far."""
        return self.tracker.itop_rate()

    def reliable_itop_rate(self) -> float:
        """R_s counting only weights that stayed active for ``reliable_steps`` at a time."""
        return self.tracker.reliable_itop_rate(self._step)

    def masks(self) -> dict[str, torch.Tensor]:
        """Bool mask per sparsified weight name (True = active)."""
        return {layer.name: layer.storage.bool_mask() for layer in self._layers}

    def dense_weights(self) -> dict[str, torch.Tensor]:
        """Every sparsified weight as a dense tensor by name, inactive entries zero.

        For dense-masked layers these are the parameters themselves (detached); for layers
        that run sparse they are materialised copies. Use this instead of
        ``model.named_parameters()`` when the model may run sparse (its sparse layers have
        ``values``, not ``weight``).
        """
        return {layer.name: layer.storage.dense_weight() for layer in self._layers}

    def layer_names(self) -> list[str]:
        return [layer.name for layer in self._layers]

    def layer_stats(self) -> list[LayerStats]:
        """Shape, active count, density and R_s of every sparsified layer."""
        out = []
        for layer in self._layers:
            out.append(
                LayerStats(
                    name=layer.name,
                    shape=tuple(layer.shape),
                    numel=layer.numel,
                    active=layer.count,
                    density=layer.count / layer.numel,
                    itop_rate=self.tracker.itop_rate(layer.name),
                    reliable_itop_rate=self.tracker.reliable_itop_rate(self._step, layer.name),
                    execution=layer.storage.kind,
                )
            )
        return out

    def stats(self, per_layer: bool = True) -> dict[str, float]:
        """Flat dict for logging: global sparsity and R_s, lifetimes, per-layer density and R_s."""
        out: dict[str, float] = {
            "step": self._step,
            "sparsity": self.actual_sparsity(),
            "itop_rate": self.itop_rate(),
            "reliable_itop_rate": self.reliable_itop_rate(),
            "updates": len(self.history),
        }
        for k, v in self.tracker.lifetime_stats().items():
            out[f"lifetime/{k}"] = v
        if per_layer:
            for s in self.layer_stats():
                out[f"layer/{s.name}/density"] = s.density
                out[f"layer/{s.name}/itop_rate"] = s.itop_rate
                out[f"layer/{s.name}/reliable_itop_rate"] = s.reliable_itop_rate
        return out

    # -- persistence ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: step, masks, tracker, random streams.

        Contains only tensors, numbers, strings, lists and dicts, so it loads with
        ``torch.load(..., weights_only=True)``. Model weights and optimizer state are saved
        by their own ``state_dict``.
        """
        return {
            "version": STATE_VERSION,
            "execution": self.execution,
            "step": self._step,
            "sparsity": self.sparsity,
            "layers": {
                layer.name: {"shape": list(layer.shape), "active": layer.active.cpu().clone()}
                for layer in self._layers
            },
            "tracker": self.tracker.state_dict(),
            "rng": self.rng.state_dict(),
            "history": [dict(r) for r in self.history],
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the model must have the same sparsified layers."""
        try:
            version = state["version"]
            saved = state["layers"]
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"not a sparsifier state (missing {e}); pass sparsifier.state_dict() output") from None
        if version != STATE_VERSION:
            raise CheckpointError(f"sparsifier state version {version} is not supported (expected {STATE_VERSION})")
        names = [layer.name for layer in self._layers]
        if list(saved) != names:
            raise CheckpointError(
                f"sparsifier state has layers {list(saved)[:4]}... but this model has {names[:4]}...; "
                "load it into the same model architecture"
            )
        for layer in self._layers:
            s = saved[layer.name]
            if list(s["shape"]) != list(layer.shape):
                raise CheckpointError(
                    f"layer '{layer.name}' has shape {list(layer.shape)} but the saved state "
                    f"has {list(s['shape'])}; load it into the same model architecture"
                )
            layer.count = int(s["active"].numel())
            layer.set_active(s["active"], self.optimizer)
        self._step = int(state["step"])
        self.sparsity = float(state["sparsity"])
        self.tracker.load_state_dict(state["tracker"])
        self.rng.load_state_dict(state["rng"])
        self.history = [dict(r) for r in state["history"]]
        self._refresh_mask_lists()
        self.apply_masks()
        self._prepare_next_step()

    # -- end -----------------------------------------------------------------------------------

    @torch.no_grad()
    def finalize(self) -> nn.Module:
        """Stop sparse training: remove the optimizer hooks and leave plain sparse weights.

        Returns:
            The model, whose inactive weights are exactly zero (no masks or hooks remain).
            Layers that ran sparse stay :class:`~itop.sparse.SparseLinear` modules (inference
            at the sparse cost; :func:`itop.sparse.to_dense` turns them back into
            ``nn.Linear``, :func:`itop.sparse.export_model` writes them compressed).
        """
        self.apply_masks()
        for hook in (self._hook, self._load_hook):
            if hook is not None:
                hook.remove()
        self._hook = self._load_hook = None
        for layer in self._layers:
            layer.storage.want_dense_grad(False)
        self._closed = True
        return self.model

    def describe(self) -> str:
        """A table of which weights are sparse and which are left dense, and why.

        One row per sparsified weight (kind, shape, active of total, density, R_s), then every
        matrix left dense (embeddings, tied weights, excluded layers, unsupported layer types)
        with its reason, and the count of one-dimensional parameters (biases, norm scales),
        which are always dense. The sparsifier logs it at construction, so nothing is silently
        left dense.
        """
        selection = self._selection  # planned at construction, before any layer was replaced
        kinds = self._kinds
        rows = [("weight", "kind", "shape", "active", "density", "R_s")]
        for s in self.layer_stats():
            rows.append((
                s.name, kinds.get(s.name, "") + (" (sparse)" if s.execution == "sparse" else ""),
                "x".join(map(str, s.shape)),
                f"{s.active}/{s.numel}", f"{s.density:.4f}", f"{s.itop_rate:.4f}",
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.append(
            f"sparse: {len(self._layers)} weights, {self.num_active()}/{self.num_weights()} active "
            f"(sparsity {self.actual_sparsity():.4f})"
        )
        if selection.dense:
            lines.append(f"left dense ({len(selection.dense)}):")
            width = max(len(d.name) for d in selection.dense)
            for d in selection.dense:
                shape = "x".join(map(str, d.shape))
                lines.append(f"  {d.name.ljust(width)}  {d.kind} {shape}: {d.reason}")
        if selection.vectors:
            lines.append(
                f"left dense: {selection.vectors} one-dimensional parameters (biases, norm "
                f"scales; {selection.vector_numel} values)"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Sparsifier(sparsity={self.sparsity}, layers={len(self._layers)}, prune={self.prune!r}, "
            f"grow={self.grow!r}, update={self.update_schedule}, step={self._step}, "
            f"itop_rate={self.itop_rate():.4f}, execution={self.execution!r})"
        )

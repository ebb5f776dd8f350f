"""How a sparsified weight is stored and executed: dense with a mask, or as its active values.

The engine (:class:`~itop.sparsifier.Sparsifier`) decides *which* weights are active; a
storage object per layer owns *how* they are held, and is all the engine's update path talks
to:

* :class:`DenseMaskedStorage` (``execution: dense``, the default and the reference): the
  dense weight is the trained parameter and a float mask of its dtype zeroes the inactive
  entries after every optimizer step; forward and backward are the ordinary dense ones.
* :class:`SparseValuesStorage` (``execution: sparse``): the ``nn.Linear`` is replaced by an
  :class:`~itop.sparse.SparseLinear` that stores only the active weights (a fixed-size
  ``values`` parameter) and runs sparse kernels; the optimizer trains ``values`` and keeps
  state for active weights only.

A topology update goes through the same three calls for both: :meth:`begin_update` gives dense
views (the weight with its gradient, the float mask, the optimizer state) that the criteria
read and the engine edits exactly as in dense mode; :meth:`commit` makes the edited views the
layer's new state: for the dense storage they already are (it zeroes the optimizer state of
the changed positions), the sparse storage gathers the new values and re-indexes the optimizer
state by state tensor (kept for surviving weights, zeroed for grown ones). Dense views of a
sparse layer exist only during an update.

Executions are looked up by name in :data:`EXECUTIONS`; each gives the storage of a layer and
checks what the execution can serve (sparse execution refuses criteria that need dense
gradients at every step, such as SNFS's momentum growth, and gradual pruning).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import distributed
from ._backend import flat_gather, flat_set_
from .errors import ConfigError
from .optim_state import remap_state, reset_state, swap_parameter
from .registry import Registry
from .targets import Target, unwrap_model

if TYPE_CHECKING:
    from .sparse import SparseLinear

__all__ = [
    "EXECUTIONS",
    "DenseMaskedStorage",
    "Execution",
    "SparseValuesStorage",
    "UpdateView",
    "WeightStorage",
    "get_execution",
]

log = logging.getLogger(__name__)


@dataclass
class UpdateView:
    """Dense views of one layer during a topology update.

    Attributes:
        weight: The dense weight (inactive entries zero); its ``.grad`` is the gradient the
            criteria read.
        mask: Float mask of the weight's dtype (1 active, 0 inactive), edited by the engine.
        optimizer_state: The optimizer's state of the stored parameter (for the sparse storage,
            tensors over the active weights in storage order).
    """

    weight: torch.Tensor
    mask: torch.Tensor
    optimizer_state: Any = field(default_factory=dict)


class WeightStorage:
    """One sparsified weight's storage (see the module docstring)."""

    #: ``"dense"`` or ``"sparse"``: how the layer executes (shown in logs and stats).
    kind = "dense"

    def __init__(self, target: Target) -> None:
        self.name = target.name
        self.shape = target.shape
        self.numel = target.param.numel()
        #: Where :attr:`param` is in the model (``model.get_parameter(param_name)``).
        self.param_name = target.name

    @property
    def param(self) -> torch.Tensor:
        """The tensor the optimizer trains for this layer."""
        raise NotImplementedError

    def set_active(self, active: torch.Tensor, full: bool,
                   optimizer: torch.optim.Optimizer | None = None) -> None:
        """Adopt the active flat positions (initial masks, loaded state); ``full``: all active.

        Weights that were inactive become zero (for the dense storage once the engine applies
        the masks); the optimizer state is left as it is for weights that stay active.
        """
        raise NotImplementedError

    def mask_pair(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(parameter, mask)`` for the post-step multiply, or ``None`` when there is none."""
        return None

    def bool_mask(self) -> torch.Tensor:
        raise NotImplementedError

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Current values of the weights at flat positions ``idx`` (all active)."""
        raise NotImplementedError

    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense tensor, inactive entries zero (no gradient)."""
        raise NotImplementedError

    def begin_update(self, optimizer: torch.optim.Optimizer | None, needs_dense_grad: bool) -> UpdateView:
        raise NotImplementedError

    def commit(self, view: UpdateView, active: torch.Tensor, reset: torch.Tensor,
               optimizer: torch.optim.Optimizer | None) -> None:
        raise NotImplementedError

    def want_dense_grad(self, wanted: bool) -> None:
        """Whether the next backward pass must produce the dense weight gradient (and forget
        any dense gradient not consumed by an update)."""

    def foreign_state_shapes(self, count: int) -> set[tuple[int, ...]]:
        """Shapes of optimizer-state tensors that belong to the other execution mode's
        parameter (a checkpoint saved in that mode)."""
        return set()


class DenseMaskedStorage(WeightStorage):
    """The dense weight is the parameter; a float mask zeroes the inactive entries."""

    kind = "dense"

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._param = target.param
        self.mask: torch.Tensor | None = None  # weight-dtype mask; None while all are active

    @property
    def param(self) -> torch.Tensor:
        return self._param

    def set_active(self, active: torch.Tensor, full: bool,
                   optimizer: torch.optim.Optimizer | None = None) -> None:
        if full:
            self.mask = None
            return
        mask = torch.zeros_like(self._param, dtype=self._param.dtype)
        flat_set_(mask, active, 1.0)
        self.mask = mask

    def mask_pair(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if self.mask is None else (self._param, self.mask)

    def bool_mask(self) -> torch.Tensor:
        if self.mask is None:
            return torch.ones_like(self._param, dtype=torch.bool)
        return self.mask != 0

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        return flat_gather(self._param.detach(), idx)

    def dense_weight(self) -> torch.Tensor:
        return self._param.detach()

    def foreign_state_shapes(self, count: int) -> set[tuple[int, ...]]:
        return {(count,)} if len(self.shape) > 1 else set()

    def begin_update(self, optimizer: torch.optim.Optimizer | None, needs_dense_grad: bool) -> UpdateView:
        if self.mask is None:  # a dense layer being pruned for the first time
            self.mask = torch.ones_like(self._param)
        state = optimizer.state.get(self._param, {}) if optimizer is not None else {}
        return UpdateView(self._param, self.mask, state)

    def commit(self, view: UpdateView, active: torch.Tensor, reset: torch.Tensor,
               optimizer: torch.optim.Optimizer | None) -> None:
        # The views are the parameter and the mask themselves: already edited in place.
        reset_state(optimizer, self._param, reset)


class SparseValuesStorage(WeightStorage):
    """The layer is a :class:`~itop.sparse.SparseLinear`; only active weights are stored.

    Built from a dense ``nn.Linear`` with its active positions: the module is replaced in the
    model, and the optimizer's dense weight is swapped for the ``values`` parameter (state
    tensors gathered at the active positions).
    """

    kind = "sparse"

    def __init__(self, target: Target, root: nn.Module, active: torch.Tensor,
                 optimizer: torch.optim.Optimizer | None) -> None:
        from .sparse import to_sparse_linear

        super().__init__(target)
        old = target.param
        self.module: SparseLinear = to_sparse_linear(root, target.module_name, active)
        self.param_name = f"{target.module_name}.values" if target.module_name else "values"
        swap_parameter(optimizer, old, self.module.values, self.module.indices)

    @property
    def param(self) -> torch.Tensor:
        return self.module.values

    def _source(self, new_idx: torch.Tensor, reset: torch.Tensor | None,
                scratch: torch.Tensor | None = None) -> torch.Tensor:
        """For each new position, its index in the current values, or -1 if it has none (or
        is in ``reset``): one dense position map, O(numel) but no sort or search (a binary
        search of the new positions in the old ones was measured 3-5x slower at 90% density,
        2x faster at 98%, than a freshly allocated map).

        ``scratch``: a dense tensor of ``numel`` entries this call may overwrite (the update's
        mask, no longer needed): the map reuses its memory, which spares allocating and
        page-faulting ``numel`` fresh entries (~45 ms for a 4096x4096 layer on the reference
        machine, a quarter of a sparse RigL update there)."""
        old_idx = self.module.indices
        device = old_idx.device
        flat = scratch.reshape(-1) if scratch is not None else None
        itypes = {4: torch.int32, 8: torch.long}
        if (flat is not None and flat.numel() == self.numel and flat.is_contiguous()
                and flat.element_size() in itypes
                and max(self.numel, old_idx.numel()) < 2 ** (8 * flat.element_size() - 1)):
            posmap = flat.view(itypes[flat.element_size()]).fill_(-1)
        else:
            itype = torch.int32 if max(self.numel, old_idx.numel()) < 2**31 else torch.long
            posmap = torch.full((self.numel,), -1, dtype=itype, device=device)
        posmap.index_copy_(0, old_idx, torch.arange(old_idx.numel(), dtype=posmap.dtype, device=device))
        if reset is not None and reset.numel():
            posmap.index_fill_(0, reset, -1)
        return posmap.index_select(0, new_idx).to(torch.long)

    @torch.no_grad()
    def set_active(self, active: torch.Tensor, full: bool,
                   optimizer: torch.optim.Optimizer | None = None) -> None:
        m = self.module
        new_idx = torch.sort(active.to(device=m.indices.device, dtype=torch.long)).values
        source = self._source(new_idx, None)
        if torch.equal(source, torch.arange(m.nnz, device=source.device)):
            return  # the same topology (e.g. a resume after the model's state was loaded)
        values = m.values.detach()
        if values.numel():
            new_values = values.index_select(0, source.clamp(min=0)).masked_fill_(source < 0, 0)
        else:
            new_values = torch.zeros(new_idx.numel(), dtype=values.dtype, device=values.device)
        remap_state(optimizer, m.values, source, m.values.shape)
        m.set_structure(new_idx, new_values)

    def bool_mask(self) -> torch.Tensor:
        mask = torch.zeros(self.numel, dtype=torch.bool, device=self.module.indices.device)
        mask[self.module.indices] = True
        return mask.view(self.shape)

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.searchsorted(self.module.indices, idx.to(self.module.indices.device))
        return self.module.values.detach().index_select(0, pos)

    def dense_weight(self) -> torch.Tensor:
        return self.module.dense_weight()

    def want_dense_grad(self, wanted: bool) -> None:
        self.module.grad_sink.wanted = wanted
        self.module.grad_sink.grad = None

    def foreign_state_shapes(self, count: int) -> set[tuple[int, ...]]:
        return {tuple(self.shape)}

    def _dense(self, values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.numel, dtype=values.dtype, device=values.device)
        out.index_copy_(0, self.module.indices, values)
        return out.view(self.shape)

    @torch.no_grad()
    def begin_update(self, optimizer: torch.optim.Optimizer | None, needs_dense_grad: bool) -> UpdateView:
        m = self.module
        weight = self._dense(m.values.detach())
        mask = self._dense(torch.ones_like(m.values.detach()))
        grad = m.grad_sink.take()
        if grad is not None:
            if distributed.is_distributed():  # as DDP averages the gradients of parameters
                distributed.all_reduce_sum_(grad)
                grad.div_(distributed.world_size())
        elif needs_dense_grad:
            raise ConfigError(
                f"sparse layer '{self.name}' has no dense gradient for this topology update: in "
                "execution: sparse it is computed only before scheduled update steps; call "
                "sparsifier.request_dense_gradient() before the backward pass of a manual update"
            )
        elif m.values.grad is not None:
            grad = self._dense(m.values.grad)  # the gradient at the active weights only
        weight.grad = grad
        state = optimizer.state.get(m.values, {}) if optimizer is not None else {}
        return UpdateView(weight, mask, state)

    @torch.no_grad()
    def commit(self, view: UpdateView, active: torch.Tensor, reset: torch.Tensor,
               optimizer: torch.optim.Optimizer | None) -> None:
        m = self.module
        # The edited mask holds exactly the new active set; its nonzeros come sorted.
        new_idx = view.mask.reshape(-1).nonzero().squeeze(1).to(m.indices.device)
        if new_idx.numel() != active.numel():
            raise RuntimeError(f"'{self.name}': the update's mask and active set disagree")
        # The mask is spent once new_idx is read: its memory holds the position map.
        source = self._source(new_idx, reset.to(device=m.indices.device, dtype=torch.long),
                              scratch=view.mask)
        remap_state(optimizer, m.values, source, m.values.shape)
        m.set_structure(new_idx, flat_gather(view.weight, new_idx))
        view.weight.grad = None


# ----------------------------------------------------------------------------------------------
# Executions


@dataclass(frozen=True)
class Execution:
    """A way of executing sparsified layers.

    Attributes:
        name: ``"dense"`` or ``"sparse"``.
        convert: ``(storage, target, root, full, optimizer) -> (storage, reason)``: given a
            layer's dense-masked storage (masks applied, initialisation done), the storage it
            executes with, and why it stays dense-masked when the execution cannot take it
            over (``None`` otherwise).
        check: Raises :class:`~itop.errors.ConfigError` for a configuration the execution
            cannot serve (called with the sparsifier before any layer is converted).
        description: One line for listings.
    """

    name: str
    convert: Callable[..., tuple[WeightStorage, str | None]]
    check: Callable[[Any], None]
    description: str = ""


def _keep_dense(storage: DenseMaskedStorage, target: Target, root: nn.Module, active: torch.Tensor,
                full: bool, optimizer: torch.optim.Optimizer | None) -> tuple[WeightStorage, str | None]:
    return storage, None


def _to_sparse(storage: DenseMaskedStorage, target: Target, root: nn.Module, active: torch.Tensor,
               full: bool, optimizer: torch.optim.Optimizer | None) -> tuple[WeightStorage, str | None]:
    from .sparse import sparse_capable

    reason = "all of its weights are active" if full else sparse_capable(root, target.module, param=target.param)
    if reason is not None:
        return storage, reason
    return SparseValuesStorage(target, root, active, optimizer), None


def _check_nothing(sparsifier: Any) -> None:
    return None


def _check_sparse(sparsifier: Any) -> None:
    for role, criterion in (("prune", sparsifier.prune), ("grow", sparsifier.grow)):
        if getattr(criterion, "dense_gradient", "never") == "always":
            raise ConfigError(
                f"{role} criterion '{criterion.name}' needs dense gradients or momentum at every "
                "step (SNFS), which sparse layers do not keep; use execution: dense"
            )
    if not getattr(sparsifier, "reset_optimizer_state", True):
        raise ConfigError(
            "reset_optimizer_state: false gives grown weights the momentum dense gradients built "
            "while they were inactive, which sparse layers do not keep; use execution: dense"
        )
    if sparsifier.sparsity_schedule is not None:
        raise ConfigError(
            "gradual pruning (initial_sparsity, GMP) changes layer sizes during training, which "
            "execution: sparse does not support; use execution: dense"
        )
    if isinstance(sparsifier.model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        raise ConfigError(
            "with execution: sparse build the sparsifier before wrapping the model in "
            "DistributedDataParallel (its layers are replaced by sparse ones)"
        )


#: Execution modes by name (the ``execution`` key of configs and :func:`itop.build`).
EXECUTIONS: Registry[Execution] = Registry("execution")
EXECUTIONS.register("dense", Execution("dense", _keep_dense, _check_nothing,
                                       "dense weights masked after every optimizer step (the reference)"))
EXECUTIONS.register("sparse", Execution("sparse", _to_sparse, _check_sparse,
                                        "nn.Linear layers store and compute with their active weights only"))


def get_execution(name: str) -> Execution:
    """The execution mode called ``name`` (a one-line error with the nearest name otherwise)."""
    return EXECUTIONS.lookup(name)


def ignore_in_ddp(model: nn.Module, names: list[str]) -> None:
    """Tell ``DistributedDataParallel`` (built later on ``model``) not to broadcast the given
    buffers every forward: sparse layers' index buffers are kept identical by the engine."""
    root = unwrap_model(model)
    current = list(getattr(root, "_ddp_params_and_buffers_to_ignore", []) or [])
    root._ddp_params_and_buffers_to_ignore = current + [n for n in names if n not in current]

"""Optimizer-state handling by state tensor, not by optimizer class.

When a weight is pruned or grown its optimizer history belongs to a different connection, so
every state tensor shaped like the weight (SGD's ``momentum_buffer``, Adam's ``exp_avg`` and
``exp_avg_sq``, anything a custom optimizer keeps) is zeroed at those positions. Scalars such as
Adam's ``step`` are left alone. No per-optimizer registry is needed.
"""

from __future__ import annotations

import torch

from ._backend import flat_set_

__all__ = ["remap_state", "reset_state", "swap_parameter"]


@torch.no_grad()
def reset_state(optimizer: torch.optim.Optimizer | None, param: torch.Tensor, flat_idx: torch.Tensor) -> int:
    """Zero the optimizer state of ``param`` at the given flat indices.

    Returns:
        The number of state tensors touched.
    """
    if optimizer is None or flat_idx.numel() == 0:
        return 0
    state = optimizer.state.get(param)
    if not state:
        return 0
    touched = 0
    for value in state.values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            flat_set_(value, flat_idx.to(value.device), 0.0)
            touched += 1
    return touched


def _shaped_like(value: object, shape: torch.Size) -> bool:
    return isinstance(value, torch.Tensor) and value.shape == shape


@torch.no_grad()
def swap_parameter(optimizer: torch.optim.Optimizer | None, old: torch.Tensor, new: torch.Tensor,
                   flat_idx: torch.Tensor) -> bool:
    """Make ``optimizer`` train ``new`` in place of ``old``, carrying its state over.

    Used when a dense weight is replaced by the vector of its active values (sparse execution):
    ``new`` takes ``old``'s place in its parameter group (the group list is edited in place, so
    every reference to it stays valid), and every state tensor shaped like ``old`` becomes its
    entries at the flat indices ``flat_idx`` (the active positions, in ``new``'s order); other
    state (Adam's ``step``) is kept as it is.

    Returns:
        Whether ``old`` was one of the optimizer's parameters.
    """
    if optimizer is None:
        return False
    found = False
    for group in optimizer.param_groups:
        params = group["params"]
        for i, p in enumerate(params):
            if p is old:
                params[i] = new
                found = True
    if found and old in optimizer.state:
        state = optimizer.state.pop(old)
        idx = flat_idx.to(torch.long)
        optimizer.state[new] = {
            k: (v.reshape(-1).index_select(0, idx.to(v.device)).clone() if _shaped_like(v, old.shape) else v)
            for k, v in state.items()
        }
    return found


@torch.no_grad()
def remap_state(optimizer: torch.optim.Optimizer | None, param: torch.Tensor, source: torch.Tensor,
                old_shape: torch.Size) -> int:
    """Re-index the state of a parameter whose entries were re-arranged (sparse execution).

    After a topology update the values vector of a sparse layer holds other weights; entry
    ``j`` of the new vector is entry ``source[j]`` of the old one, or a weight that was not
    active before (or whose history must be forgotten) when ``source[j] < 0``. Every state
    tensor shaped like the old vector (``old_shape``) is re-indexed the same way, with zeros for
    the new entries: kept for surviving weights, zeroed for grown ones, exactly as
    :func:`reset_state` does for a dense weight. Scalars are left alone.

    Returns:
        The number of state tensors touched.
    """
    if optimizer is None:
        return 0
    state = optimizer.state.get(param)
    if not state:
        return 0
    src = source.to(torch.long)
    fresh = src < 0
    touched = 0
    for key, value in list(state.items()):
        if not _shaped_like(value, old_shape):
            continue
        s = src.to(value.device)
        out = value.reshape(-1).index_select(0, s.clamp(min=0))
        out.masked_fill_(fresh.to(value.device), 0)
        if out.numel() == value.numel() and value.is_contiguous():
            value.view(-1).copy_(out)  # same size: keep the tensor (and any view of it)
        else:
            state[key] = out
        touched += 1
    return touched

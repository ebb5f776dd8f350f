"""Optimizer-state handling by state tensor, not by optimizer class.

When a weight is pruned or grown its optimizer history belongs to a different connection, so
every state tensor shaped like the weight (SGD's ``momentum_buffer``, Adam's ``exp_avg`` and
``exp_avg_sq``, anything a custom optimizer keeps) is zeroed at those positions. Scalars such as
Adam's ``step`` are left alone. No per-optimizer registry is needed.
"""

from __future__ import annotations

import torch

from ._backend import flat_set_

__all__ = ["reset_state"]


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

"""Sparse-aware initialisation.

Standard initialisations scale weights by the dense fan-in. At high sparsity each unit only
has a fraction of its inputs, so activations shrink layer by layer and gradients vanish.
Evci, Ioannou, Keskin & Dauphin, "Gradient Flow in Sparse Neural Networks and How Lottery
Tickets Win", AAAI 2022, propose scaling by the *sparse* fan-in instead. Off in the paper
presets so the ITOP setting stays reproducible.
"""

from __future__ import annotations

import torch

__all__ = ["rescale_to_sparse_fan_in"]


@torch.no_grad()
def rescale_to_sparse_fan_in(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Multiply each output unit's active weights by ``sqrt(dense_fan_in / sparse_fan_in)``.

    For a Kaiming- or Xavier-style init (variance proportional to ``1 / fan_in``) this gives
    the variance the unit would have had with a dense init of its sparse fan-in. Units with no
    active input are left alone.

    Args:
        weight: Weight of shape ``(out, in, *kernel)``; modified in place.
        mask: Same shape, 1 where active.
    """
    out = weight.shape[0]
    m = mask.reshape(out, -1)
    dense_fan_in = m.shape[1]
    sparse_fan_in = m.sum(dim=1, dtype=torch.float32)
    scale = torch.where(
        sparse_fan_in > 0, (dense_fan_in / sparse_fan_in.clamp(min=1)).sqrt(), torch.ones_like(sparse_fan_in)
    )
    weight.mul_(scale.to(weight.dtype).view(out, *([1] * (weight.dim() - 1))))

"""Conversion between dense ``nn.Linear`` layers and :class:`~itop.sparse.SparseLinear`.

The module tree is edited in place (a layer is replaced in its parent), so a model keeps its
class, its other modules and their parameters. Which layers sparse execution can take over is
decided by :func:`sparse_capable`: exact ``nn.Linear`` modules (subclasses such as the output
projection of ``nn.MultiheadAttention`` are used through their ``weight`` by their owner, not
through ``forward``) whose weight is not shared with another module, in a supported dtype.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .kernels import SUPPORTED_DTYPES
from .linear import SparseLinear

__all__ = [
    "dense_state_dict",
    "replace_module",
    "sparse_capable",
    "sparse_layers",
    "to_dense",
    "to_sparse_linear",
]


def replace_module(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at the dotted path ``name`` under ``root``; returns the module replaced."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = parent.get_submodule(child) if child in parent._modules else None
    if old is None:
        raise KeyError(f"no submodule '{name}'")
    setattr(parent, child, new)
    return old


def _weight_uses(root: nn.Module) -> dict[int, int]:
    uses: dict[int, int] = {}
    for _, m in root.named_modules(remove_duplicate=False):
        for p in m._parameters.values():
            if p is not None:
                uses[id(p)] = uses.get(id(p), 0) + 1
    return uses


def sparse_capable(root: nn.Module, module: nn.Module, uses: Mapping[int, int] | None = None,
                   param: torch.Tensor | None = None) -> str | None:
    """Why ``module`` (with its parameter ``param``, default its ``weight``) cannot run sparse
    (one phrase), or ``None`` when it can."""
    if type(module) is not nn.Linear:
        return f"{type(module).__name__} layers are not covered (only nn.Linear)"
    w = module.weight
    if param is not None and param is not w:
        return "the sparsified parameter is not the layer's weight"
    if w.dtype not in SUPPORTED_DTYPES:
        return f"{w.dtype} weights are not supported (float32, float64)"
    if w.layout != torch.strided:
        return "the weight is not a dense tensor"
    uses = uses if uses is not None else _weight_uses(root)
    if uses.get(id(w), 0) > 1:
        return "its weight is shared with another module"
    return None


def to_sparse_linear(root: nn.Module, name: str, active: torch.Tensor) -> SparseLinear:
    """Replace the ``nn.Linear`` at ``name`` by a :class:`SparseLinear` keeping ``active``."""
    linear = root.get_submodule(name)
    sparse = SparseLinear.from_dense(linear, active)
    sparse.train(linear.training)
    replace_module(root, name, sparse)
    return sparse


def sparse_layers(model: nn.Module) -> dict[str, SparseLinear]:
    """Every :class:`SparseLinear` of ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}


def to_dense(model: nn.Module) -> nn.Module:
    """Replace every :class:`SparseLinear` of ``model`` by an equivalent ``nn.Linear``, in place
    (the bias parameter is copied, not shared); returns ``model``."""
    for name, layer in sparse_layers(model).items():
        dense = layer.to_dense()
        dense.train(layer.training)
        replace_module(model, name, dense)
    return model


def dense_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model ``state_dict`` with every sparse layer's entries turned into a dense ``weight``.

    Lets a checkpoint of a model trained with ``execution: sparse`` load into the plain dense
    model (``model.load_state_dict(dense_state_dict(state))``). Other entries pass through.
    """
    out: dict[str, torch.Tensor] = {}
    prefixes = [k[: -len("_extra_state")] for k, v in state.items()
                if k.endswith("_extra_state") and isinstance(v, dict)
                and v.get("format") == "itop-sparse-linear"]
    handled: set[str] = set()
    for prefix in prefixes:
        shape = [int(s) for s in state[prefix + "_extra_state"]["shape"]]
        idx, vals = state[prefix + "indices"], state[prefix + "values"]
        w = torch.zeros(shape[0] * shape[1], dtype=vals.dtype, device=vals.device)
        w.index_copy_(0, idx.to(device=vals.device, dtype=torch.long), vals)
        out[prefix + "weight"] = w.view(shape)
        handled |= {prefix + "_extra_state", prefix + "indices", prefix + "values"}
    for k, v in state.items():
        if k not in handled:
            out[k] = v
    return out

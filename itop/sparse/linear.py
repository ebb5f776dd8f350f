"""``SparseLinear``: an ``nn.Linear`` that stores and computes with its active weights only.

The weight matrix is a set of active flat positions (the ``indices`` buffer, sorted row-major)
and one trainable value per position (the ``values`` parameter). Dynamic sparse training keeps
every layer's count of active weights exact, so ``values`` keeps its size across topology
updates: an optimizer built on it sees a constant shape, and its state (momentum, Adam moments)
exists only for the active weights. Forward and backward run the sparse kernels of
:mod:`itop.sparse.kernels`.

The module is an ``nn.Linear`` subclass, so code that recognises linear layers by type (FLOP
counting, ``print(model)``) keeps working; its ``weight`` is a read-only CSR view of the
values (``weight.to_dense()`` gives the dense matrix). Its ``state_dict`` holds ``values``,
``indices``, ``bias`` and the dense shape; :func:`itop.sparse.dense_state_dict` turns it into
the dense layer's ``weight``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .kernels import SUPPORTED_DTYPES, CsrLayout, DenseGradSink, sparse_linear

__all__ = ["SparseLinear"]


def _check_indices(indices: torch.Tensor, numel: int, what: str) -> torch.Tensor:
    indices = indices.reshape(-1).to(torch.long)
    if indices.numel():
        if int(indices.min()) < 0 or int(indices.max()) >= numel:
            raise ConfigError(f"{what}: positions must lie in [0, {numel}) for this layer's shape")
        if indices.numel() > 1 and not bool((indices[1:] > indices[:-1]).all()):
            raise ConfigError(f"{what}: positions must be sorted and distinct")
    return indices


class SparseLinear(nn.Linear):
    """A linear layer ``y = x Wᵀ + b`` with an unstructured sparse ``W``.

    Args:
        in_features: Size of each input sample.
        out_features: Size of each output sample.
        indices: Sorted, distinct flat positions (row-major, in ``[0, out * in)``) of the
            active weights.
        values: Their values (default: ``nn.Linear``'s initialisation, uniform in
            ``±1/sqrt(in_features)``).
        bias: A bias tensor (reused as the parameter when it is one, so an optimizer that holds
            it keeps working), ``True`` for a new one or ``False``/``None`` for none.

    Use :meth:`from_dense` to convert an ``nn.Linear`` and :meth:`to_dense` for the way back.
    """

    def __init__(self, in_features: int, out_features: int, indices: torch.Tensor,
                 values: torch.Tensor | None = None, bias: torch.Tensor | bool | None = True, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        nn.Module.__init__(self)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        indices = _check_indices(torch.as_tensor(indices, device=device), self.in_features * self.out_features,
                                 "SparseLinear indices")
        device = indices.device
        if values is None:
            values = torch.empty(indices.numel(), device=device, dtype=dtype or torch.get_default_dtype())
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features else 0.0
            nn.init.uniform_(values, -bound, bound)
        values = values.detach().reshape(-1).to(device=device, dtype=dtype or values.dtype)
        if values.numel() != indices.numel():
            raise ConfigError(f"SparseLinear got {values.numel()} values for {indices.numel()} positions")
        if values.dtype not in SUPPORTED_DTYPES:
            raise ConfigError(
                f"sparse execution supports float32 and float64 weights, got {values.dtype}; "
                "keep this layer in execution: dense or convert the model with .float()"
            )
        self.values = nn.Parameter(values)
        self.register_buffer("indices", indices)
        if isinstance(bias, nn.Parameter):
            self.bias = bias
        elif isinstance(bias, torch.Tensor):
            self.bias = nn.Parameter(bias.detach().to(device=device, dtype=values.dtype))
        elif bias:
            b = torch.empty(self.out_features, device=device, dtype=values.dtype)
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features else 0.0
            nn.init.uniform_(b, -bound, bound)
            self.bias = nn.Parameter(b)
        else:
            self.register_parameter("bias", None)
        self.grad_sink = DenseGradSink()
        self._layout: CsrLayout | None = None

    # -- conversion ----------------------------------------------------------------------------

    @classmethod
    @torch.no_grad()
    def from_dense(cls, linear: nn.Linear, active: torch.Tensor) -> SparseLinear:
        """A sparse copy of ``linear`` keeping the weights at the flat positions ``active``.

        ``active`` may be in any order (it is sorted here). The bias parameter is shared with
        ``linear``, not copied.
        """
        weight = linear.weight
        idx = torch.sort(active.reshape(-1).to(device=weight.device, dtype=torch.long)).values
        values = weight.detach().reshape(-1).index_select(0, idx).clone()
        return cls(linear.in_features, linear.out_features, idx, values, linear.bias)

    @torch.no_grad()
    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` with the same weights (zeros at the inactive positions)."""
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.values.device, dtype=self.values.dtype)
        dense.weight.copy_(self.dense_weight())
        if self.bias is not None:
            dense.bias.copy_(self.bias)
        return dense

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The dense weight matrix (a new tensor; zeros at the inactive positions)."""
        w = torch.zeros(self.out_features * self.in_features, dtype=self.values.dtype,
                        device=self.values.device)
        w.index_copy_(0, self.indices, self.values.detach())
        return w.view(self.out_features, self.in_features)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """Read-only CSR view of the weight (shares ``values``' storage, no gradient)."""
        return self.layout().matrix(self.values.detach())

    # -- structure -----------------------------------------------------------------------------

    @property
    def nnz(self) -> int:
        """Number of active weights."""
        return int(self.indices.numel())

    @property
    def density(self) -> float:
        return self.nnz / max(self.in_features * self.out_features, 1)

    def layout(self) -> CsrLayout:
        """The CSR structure of the current indices (rebuilt after a change or a move)."""
        lay = self._layout
        if lay is None or lay.device != self.indices.device or lay.nnz != self.nnz:
            lay = self._layout = CsrLayout(self.indices, (self.out_features, self.in_features))
        return lay

    @torch.no_grad()
    def set_structure(self, indices: torch.Tensor, values: torch.Tensor) -> None:
        """Replace the active positions and their values in place.

        With an unchanged count (dynamic sparse training) the ``values`` parameter and the
        ``indices`` buffer keep their identity and storage, so optimizers, DDP and views of
        them stay valid; otherwise their data are resized.
        """
        indices = indices.to(device=self.indices.device, dtype=torch.long)
        values = values.to(device=self.values.device, dtype=self.values.dtype)
        if indices.numel() == self.nnz:
            self.indices.copy_(indices)
            self.values.copy_(values)
        else:
            self.indices.data = indices.clone()
            self.values.data = values.clone()
        self._layout = None

    # -- forward -------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.values.dtype:
            if not torch.is_autocast_enabled(x.device.type):
                raise RuntimeError(
                    f"SparseLinear: input dtype {x.dtype} differs from the weights' {self.values.dtype}"
                )
            x = x.to(self.values.dtype)  # under autocast sparse layers compute in their own dtype
        return sparse_linear(x, self.values, self.bias, self.layout(), self.grad_sink)

    def reset_parameters(self) -> None:
        """Re-draw the active values and the bias as ``nn.Linear`` initialises them."""
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features else 0.0
        with torch.no_grad():
            nn.init.uniform_(self.values, -bound, bound)
            if self.bias is not None:
                nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, nnz={self.nnz}, density={self.density:.4g}")

    # -- persistence ---------------------------------------------------------------------------

    def get_extra_state(self) -> dict[str, Any]:
        return {"format": "itop-sparse-linear", "shape": [self.out_features, self.in_features]}

    def set_extra_state(self, state: Any) -> None:
        pass  # checked in _load_from_state_dict, before the tensors are copied

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        name = prefix.rstrip(".") or "layer"
        if prefix + "weight" in state_dict and prefix + "values" not in state_dict:
            raise CheckpointError(
                f"'{name}' is a sparse layer but the checkpoint holds a dense weight: load it into "
                "a model built with execution: dense (the sparsifier state then restores the masks)"
            )
        extra = state_dict.get(prefix + "_extra_state")
        if isinstance(extra, dict) and "shape" in extra:
            shape = [int(s) for s in extra["shape"]]
            if shape != [self.out_features, self.in_features]:
                raise CheckpointError(
                    f"sparse layer '{name}' in the checkpoint has shape {shape} but this model's is "
                    f"{[self.out_features, self.in_features]}; build the model the checkpoint was saved from"
                )
        idx = state_dict.get(prefix + "indices")
        vals = state_dict.get(prefix + "values")
        if isinstance(idx, torch.Tensor) and isinstance(vals, torch.Tensor):
            try:
                idx = _check_indices(idx, self.in_features * self.out_features, f"checkpoint layer '{name}'")
            except ConfigError as e:
                raise CheckpointError(f"{e}; the checkpoint belongs to another model") from None
            if idx.numel() != vals.numel():
                raise CheckpointError(f"checkpoint layer '{name}' has {vals.numel()} values for "
                                      f"{idx.numel()} positions; the checkpoint is corrupt")
            if idx.numel() != self.nnz:  # another density: take the checkpoint's size
                with torch.no_grad():
                    self.indices.data = torch.empty_like(idx, device=self.indices.device)
                    self.values.data = torch.empty(idx.numel(), dtype=self.values.dtype,
                                                   device=self.values.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._layout = None

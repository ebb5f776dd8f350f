"""Sparse kernels of a linear layer whose weight is stored as its active values only.

A sparse weight ``W`` (``out x in``) is a fixed set of flat positions (``indices``, sorted in
row-major order) and one value per position (``values``, in the same order). Training a
linear layer ``y = x Wᵀ + b`` needs three products per step, each costed by the active weights
alone:

* forward, ``yᵀ = W xᵀ``: a sparse-dense product (SpMM) of the CSR matrix with the batch;
* input gradient, ``gxᵀ = Wᵀ gᵀ``: the same SpMM with the transposed matrix, kept as a
  second CSR structure (the columns of ``W``) whose values are a gather of ``values``;
* weight gradient at the active positions only, ``dW[i, j] = Σ_b g[b, i] x[b, j]`` for
  every active ``(i, j)``: a sampled dense-dense product (SDDMM,
  ``torch.sparse.sampled_addmm``).

RigL (Evci et al., "Rigging the Lottery", ICML 2020) grows by the *dense* gradient, which the
sparse backward does not produce; on the steps that need it a :class:`DenseGradSink` asks for
``gᵀ x`` as well (one dense product, update steps only).

Two kernel backends compute these products (:data:`BACKENDS`, first match serves a call):

* :class:`NativeCpuKernels`, on CPU for float32: the C kernels of :mod:`itop.sparse.native`
  (compiled on first use), which read the row-major input and write the row-major output
  themselves, 32 batch columns per active weight in vector registers: 2.2-2.9x torch's
  forward on the reference machine, transposes included;
* :class:`TorchKernels`, everywhere else (other devices, float64, no C compiler): torch's
  sparse kernels as described below. Both give the same results up to float rounding.

Which torch kernel runs each product was chosen by measurement on the reference CPU (2 threads,
batch 128, layers 4096x4096 and 4096x784 at densities 1-20%; ``benchmarks/bench_sparse.py
--part kernels`` repeats the comparison, ``docs/performance.md`` records it): for the two
SpMMs, ``torch.sparse.mm(A, B, "sum")`` (ATen's vectorised CSR kernel) and MKL's CSR product
(``torch.sparse.mm(A, B)``) were within 10-30% of each other, neither consistently ahead, while
COO, the CSC view ``W.t()``, dense-times-sparse and gather-and-``index_add_`` formulations were
3-10x slower; ``sampled_addmm`` with the batch in transposed layout beat gather-and-dot by
10-20x and the row-major layout by 10-30%. Kernels are looked up by device type in
:data:`SPMM`, so tensors on other devices use ``torch.sparse.mm`` (cuSPARSE on CUDA) with no
code change.

The kernels work on transposed activations (``xᵀ``, ``gᵀ``: the batch is the contiguous
dimension, so each active weight reads one contiguous row); inputs and outputs of the layer are
ordinary contiguous ``(N, features)`` tensors, at the cost of one transpose copy each way.
Handing the transposed layout on (``yᵀ.t()`` views) saves those copies between two sparse
layers but was measured slower overall: a dense layer or an element-wise backward meeting a
transposed tensor takes a strided path 10-90x slower than the copy (``F.linear`` with a
transposed 128x4096 input: 7.7 ms against 0.6 ms; ``threshold_backward`` with mixed layouts:
7.0 ms against 0.08 ms).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

from .native import native_kernels

__all__ = [
    "BACKENDS",
    "SPMM",
    "SUPPORTED_DTYPES",
    "CsrLayout",
    "DenseGradSink",
    "KernelBackend",
    "NativeCpuKernels",
    "TorchKernels",
    "kernel_backend",
    "sparse_linear",
    "spmm",
]

#: Weight dtypes sparse execution supports (``sampled_addmm`` has no CPU bfloat16/float16 kernel).
SUPPORTED_DTYPES = (torch.float32, torch.float64)

with warnings.catch_warnings():
    # torch warns once per process that sparse CSR tensors are "in beta"; consume that warning
    # here so it is not shown to users of every model with a sparse layer.
    warnings.simplefilter("ignore")
    torch.sparse_csr_tensor(torch.zeros(2, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                            torch.zeros(0), (1, 1))


def _spmm_reduce(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sparse.mm(a, b, "sum")


def _spmm_library(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sparse.mm(a, b)


#: CSR x dense product by device type; devices not listed use ``torch.sparse.mm`` (the vendor
#: library: cuSPARSE on CUDA).
SPMM: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"cpu": _spmm_reduce}


def spmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for a CSR matrix ``a`` and a dense matrix ``b``, by the device's fastest kernel."""
    return SPMM.get(b.device.type, _spmm_library)(a, b)


def _row_pointers(rows: torch.Tensor, n_rows: int, dtype: torch.dtype) -> torch.Tensor:
    counts = torch.bincount(rows, minlength=n_rows)
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow.to(dtype)


class CsrLayout:
    """Row and column structure of one sparse weight, built once per topology.

    Args:
        indices: Sorted flat (row-major) positions of the active weights, int64.
        shape: ``(out_features, in_features)``.

    Attributes:
        crow, col: CSR structure of ``W`` (row pointers, column of each value).
        t_crow, t_col: CSR structure of ``Wᵀ`` (column pointers of ``W``, row of each entry).
        t_perm: ``values[t_perm]`` are the values in ``Wᵀ``'s order.

    Index tensors are int32 whenever the counts fit (both kernels accept it; it takes half the
    memory of int64 and was no slower when measured).
    """

    def __init__(self, indices: torch.Tensor, shape: tuple[int, int]) -> None:
        out_features, in_features = shape
        self.shape = (int(out_features), int(in_features))
        self.nnz = int(indices.numel())
        self.device = indices.device
        itype = torch.int32 if max(self.nnz, out_features, in_features) < 2**31 - 1 else torch.long
        rows = torch.div(indices, in_features, rounding_mode="floor")
        cols = indices - rows * in_features
        self.crow = _row_pointers(rows, out_features, itype)
        self.col = cols.to(itype)
        # A stable sort by column keeps rows ascending within each column: CSR of Wᵀ.
        order = torch.sort(cols, stable=True).indices
        self.t_crow = _row_pointers(cols, in_features, itype)
        self.t_col = rows.index_select(0, order).to(itype)
        self.t_perm = order.to(itype)
        self._zeros: dict[torch.dtype, torch.Tensor] = {}

    def nbytes(self) -> int:
        """Memory held by the structure (index tensors and the sampling mask)."""
        tensors = [self.crow, self.col, self.t_crow, self.t_col, self.t_perm, *self._zeros.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """``W`` as a CSR tensor sharing ``values``' storage."""
        return torch.sparse_csr_tensor(self.crow, self.col, values, self.shape,
                                       check_invariants=False)

    def transposed(self, values: torch.Tensor) -> torch.Tensor:
        """``Wᵀ`` as a CSR tensor (its values are a gather of ``values``)."""
        return torch.sparse_csr_tensor(self.t_crow, self.t_col, values.index_select(0, self.t_perm),
                                       (self.shape[1], self.shape[0]), check_invariants=False)

    def pattern(self, dtype: torch.dtype) -> torch.Tensor:
        """The sparsity pattern with zero values: the sampling mask of ``sampled_addmm``
        (zeros, not the weights, since ``beta=0`` does not clear NaN inputs)."""
        zeros = self._zeros.get(dtype)
        if zeros is None:
            zeros = self._zeros[dtype] = torch.zeros(self.nnz, dtype=dtype, device=self.device)
        return torch.sparse_csr_tensor(self.crow, self.col, zeros, self.shape, check_invariants=False)


class DenseGradSink:
    """Collects the dense weight gradient ``gᵀ x`` of one sparse layer when asked to.

    The engine sets :attr:`wanted` before the backward pass of a step whose topology update
    reads the dense gradient (RigL's growth); every backward pass while it is set adds its
    product to :attr:`grad` (so gradient accumulation over micro-batches sums, as ``.grad``
    does). :meth:`take` hands the gradient over and clears it.
    """

    def __init__(self) -> None:
        self.wanted = False
        self.grad: torch.Tensor | None = None

    def add(self, grad: torch.Tensor) -> None:
        if self.grad is None:
            self.grad = grad
        else:
            self.grad.add_(grad)

    def take(self) -> torch.Tensor | None:
        grad, self.grad = self.grad, None
        return grad


def _transposed_contiguous(t: torch.Tensor) -> torch.Tensor:
    tt = t.t()
    return tt if tt.is_contiguous() else tt.contiguous()


class KernelBackend:
    """How one sparse linear layer computes its three products.

    Both halves work with *transposed* activations (``(features, columns)``, the batch
    contiguous; a backend may pad the batch with zero columns): :meth:`forward` returns the
    output and the transposed input it saves for the backward pass, :meth:`backward` returns
    the input gradient, the gradient of the values and the transposed output gradient (from
    which the layer takes RigL's dense gradient ``gᵀ x``; zero padding columns add nothing).
    """

    name = "abstract"

    def supports(self, x: torch.Tensor, values: torch.Tensor, layout: CsrLayout) -> bool:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None,
                layout: CsrLayout) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def backward(self, grad_out: torch.Tensor, xt: torch.Tensor, values: torch.Tensor,
                 layout: CsrLayout, need_x: bool, need_values: bool
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        raise NotImplementedError


class TorchKernels(KernelBackend):
    """torch's sparse kernels: :func:`spmm` for both products, ``sampled_addmm`` for the weight
    gradient. Serves every device and dtype sparse execution supports."""

    name = "torch"

    def supports(self, x: torch.Tensor, values: torch.Tensor, layout: CsrLayout) -> bool:
        return True

    def forward(self, x, values, bias, layout):
        xt = _transposed_contiguous(x)  # (in, N)
        yt = spmm(layout.matrix(values), xt)  # (out, N)
        if bias is None:
            return yt.t().contiguous(), xt
        y = torch.empty((yt.shape[1], yt.shape[0]), dtype=yt.dtype, device=yt.device)
        return torch.add(yt.t(), bias, out=y), xt  # transpose back and add the bias in one pass

    def backward(self, grad_out, xt, values, layout, need_x, need_values):
        gt = _transposed_contiguous(grad_out)  # (out, N)
        grad_x = grad_values = None
        if need_x:
            grad_x = spmm(layout.transposed(values), gt).t().contiguous()
        if need_values:
            grad_values = torch.sparse.sampled_addmm(layout.pattern(gt.dtype), gt, xt.t(),
                                                     beta=0.0).values()
        return grad_x, grad_values, gt


class NativeCpuKernels(KernelBackend):
    """The C kernels of :mod:`itop.sparse.native` (CPU, float32, int32 indices): row-major
    input and output with the transposes done inside, 2.2-2.9x torch's forward on the
    reference machine. Unavailable (no compiler, ``ITOP_NATIVE_KERNELS=0``) means unsupported,
    and the next backend serves."""

    name = "native"

    def supports(self, x: torch.Tensor, values: torch.Tensor, layout: CsrLayout) -> bool:
        return (x.device.type == "cpu" and x.dtype == torch.float32 and values.dtype == torch.float32
                and layout.crow.dtype == torch.int32 and native_kernels() is not None)

    def forward(self, x, values, bias, layout):
        nk = native_kernels()
        x = x.contiguous()
        xt = nk.transpose_pad(x)
        bias = None if bias is None else bias.contiguous()
        return nk.spmm(x.shape[0], layout.crow, layout.col, values.contiguous(), None, xt, bias), xt

    def backward(self, grad_out, xt, values, layout, need_x, need_values):
        nk = native_kernels()
        grad_out = grad_out.contiguous()
        gt = nk.transpose_pad(grad_out)
        grad_x = grad_values = None
        if need_x:
            grad_x = nk.spmm(grad_out.shape[0], layout.t_crow, layout.t_col, values.contiguous(),
                             layout.t_perm, gt, None)
        if need_values:
            grad_values = nk.sddmm(layout.crow, layout.col, gt, xt)
        return grad_x, grad_values, gt


#: Kernel backends in order of preference; a layer call runs the first that supports its
#: tensors. Insert a backend here to add one (e.g. another device's kernels).
BACKENDS: list[KernelBackend] = [NativeCpuKernels(), TorchKernels()]


def kernel_backend(x: torch.Tensor, values: torch.Tensor, layout: CsrLayout) -> KernelBackend:
    """The backend that runs a layer call with these tensors."""
    return next(b for b in BACKENDS if b.supports(x, values, layout))


class _SparseLinearFunction(torch.autograd.Function):
    """``x Wᵀ + b`` with ``W`` given by (layout, values); see the module docstring."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None,
                layout: CsrLayout, sink: DenseGradSink | None) -> torch.Tensor:
        backend = kernel_backend(x, values, layout)
        y, xt = backend.forward(x, values, bias, layout)
        ctx.save_for_backward(xt, values)
        ctx.layout = layout
        ctx.backend = backend
        ctx.sink = sink
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        xt, values = ctx.saved_tensors
        backend: KernelBackend = ctx.backend
        grad_x, grad_values, gt = backend.backward(grad_out, xt, values, ctx.layout,
                                                   ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        grad_bias = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0)
        sink: DenseGradSink | None = ctx.sink
        if sink is not None and sink.wanted:
            sink.add(torch.mm(gt, xt.t()))
        return grad_x, grad_values, grad_bias, None, None


def sparse_linear(x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None,
                  layout: CsrLayout, sink: DenseGradSink | None = None) -> torch.Tensor:
    """``y = x Wᵀ + b`` for a sparse ``W``, differentiable in ``x``, ``values`` and ``bias``.

    Args:
        x: Input of shape ``(..., in_features)``.
        values: The active weights in ``layout``'s order (``layout.nnz`` entries).
        bias: Optional bias of shape ``(out_features,)``.
        layout: The structure of ``W``.
        sink: Where the dense weight gradient goes when it is wanted (RigL update steps).

    Returns:
        ``(..., out_features)``, contiguous.
    """
    if x.dim() == 2:
        return _SparseLinearFunction.apply(x, values, bias, layout, sink)
    lead = x.shape[:-1]
    y = _SparseLinearFunction.apply(x.reshape(-1, x.shape[-1]), values, bias, layout, sink)
    return y.reshape(*lead, layout.shape[0])

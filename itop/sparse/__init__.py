"""Sparse execution: layers that store and compute with their active weights only.

With ``execution="sparse"`` (:func:`itop.build`) every masked ``nn.Linear`` becomes a
:class:`SparseLinear`: a fixed-size ``values`` parameter holds the active weights, forward and
backward run sparse kernels (:mod:`itop.sparse.kernels`: on CPU native C kernels compiled on
first use, :mod:`itop.sparse.native`; elsewhere, or without a C compiler, torch's), and the optimizer state exists for
active weights only. Other layers keep dense masking in the same model.

Also here: conversion helpers (:func:`to_dense`, :func:`dense_state_dict`) and the compressed
export for inference (:func:`export_model`, :func:`load_export`).
"""

from .convert import (
    dense_state_dict,
    replace_module,
    sparse_capable,
    sparse_layers,
    to_dense,
    to_sparse_linear,
)
from .export import EXPORT_FORMAT, export_model, load_export, read_export
from .kernels import (
    BACKENDS,
    SPMM,
    SUPPORTED_DTYPES,
    CsrLayout,
    DenseGradSink,
    KernelBackend,
    kernel_backend,
    sparse_linear,
    spmm,
)
from .linear import SparseLinear
from .native import native_kernels, native_status

__all__ = [
    "BACKENDS",
    "EXPORT_FORMAT",
    "SPMM",
    "SUPPORTED_DTYPES",
    "CsrLayout",
    "DenseGradSink",
    "KernelBackend",
    "SparseLinear",
    "dense_state_dict",
    "export_model",
    "kernel_backend",
    "load_export",
    "native_kernels",
    "native_status",
    "read_export",
    "replace_module",
    "sparse_capable",
    "sparse_layers",
    "sparse_linear",
    "spmm",
    "to_dense",
    "to_sparse_linear",
]

"""Sparse export: a finished model in a compressed file, and loading it back for inference.

The file is a plain ``dict`` saved with ``torch.save`` and loadable with ``torch.load(...,
weights_only=True)``:

* ``format``: ``"itop-sparse-export"``, ``version``: 1;
* ``state``: the model's ``state_dict`` with every sparse linear layer's weight as a
  ``torch.sparse_csr_tensor`` under ``<layer>.weight`` (int32 indices when they fit: 8 bytes
  per active weight against 4 per dense weight, so the file shrinks below a density of 1/2);
  every other tensor as it is;
* ``layers``: ``{layer: {"shape": [out, in], "nnz": k}}`` for the sparse layers;
* ``model``: what rebuilds the network, ``{"name", "shape", "kwargs"}`` for a model of the zoo
  (``build_model(name, **shape, **kwargs)``, :func:`itop.models.build_model`; ``shape`` is the
  dataset's ``model_shape()``, e.g. ``{"num_classes": 10, "in_channels": 1, "image_size": 28}``),
  or ``None`` (then pass a model of the same architecture to :func:`load_export`);
* ``meta``: free-form information from the caller (method, sparsity, accuracy, ...).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .convert import replace_module, sparse_capable, sparse_layers
from .linear import SparseLinear

__all__ = ["EXPORT_FORMAT", "export_model", "load_export", "read_export"]

EXPORT_FORMAT = "itop-sparse-export"
EXPORT_VERSION = 1


def _save_atomic(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename: a crash never
    leaves a half-written file under the export's name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _csr(dense_shape: tuple[int, int], indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    out_f, in_f = dense_shape
    rows = torch.div(indices, in_f, rounding_mode="floor")
    cols = indices - rows * in_f
    crow = torch.zeros(out_f + 1, dtype=torch.long)
    torch.cumsum(torch.bincount(rows.cpu(), minlength=out_f), 0, out=crow[1:])
    small = max(out_f, in_f, int(indices.numel())) < 2**31
    itype = torch.int32 if small else torch.long
    return torch.sparse_csr_tensor(crow.to(itype), cols.cpu().to(itype), values.detach().cpu().clone(),
                                   dense_shape)


def export_model(model: nn.Module, path: str | os.PathLike, *,
                 masks: Mapping[str, torch.Tensor] | None = None,
                 rebuild: Mapping[str, Any] | None = None,
                 meta: Mapping[str, Any] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write ``model`` with its sparse linear layers in CSR form.

    Sparse layers are the model's :class:`SparseLinear` modules (``execution: sparse``) and,
    with ``masks`` (e.g. ``sparsifier.masks()`` of a run in ``execution: dense``), every
    ``nn.Linear`` whose weight has a mask with inactive entries.

    Args:
        model: The trained model (wrappers are not stripped: pass the bare module).
        path: Output file; written atomically.
        masks: Bool masks by parameter name (``"<layer>.weight"``), for dense-executed runs.
        rebuild: How to rebuild the network (see the module docstring), or ``None``.
        meta: Extra information stored as it is (tensors, numbers, strings, lists, dicts).
        overwrite: Replace an existing file (default: refuse, so nothing is lost).

    Returns:
        ``{"path", "bytes", "dense_bytes", "layers", "nnz", "weights"}``: the file size and
        what the same tensors take stored dense.

    Raises:
        ConfigError: When the model has no sparse layer (nothing to compress), or the file
            exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; choose another output path or remove it first")
    state = dict(model.state_dict())
    layers: dict[str, dict[str, Any]] = {}
    for name, layer in sparse_layers(model).items():
        prefix = f"{name}." if name else ""
        for key in ("values", "indices", "_extra_state"):
            state.pop(prefix + key, None)
        shape = (layer.out_features, layer.in_features)
        state[prefix + "weight"] = _csr(shape, layer.indices, layer.values)
        layers[prefix + "weight"] = {"shape": list(shape), "nnz": layer.nnz}
    for pname, mask in (masks or {}).items():
        module_name = pname.rpartition(".")[0]
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            continue
        if pname in layers or sparse_capable(model, module) is not None or bool(mask.all()):
            continue
        idx = mask.reshape(-1).nonzero().squeeze(1).to(module.weight.device)
        values = module.weight.detach().reshape(-1).index_select(0, idx)
        shape = tuple(module.weight.shape)
        state[pname] = _csr(shape, idx, values)
        layers[pname] = {"shape": list(shape), "nnz": int(idx.numel())}
    if not layers:
        raise ConfigError(
            "the model has no sparse linear layer to export: train it with execution: sparse, "
            "or pass the sparsifier's masks (a dense run has nothing to compress)"
        )
    payload = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "state": state, "layers": layers,
               "model": dict(rebuild) if rebuild is not None else None, "meta": dict(meta or {})}
    _save_atomic(payload, path)
    # numel() of a CSR tensor counts its dense entries, so this is the size stored dense.
    dense_bytes = sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return {"path": str(path), "bytes": path.stat().st_size, "dense_bytes": dense_bytes,
            "layers": len(layers), "nnz": sum(v["nnz"] for v in layers.values()),
            "weights": sum(v["shape"][0] * v["shape"][1] for v in layers.values())}


def read_export(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check an export file (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"export {path} does not exist; check the path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is truncated or corrupt ({reason}); export the model again") from None
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path} is not an itop sparse export; create one with itop export")
    if payload.get("version") != EXPORT_VERSION:
        raise CheckpointError(f"{path} has export version {payload.get('version')}; this itop reads "
                              f"version {EXPORT_VERSION}")
    return payload


def _flat_indices(csr: torch.Tensor) -> torch.Tensor:
    crow = csr.crow_indices().to(torch.long)
    rows = torch.repeat_interleave(torch.arange(csr.shape[0]), crow.diff())
    return rows * csr.shape[1] + csr.col_indices().to(torch.long)


def load_export(path: str | os.PathLike, model: nn.Module | None = None, *,
                execution: str = "sparse", device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild an exported model for inference.

    Args:
        path: An :func:`export_model` file.
        model: A freshly built model of the same architecture, or ``None`` to rebuild it from
            the file's ``model`` entry (models of the zoo).
        execution: ``"sparse"``: the sparse layers become :class:`SparseLinear` (sparse
            kernels); ``"dense"``: plain ``nn.Linear`` with zeros at the inactive weights.
        device: Where the model goes.

    Returns:
        The model in evaluation mode.

    Raises:
        CheckpointError: A file that is not an export, or a model of another shape.
    """
    if execution not in ("sparse", "dense"):
        raise ConfigError(f"execution must be 'sparse' or 'dense', got {execution!r}")
    payload = read_export(path)
    if model is None:
        spec = payload.get("model")
        if not spec:
            raise CheckpointError(f"{path} does not say how to rebuild its model; pass model= "
                                  "(a freshly built model of the same architecture)")
        from ..models import build_model

        model = build_model(spec["name"], **dict(spec.get("shape") or {}), **dict(spec.get("kwargs") or {}))
    state = dict(payload["state"])
    for pname, info in payload["layers"].items():
        module_name = pname.rpartition(".")[0]
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise CheckpointError(f"{path} has a sparse layer '{module_name}' that this model lacks; "
                                  "build the model the export was made from") from None
        shape = [int(s) for s in info["shape"]]
        have = list(module.weight.shape) if isinstance(module, nn.Linear) else None
        if have != shape:
            raise CheckpointError(
                f"sparse layer '{module_name}' in {path} has shape {shape} but this model's is "
                f"{have}; build the model the export was made from")
        csr = state.pop(pname)
        idx, values = _flat_indices(csr), csr.values()
        prefix = f"{module_name}." if module_name else ""
        if execution == "sparse":
            layer = SparseLinear(shape[1], shape[0], idx, values.to(module.weight.dtype),
                                 bias=module.bias is not None)
            replace_module(model, module_name, layer)
            state[prefix + "values"] = layer.values.detach()
            state[prefix + "indices"] = layer.indices
            state[prefix + "_extra_state"] = layer.get_extra_state()
        else:
            w = torch.zeros(shape[0] * shape[1], dtype=values.dtype)
            w.index_copy_(0, idx, values)
            state[pname] = w.view(shape)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit this model: {str(e).splitlines()[0]}; build the "
                              "model the export was made from") from None
    return model.to(device).eval()

"""``itop export``: a run's model with its sparse layers in compressed form, for inference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from ..sparse import export_model, sparse_layers
from .checkpoint import load_checkpoint
from .config import RunConfig
from .evaluate import restore_model
from .factories import make_data, resolve_device

__all__ = ["export_checkpoint"]


def export_checkpoint(path: str | Path, out: str | Path, data_dir: str | None = None) -> dict[str, Any]:
    """Write the model of a run's checkpoint (``best.pt`` or ``ckpt-*.pt``) to ``out``.

    The sparse layers are stored as CSR tensors (see :mod:`itop.sparse.export`): the
    ``SparseLinear`` layers of a run with ``execution: sparse``, and the masked linear layers
    of one with ``execution: dense``. The file holds the run's config, so ``itop eval`` can
    evaluate it on the run's dataset (whose files give the model's input shape, hence
    ``data_dir``).

    Returns:
        :func:`itop.sparse.export_model`'s figures plus ``checkpoint_bytes`` (the input file).

    Raises:
        ConfigError: A run without sparse layers (e.g. ``method: dense``), or ``out`` exists.
        CheckpointError: ``path`` is not a checkpoint of an itop run.
    """
    out = Path(out)
    if out.exists():  # checked before any work; export_model checks again before writing
        raise ConfigError(f"{out} already exists; choose another output path or remove it first")
    state = load_checkpoint(path)
    if "config" not in state or "model" not in state or "sparsifier" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of an itop run; pass RUN/best.pt or a ckpt-*.pt")
    cfg = RunConfig.from_flat(state["config"])
    if data_dir is not None:
        cfg = cfg.replace(data_dir=data_dir)
    data = make_data(cfg)
    model, sp, _ = restore_model(state, path, cfg, data, resolve_device("cpu"))
    masks = {n: m for n, m in sp.masks().items() if not bool(m.all())}
    if not masks and not sparse_layers(model):
        raise ConfigError(f"{path} is a run without sparse layers (method {cfg.method}, sparsity "
                          f"{sp.actual_sparsity():.3g}): there is nothing to compress; export a sparse run")
    rebuild = {"name": cfg.model, "shape": data.model_shape(), "kwargs": dict(cfg.model_args)}
    meta = {"config": cfg.to_dict(), "method": cfg.method, "execution": sp.execution,
            "sparsity": sp.actual_sparsity(), "itop_rate": sp.itop_rate(),
            "epoch": state.get("epoch"), "source": str(path)}
    info = export_model(model, out, masks=masks, rebuild=rebuild, meta=meta)
    info["checkpoint_bytes"] = Path(path).stat().st_size
    return info

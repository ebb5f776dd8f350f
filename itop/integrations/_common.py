"""What the framework callbacks share: the DST recipe, checkpointed state and metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..methods import from_config, resolve_config
from ..sparsifier import Sparsifier
from ..targets import TargetSelector


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The ``torch.optim.Optimizer`` inside framework wrappers (accelerate's
    ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``), whose step the sparsifier
    hooks."""
    seen = 0
    while not type(optimizer).__module__.startswith("torch.optim") and seen < 8:
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            break
        optimizer, seen = inner, seen + 1
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(
            f"the trainer's optimizer is a {type(optimizer).__name__}, not a torch.optim.Optimizer; "
            "itop needs a torch optimizer to apply masks after its steps"
        )
    return optimizer


def masks_from_state(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Boolean masks by weight name from a :meth:`Sparsifier.state_dict`."""
    try:
        layers = state["layers"]
        masks = {}
        for name, layer in layers.items():
            mask = torch.zeros(math.prod(layer["shape"]), dtype=torch.bool)
            mask[layer["active"].long()] = True
            masks[name] = mask.view(*layer["shape"])
    except (KeyError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"not a sparsifier state ({e!r}); the checkpoint's itop state is damaged") from None
    return masks


def metrics(sparsifier: Sparsifier, per_layer: bool = False, prefix: str = "itop/") -> dict[str, float]:
    """Sparsity, R_s, reliable R_s, update count and lifetimes (optionally per layer) as floats."""
    return {f"{prefix}{k}": float(v) for k, v in sparsifier.stats(per_layer=per_layer).items()
            if k != "step"}


@dataclass
class Recipe:
    """How to build the sparsifier: a method name, its overrides and the target selector."""

    method: str = "rigl"
    targets: TargetSelector | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.targets is not None and not isinstance(self.targets, TargetSelector):
            raise ConfigError(f"targets must be an itop.TargetSelector, got {type(self.targets).__name__}")
        self.config = resolve_config(self.method, **self.overrides).validate()
        if self.config.init_pruning is not None:
            raise ConfigError(
                f"method '{self.method}' prunes at initialisation from training batches, which a "
                "trainer callback cannot see; compute the masks first (itop.pruning) or use a "
                "dynamic method"
            )

    def build(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        total_steps: int | None,
        state: Mapping[str, Any] | None = None,
    ) -> Sparsifier:
        """A new sparsifier; from ``state`` (its masks first, then the rest) when resuming."""
        masks = masks_from_state(state) if state is not None else None
        sparsifier = from_config(self.config, model, optimizer, total_steps, masks=masks,
                                 targets=self.targets)
        if state is not None:
            sparsifier.load_state_dict(state)
        return sparsifier

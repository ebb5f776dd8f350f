"""Which tensors are sparse.

By default every weight of ``nn.Linear`` and ``nn.Conv1d/2d/3d`` (and transposed convolutions)
is sparsified; biases, normalisation parameters and embeddings stay dense. A user filter,
name patterns to exclude, per-layer densities and keeping the first or last layer dense refine
that choice.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from torch import nn

from .errors import ConfigError

__all__ = ["Target", "TargetSelector", "unwrap_model"]

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass(frozen=True)
class Target:
    """One sparsified weight."""

    name: str  # parameter name, e.g. "features.0.weight"
    module_name: str
    module: nn.Module
    param: nn.Parameter

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip ``DistributedDataParallel``/``DataParallel`` and ``torch.compile`` wrappers.

    So that layer names (and hence checkpoints) do not depend on how the model is wrapped.
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _matches(name: str, module_name: str, patterns: Iterable[str]) -> str | None:
    for p in patterns:
        if fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(module_name, p):
            return p
    return None


@dataclass
class TargetSelector:
    """Chooses the sparsified weights of a model.

    Args:
        types: Module types whose ``weight`` is sparsified.
        include: Optional filter ``fn(param_name, module, param) -> bool``; False excludes.
        exclude: fnmatch patterns (on parameter or module name) of weights left dense and
            untracked, e.g. ``["classifier.*"]``.
        dense: Patterns of weights kept dense but still counted in the global sparsity and
            R_s (they are fully explored by definition).
        keep_first_dense: Keep the first selected layer dense (as ``dense``).
        keep_last_dense: Keep the last selected layer dense (as ``dense``).
        layer_density: Patterns mapped to a fixed density for the matching layers.
    """

    types: tuple[type[nn.Module], ...] = DEFAULT_TYPES
    include: Callable[[str, nn.Module, nn.Parameter], bool] | None = None
    exclude: tuple[str, ...] = ()
    dense: tuple[str, ...] = ()
    keep_first_dense: bool = False
    keep_last_dense: bool = False
    layer_density: Mapping[str, float] = field(default_factory=dict)

    def select(self, model: nn.Module) -> list[Target]:
        """The sparsified weights in module registration order."""
        model = unwrap_model(model)
        targets: list[Target] = []
        seen: set[int] = set()
        for mname, module in model.named_modules():
            if not isinstance(module, self.types):
                continue
            param = getattr(module, "weight", None)
            if not isinstance(param, nn.Parameter) or id(param) in seen:
                continue
            pname = f"{mname}.weight" if mname else "weight"
            if self.include is not None and not self.include(pname, module, param):
                continue
            if _matches(pname, mname, self.exclude):
                continue
            seen.add(id(param))
            targets.append(Target(pname, mname, module, param))
        if not targets:
            raise ConfigError(
                "the model has no weights to sparsify: no nn.Linear or nn.Conv* layer matched; "
                "check the include/exclude filters, or pass the layer types to sparsify"
            )
        return targets

    def fixed_densities(self, targets: list[Target]) -> dict[str, float]:
        """Layers whose density the user fixed: per-layer overrides and layers kept dense."""
        fixed: dict[str, float] = {}
        used: set[str] = set()
        for t in targets:
            for pattern, d in self.layer_density.items():
                if _matches(t.name, t.module_name, [pattern]):
                    fixed[t.name] = float(d)
                    used.add(pattern)
                    break
            if _matches(t.name, t.module_name, self.dense):
                fixed[t.name] = 1.0
        unused = [p for p in self.layer_density if p not in used]
        if unused:
            names = ", ".join(t.name for t in targets)
            raise ConfigError(
                f"per-layer override(s) {unused} match no sparsified layer; valid names: {names}"
            )
        if self.keep_first_dense:
            fixed[targets[0].name] = 1.0
        if self.keep_last_dense:
            fixed[targets[-1].name] = 1.0
        for name, d in fixed.items():
            if not 0.0 < d <= 1.0:
                raise ConfigError(
                    f"density of layer '{name}' must be in (0, 1] (a per-layer sparsity in "
                    f"[0, 1)); got density {d}"
                )
        return fixed

"""Which tensors are sparse.

By default the weight matrices that carry a network's multiply-adds are sparsified:

* ``nn.Linear`` and ``nn.Conv1d/2d/3d`` (transposed included): ``weight``;
* ``nn.MultiheadAttention``: the input projections, packed ``in_proj_weight`` (Q, K and V as one
  ``(3E, E)`` tensor) or separate ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``; its
  output projection is an ``nn.Linear``;
* Hugging Face ``transformers.pytorch_utils.Conv1D`` (GPT-2's linear layers, weight stored as
  ``(in, out)``): ``weight``. It is recognised by its qualified class name, so the core never
  imports ``transformers``.

Biases, normalisation parameters and embeddings stay dense. Any other parameter is sparsified
when a user pattern names it (``patterns``), e.g. ``"*.wte.weight"`` for an embedding; a
pattern may also name a module, which sparsifies that module's matrices. One-dimensional
parameters (biases, norm scales) have no fan-in to prune and cannot be sparsified.

Shared (tied) weights are sparsified once, under the name ``model.named_parameters()`` gives
them. A weight tied between a layer sparsified by default and one that is not (GPT's token
embedding and LM head) is left dense with a warning, because sparsifying the head would
silently sparsify the embedding too; name it in ``patterns`` to sparsify both.

For the density distributions (ERK, ER) a packed projection counts as the matrices it packs: an
MHA ``in_proj_weight`` of shape ``(3E, E)`` is three ``(E, E)`` matrices (see
:class:`~itop.distributions.BlockShape`), so a packed and an unpacked attention layer get the
same densities.

A user filter, name patterns to exclude, per-layer densities and keeping the first or last
layer dense refine the choice. :meth:`TargetSelector.plan` also lists what is left dense and
why, for :meth:`Sparsifier.describe`.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from torch import nn

from .distributions import BlockShape
from .errors import ConfigError, did_you_mean
from .registry import Registry

__all__ = ["DEFAULT_RULES", "DenseParam", "Selection", "Target", "TargetSelector", "unwrap_model"]

log = logging.getLogger(__name__)

#: Parameters sparsified by default, by the qualified name of a module class (looked up along
#: the module's MRO, so subclasses such as MHA's ``NonDynamicallyQuantizableLinear`` count).
#: Class names rather than classes let third-party layers be recognised without importing them;
#: register another layer type with ``DEFAULT_RULES.register("pkg.module.Class", ("weight",))``.
DEFAULT_RULES: Registry[tuple[str, ...]] = Registry("sparsifiable layer type")
DEFAULT_RULES.register("torch.nn.modules.linear.Linear", ("weight",))
DEFAULT_RULES.register("torch.nn.modules.conv._ConvNd", ("weight",))
DEFAULT_RULES.register(
    "torch.nn.modules.activation.MultiheadAttention",
    ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"),
)
DEFAULT_RULES.register("transformers.pytorch_utils.Conv1D", ("weight",))
DEFAULT_RULES.register("transformers.modeling_utils.Conv1D", ("weight",))  # before transformers 4.27


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _rule(module: nn.Module, rules: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    for cls in type(module).__mro__:
        params = rules.get(_qualname(cls))
        if params is not None:
            return params
    return ()


def _kind(module: nn.Module) -> str:
    """The class name shown for a module: the class its default rule is keyed by (``Linear``
    for MHA's ``NonDynamicallyQuantizableLinear``), else its own."""
    for cls in type(module).__mro__:
        if _qualname(cls) in DEFAULT_RULES and not cls.__name__.startswith("_"):
            return cls.__name__
    return type(module).__name__


def _packing(module: nn.Module, attr: str, parent: nn.Module | None) -> tuple[int, int]:
    """``(blocks, axis)`` of a packed projection, ``(1, 0)`` for an ordinary matrix.

    Known packings: ``nn.MultiheadAttention.in_proj_weight`` (Q, K, V stacked along dim 0) and
    GPT-2's ``c_attn`` ``Conv1D`` (``(E, k*E)``: Q, K, V along dim 1; ``k = 2`` for
    cross-attention), recognised by its parent's ``embed_dim`` and ``split_size``.
    """
    if attr == "in_proj_weight" and isinstance(module, nn.MultiheadAttention):
        return 3, 0
    if (
        attr == "weight"
        and type(module).__name__ == "Conv1D"
        and parent is not None
        and getattr(parent, "c_attn", None) is module
        and isinstance(getattr(parent, "embed_dim", None), int)
        and hasattr(parent, "split_size")
    ):
        width, embed = module.weight.shape[1], parent.embed_dim
        if embed > 0 and width % embed == 0 and width // embed > 1:
            return width // embed, 1
    return 1, 0


@dataclass(frozen=True)
class Target:
    """One sparsified weight.

    Attributes:
        name: Parameter name as ``model.named_parameters()`` spells it, e.g.
            ``"features.0.weight"`` (for a tied weight: its first name).
        module_name: Name of the module that owns it.
        module: That module.
        param: The parameter.
        kind: What it is, for tables, e.g. ``"Linear"``, ``"MultiheadAttention.in_proj"``,
            ``"Embedding (pattern)"``.
        blocks: Number of equal matrices packed in it (3 for a Q/K/V projection), 1 otherwise.
        block_axis: The dimension along which they are packed.
        aliases: Its other names when the weight is tied (e.g. ``("lm_head.weight",)``).
    """

    name: str
    module_name: str
    module: nn.Module
    param: nn.Parameter
    kind: str = ""
    blocks: int = 1
    block_axis: int = 0
    aliases: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        """The weight's shape; a :class:`~itop.distributions.BlockShape` for a packed one (equal
        to the plain tuple, so it compares and multiplies like one)."""
        if self.blocks > 1:
            return BlockShape(self.param.shape, self.blocks, self.block_axis)
        return tuple(self.param.shape)


@dataclass(frozen=True)
class DenseParam:
    """A parameter of two or more dimensions that is not sparsified, and why."""

    name: str
    shape: tuple[int, ...]
    kind: str
    reason: str


@dataclass
class Selection:
    """The outcome of :meth:`TargetSelector.plan`.

    Attributes:
        targets: The sparsified weights, in ``named_parameters()`` order.
        dense: Matrices (and higher-dimensional tensors) left dense, with the reason.
        vectors: Number of one-dimensional (and scalar) parameters, always dense.
        vector_numel: Their total number of elements.
        warnings: One-line messages about choices the user may not expect (tied weights left
            dense, exclude patterns that match nothing).
    """

    targets: list[Target]
    dense: list[DenseParam] = field(default_factory=list)
    vectors: int = 0
    vector_numel: int = 0
    warnings: list[str] = field(default_factory=list)


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


def _join(module_name: str, attr: str) -> str:
    return f"{module_name}.{attr}" if module_name else attr


@dataclass
class _Param:
    """A parameter with every (module name, module, attribute) it is registered under."""

    name: str
    param: nn.Parameter
    owners: list[tuple[str, nn.Module, str]]

    def names(self) -> list[str]:
        return [_join(m, a) for m, _, a in self.owners]

    def module_names(self) -> list[str]:
        return [m for m, _, _ in self.owners]


def _hint(pattern: str, names: list[str]) -> str:
    close = did_you_mean(pattern, names)
    if close:
        return close
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return f"; parameter names look like: {shown}"


@dataclass
class TargetSelector:
    """Chooses the sparsified weights of a model.

    Args:
        types: Module types whose ``weight`` is sparsified, replacing the default rules
            (:data:`DEFAULT_RULES`: Linear, Conv, MultiheadAttention projections, HF Conv1D).
        patterns: fnmatch patterns of further parameters to sparsify, matched against
            parameter names (``"transformer.wte.weight"``, ``"*.wte.weight"``) or module names
            (``"transformer.wte"``: that module's parameters of two or more dimensions). This
            is how embeddings, positional tables or custom layers are made sparse. A pattern
            that matches nothing, or names a one-dimensional parameter, is an error.
        include: Optional filter ``fn(param_name, module, param) -> bool``; False excludes.
        exclude: fnmatch patterns (on parameter or module name) of weights left dense and
            untracked, e.g. ``["classifier.*"]``.
        dense: Patterns of weights kept dense but still counted in the global sparsity and
            R_s (they are fully explored by definition).
        keep_first_dense: Keep the first selected layer dense (as ``dense``).
        keep_last_dense: Keep the last selected layer dense (as ``dense``).
        layer_density: Patterns mapped to a fixed density for the matching layers.
    """

    types: tuple[type[nn.Module], ...] | None = None
    patterns: tuple[str, ...] = ()
    include: Callable[[str, nn.Module, nn.Parameter], bool] | None = None
    exclude: tuple[str, ...] = ()
    dense: tuple[str, ...] = ()
    keep_first_dense: bool = False
    keep_last_dense: bool = False
    layer_density: Mapping[str, float] = field(default_factory=dict)

    # -- selection -----------------------------------------------------------------------------

    def _claims(self, module: nn.Module, attr: str) -> bool:
        """Whether the default rules (or ``types``) sparsify ``module.<attr>``."""
        if self.types is not None:
            return attr == "weight" and isinstance(module, self.types)
        return attr in _rule(module, DEFAULT_RULES)

    def _pattern_hits(self, params: list[_Param]) -> dict[str, set[str]]:
        """Canonical names each user pattern selects; raises for 1-D or unmatched patterns."""
        hits: dict[str, set[str]] = {}
        for pattern in self.patterns:
            chosen: set[str] = set()
            vectors: list[str] = []
            vector_modules: list[str] = []
            for p in params:
                by_name = any(fnmatch.fnmatchcase(n, pattern) for n in p.names())
                by_module = any(fnmatch.fnmatchcase(m, pattern) for m in p.module_names() if m)
                if not (by_name or by_module):
                    continue
                if p.param.dim() >= 2:
                    chosen.add(p.name)
                elif by_name:
                    vectors.append(p.name)
                else:
                    vector_modules.append(p.name)
            if vectors:
                raise ConfigError(
                    f"pattern '{pattern}' names {len(vectors)} one-dimensional parameter(s) "
                    f"({', '.join(vectors[:3])}{', ...' if len(vectors) > 3 else ''}): biases and "
                    "norm scales have no fan-in to prune and cannot be sparsified; narrow the "
                    "pattern to the matrices you mean"
                )
            if not chosen:
                if vector_modules:
                    raise ConfigError(
                        f"pattern '{pattern}' names only one-dimensional parameters "
                        f"({', '.join(vector_modules[:3])}), which cannot be sparsified; name a "
                        "layer with a weight matrix"
                    )
                names = [p.name for p in params]
                raise ConfigError(
                    f"pattern '{pattern}' matches no parameter of the model{_hint(pattern, names)}"
                )
            hits[pattern] = chosen
        return hits

    def plan(self, model: nn.Module) -> Selection:
        """The sparsified weights and the matrices left dense, with reasons.

        Raises:
            ConfigError: A pattern matches nothing or names a 1-D parameter; nothing to sparsify.
        """
        model = unwrap_model(model)
        params: dict[int, _Param] = {}
        for name, p in model.named_parameters():
            params.setdefault(id(p), _Param(name, p, []))
        parents: dict[int, nn.Module] = {}
        for mname, module in model.named_modules(remove_duplicate=False):
            for child in module.children():
                parents.setdefault(id(child), module)
            for attr, p in module._parameters.items():
                if p is not None and id(p) in params:
                    owners = params[id(p)].owners
                    if not any(mn == mname and a == attr for mn, _, a in owners):
                        owners.append((mname, module, attr))
        ordered = list(params.values())
        hits = self._pattern_hits(ordered)
        by_pattern = set().union(*hits.values()) if hits else set()

        out = Selection(targets=[])
        used_excludes: set[str] = set()
        for p in ordered:
            claimed = [self._claims(m, a) for _, m, a in p.owners]
            kinds = list(dict.fromkeys(_kind(m) for _, m, _ in p.owners))
            kind = "+".join(kinds)
            if p.param.dim() < 2:
                out.vectors += 1
                out.vector_numel += p.param.numel()
                continue
            named = p.name in by_pattern
            if not (named or any(claimed)):
                out.dense.append(DenseParam(p.name, tuple(p.param.shape), kind, "not a sparsified layer type"))
                continue
            if not named and not all(claimed):
                default = [n for n, c in zip(p.names(), claimed, strict=True) if c]
                other = [n for n, c in zip(p.names(), claimed, strict=True) if not c]
                msg = (
                    f"weight '{default[0]}' is tied to '{other[0]}' ({kind}) and is left dense; "
                    f"add '{p.name}' to the target patterns to sparsify both"
                )
                out.warnings.append(msg)
                out.dense.append(DenseParam(p.name, tuple(p.param.shape), kind,
                                            f"tied to {default[0]}; name it in patterns to sparsify"))
                continue
            # the owner reported: the first one the rules claim, else the first one
            index = claimed.index(True) if any(claimed) else 0
            mname, module, attr = p.owners[index]
            aliases = tuple(n for n in p.names() if n != p.name)
            excluded = next((pat for pat in self.exclude
                             if any(_matches(n, m, [pat]) for n, m in zip(p.names(), p.module_names(), strict=True))),
                            None)
            if excluded is not None:
                used_excludes.add(excluded)
                out.dense.append(DenseParam(p.name, tuple(p.param.shape), kind, f"excluded by '{excluded}'"))
                continue
            if self.include is not None and not self.include(p.name, module, p.param):
                out.dense.append(DenseParam(p.name, tuple(p.param.shape), kind, "excluded by the include filter"))
                continue
            blocks, axis = _packing(module, attr, parents.get(id(module)))
            label = kind if attr == "weight" else f"{kind}.{attr.removesuffix('_weight')}"
            if named and not any(claimed):
                label += " (pattern)"
            out.targets.append(Target(p.name, mname, module, p.param, label, blocks, axis, aliases))
        for pat in self.exclude:
            if pat not in used_excludes:
                out.warnings.append(f"exclude pattern '{pat}' matches no sparsified weight; check its spelling")
        if not out.targets:
            raise ConfigError(
                "the model has no weights to sparsify: no Linear, Conv, MultiheadAttention or "
                "Conv1D weight matched; check the include/exclude filters, or name the "
                "parameters to sparsify with patterns"
            )
        return out

    def select(self, model: nn.Module) -> list[Target]:
        """The sparsified weights in ``named_parameters()`` order (logs :meth:`plan`'s warnings)."""
        selection = self.plan(model)
        for msg in selection.warnings:
            log.warning("%s", msg)
        return selection.targets

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

"""Name -> factory registry for the networks itop can train.

A model is built by name with :func:`build_model`; the dataset supplies the input shape and
class count (image datasets) or the vocabulary size and context length (text datasets) so no
architecture hard-codes them. A factory receives only the shape arguments its signature names
(see :data:`SHAPE_ARGS`), so image and text models share one registry. Entries are added with the
:func:`register_model` decorator, either under a fixed name (``"resnet-18"``) or as a
pattern whose integer fields become factory keyword arguments (``"wrn-<depth>-<width>"``).
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from itop.errors import ConfigError, unknown_name
from itop.models._common import check_int
from itop.registry import Registry

logger = logging.getLogger(__name__)

ModelFactory = Callable[..., nn.Module]

#: Shape arguments a dataset can supply (``DatasetSplits.model_shape()``); a factory receives
#: those its signature names (all of them when it takes ``**kwargs``).
SHAPE_ARGS = ("in_channels", "num_classes", "image_size", "vocab_size", "block_size")
_SHAPE_ARGS = SHAPE_ARGS
_IMAGE_ARGS = ("in_channels", "image_size")


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry.

    Attributes:
        name: The registered name, e.g. ``"resnet-18"``; for a pattern entry a readable
            template such as ``"wrn-<depth>-<width>"``.
        factory: Called with the shape arguments it names (image models:
            ``factory(*, in_channels, num_classes, image_size, **kwargs)``, mapping
            ``(N, C, H, W)`` images to ``(N, classes)`` logits; language models:
            ``factory(*, vocab_size, block_size, **kwargs)``, mapping ``(N, T)`` token ids to
            ``(N, T, vocab_size)`` logits).
        description: One line shown by ``itop list``.
        pattern: For a pattern entry, the regular expression a requested name must fully
            match; its named groups are passed to ``factory`` as ``int`` keyword arguments.
        examples: Concrete names of a pattern entry that :func:`list_models` also lists, so
            that they are discoverable and used for "did you mean" hints.
    """

    name: str
    factory: ModelFactory
    description: str
    pattern: re.Pattern[str] | None = None
    examples: tuple[str, ...] = field(default=())


_REGISTRY: Registry[ModelSpec] = Registry("model")


def register_model(
    name: str,
    *,
    description: str,
    pattern: str | None = None,
    examples: tuple[str, ...] = (),
    replace: bool = False,
) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering a model factory under ``name``.

    Example:
        >>> @register_model("tiny-mlp", description="one hidden layer of 32 units")
        ... def tiny_mlp(*, in_channels, num_classes, image_size):
        ...     return nn.Sequential(nn.Flatten(),
        ...                          nn.Linear(in_channels * image_size**2, 32), nn.ReLU(),
        ...                          nn.Linear(32, num_classes))

    Args:
        name: The name users pass to :func:`build_model` (for a pattern entry, a readable
            template such as ``"wrn-<depth>-<width>"``).
        description: A short one-line description.
        pattern: Optional regular expression with named groups of digits; any name that
            fully matches it builds this model, with the groups passed as ``int`` kwargs.
        examples: Concrete names matching ``pattern`` to list alongside the template.
        replace: Replace an existing entry of the same name instead of raising.

    Returns:
        A decorator that records the factory and returns it unchanged.

    Raises:
        ConfigError: If ``name`` is empty or already registered (and ``replace`` is false),
            or an example does not match ``pattern``.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"model name must be a non-empty string, got {name!r}")
    compiled = re.compile(pattern) if pattern is not None else None
    for example in examples:
        if compiled is None or not compiled.fullmatch(example):
            raise ConfigError(f"example '{example}' does not match the pattern of model '{name}'")

    def decorator(factory: ModelFactory) -> ModelFactory:
        if not callable(factory):
            raise ConfigError(f"model factory for '{name}' must be callable, got {factory!r}")
        spec = ModelSpec(
            name=name,
            factory=factory,
            description=" ".join(description.split()),
            pattern=compiled,
            examples=tuple(examples),
        )
        _REGISTRY.register(name, spec, replace=replace)
        return factory

    return decorator


def list_models() -> list[str]:
    """Return the sorted names of all registered models (pattern templates and their examples
    included, e.g. ``"wrn-<depth>-<width>"`` and ``"wrn-28-10"``)."""
    names: set[str] = set()
    for spec in _REGISTRY.values():
        names.add(spec.name)
        names.update(spec.examples)
    return sorted(names)


def model_specs() -> list[ModelSpec]:
    """Return all registry entries sorted by name (for listings with descriptions)."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def _resolve(name: str) -> tuple[ModelSpec, dict[str, int]]:
    """Find the entry for ``name`` and the keyword arguments encoded in it."""
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string, got {name!r}")
    candidates = [name, name.strip().lower()]
    for candidate in candidates:
        spec = _REGISTRY.get(candidate)
        if spec is not None:
            if spec.pattern is not None and not spec.pattern.fullmatch(candidate):
                example = spec.examples[0] if spec.examples else "a concrete name"
                raise ConfigError(
                    f"'{spec.name}' is a name pattern; fill in the numbers, e.g. {example}"
                )
            return spec, _pattern_kwargs(spec, candidate)
    for candidate in candidates:
        for spec in _REGISTRY.values():
            if spec.pattern is not None and spec.pattern.fullmatch(candidate):
                return spec, _pattern_kwargs(spec, candidate)
    raise unknown_name("model", name, list_models())


def _pattern_kwargs(spec: ModelSpec, name: str) -> dict[str, int]:
    if spec.pattern is None:
        return {}
    match = spec.pattern.fullmatch(name)
    assert match is not None
    return {key: int(value) for key, value in match.groupdict().items() if value is not None}


def check_model_options(name: str, options: dict[str, Any]) -> None:
    """Raise ConfigError now if ``build_model(name, ..., **options)`` would reject an option."""
    spec, fixed_kwargs = _resolve(name)
    _check_options(spec, name, options, set(fixed_kwargs))


def get_model_spec(name: str) -> ModelSpec:
    """Return the registry entry that ``name`` resolves to (pattern names included).

    Raises:
        ConfigError: If no entry matches; the message suggests the closest known name.
    """
    return _resolve(name)[0]


def _check_options(spec: ModelSpec, name: str, kwargs: dict[str, Any], fixed: set[str]) -> None:
    """Reject keyword options the factory would not accept, with a helpful message."""
    try:
        params = inspect.signature(spec.factory).parameters
    except (TypeError, ValueError):  # builtins or C callables: let the call itself check
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = sorted(set(params) - set(_SHAPE_ARGS) - fixed)
    for key in kwargs:
        if key in fixed:
            raise ConfigError(
                f"option '{key}' of model '{name}' is set by its name; remove the option"
            )
        if key not in params or key in _SHAPE_ARGS:
            known = ", ".join(accepted) if accepted else "none"
            raise ConfigError(f"model '{name}' has no option '{key}'; accepted options: {known}")


def _shape_for(spec: ModelSpec, name: str, given: dict[str, int]) -> dict[str, int]:
    """The shape arguments ``spec.factory`` names, taken from ``given``.

    Raises:
        ConfigError: The factory needs a shape argument the dataset did not provide (e.g. a
            language model on an image dataset).
    """
    try:
        params = inspect.signature(spec.factory).parameters
    except (TypeError, ValueError):  # builtins or C callables: pass everything
        return dict(given)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(given)
    wanted = [k for k in SHAPE_ARGS if k in params]
    missing = [k for k in wanted if k not in given and params[k].default is inspect.Parameter.empty]
    if missing:
        if "vocab_size" in missing or "block_size" in missing:
            fix = "it is a language model: train it on a text dataset (e.g. --dataset text --data-file FILE)"
        elif any(k in missing for k in _IMAGE_ARGS):
            fix = "it is an image model: train it on an image dataset"
        else:
            fix = "pass them to build_model"
        raise ConfigError(
            f"model '{name}' needs {', '.join(missing)}, which the dataset does not provide; {fix}"
        )
    return {k: given[k] for k in wanted if k in given}


def build_model(
    name: str,
    *,
    in_channels: int | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    vocab_size: int | None = None,
    block_size: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model for a dataset's shape.

    The shape arguments come from the dataset (``build_model(name,
    **splits.model_shape(), **options)``); the factory receives those its signature names.

    Args:
        name: A registered name (see :func:`list_models`), e.g. ``"resnet-18"`` or
            ``"wrn-28-10"``; matched case-insensitively.
        in_channels: Channels of the input images (1 for MNIST, 3 for CIFAR).
        num_classes: Number of output logits.
        image_size: Side length of the (square) input images.
        vocab_size: Number of tokens of a text dataset.
        block_size: Context length (tokens per sequence) of a text dataset.
        **kwargs: Model-specific options, e.g. ``dropout`` for WRNs or
            ``zero_init_residual`` for ResNets.

    Returns:
        A freshly initialised ``nn.Module`` (on the CPU, in training mode); an image model
        maps ``(N, in_channels, image_size, image_size)`` float tensors to
        ``(N, num_classes)``, a language model ``(N, T)`` token ids to ``(N, T, vocab_size)``.

    Raises:
        ConfigError: For an unknown name (with a "did you mean" hint), non-positive sizes,
            a shape argument the model needs but was not given, an image too small for the
            architecture, or an unknown/invalid option.
    """
    spec, fixed_kwargs = _resolve(name)
    values = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size,
              "vocab_size": vocab_size, "block_size": block_size}
    given = {k: check_int(v, k) for k, v in values.items() if v is not None}
    shape = _shape_for(spec, name, given)
    _check_options(spec, name, kwargs, set(fixed_kwargs))
    model = spec.factory(**shape, **fixed_kwargs, **kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"factory of model '{spec.name}' returned {type(model).__name__}, not nn.Module"
        )
    logger.debug(
        "built model %s (%s) with %d parameters",
        name,
        ", ".join(f"{k}={v}" for k, v in {**shape, **fixed_kwargs, **kwargs}.items()),
        sum(p.numel() for p in model.parameters()),
    )
    return model

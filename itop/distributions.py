"""Density distributions: how a global density is split across layers.

Each distribution is a pure function ``(shapes, density, fixed) -> {layer: density}``:

* ``shapes`` maps layer name to weight shape, in model order;
* ``density`` is the global fraction of weights kept, over all the layers in ``shapes``;
* ``fixed`` maps some layers to a density chosen by the user (per-layer overrides, layers kept
  dense); they count toward the global budget and the other layers absorb the rest.

:func:`allocate` then turns densities into exact integer counts whose sum is the global target,
so a layer never depends on Bernoulli sampling.

Uniform, ER and ERK share one solver: each free layer ``l`` gets density ``eps * r_l`` for a
layer-specific raw scale ``r_l`` and a common ``eps`` chosen so the global count is met; a layer
whose density would pass 1 is made dense and ``eps`` is solved again for the others.

* uniform: ``r_l = 1`` (every free layer gets the same density);
* ER (Mocanu et al. 2018, SET): ``r_l = (n_in + n_out) / (n_in * n_out)``;
* ERK (Evci et al. 2020, RigL): ``r_l = sum(shape) / prod(shape)`` including the kernel
  dimensions, optionally raised to ``power_scale``.

A weight that packs several equal matrices (an attention layer's Q/K/V projection of shape
``(3E, E)``) is given as a :class:`BlockShape`; ER and ERK score one of its blocks, so a packed
projection gets the density three separate ``(E, E)`` projections would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from .errors import ConfigError
from .registry import Registry

__all__ = [
    "DISTRIBUTIONS",
    "BlockShape",
    "Distribution",
    "allocate",
    "custom",
    "erdos_renyi",
    "erdos_renyi_kernel",
    "get_distribution",
    "uniform",
]

Shape = Sequence[int]
Distribution = Callable[..., dict[str, float]]


class BlockShape(tuple):
    """A weight shape made of ``blocks`` equal matrices stacked along ``axis``.

    It is the plain shape tuple (it compares, indexes and multiplies like one), plus the
    packing: ``BlockShape((3 * E, E), blocks=3)`` is MHA's ``in_proj_weight``, Q, K and V
    stacked along dim 0. The raw scales of ER and ERK are computed on one block,
    :attr:`block`, while the layer's size stays the whole tensor.
    """

    def __new__(cls, shape: Shape, blocks: int = 1, axis: int = 0) -> BlockShape:
        self = super().__new__(cls, tuple(int(s) for s in shape))
        if not isinstance(blocks, int) or blocks < 1 or not -len(self) <= axis < len(self):
            raise ConfigError(f"invalid packing of shape {tuple(self)}: blocks={blocks}, axis={axis}")
        if self[axis] % blocks:
            raise ConfigError(
                f"shape {tuple(self)} cannot hold {blocks} equal blocks along dim {axis}"
            )
        self.blocks = blocks
        self.axis = axis % len(self)
        return self

    @property
    def block(self) -> tuple[int, ...]:
        """The shape of one block."""
        dims = list(self)
        dims[self.axis] //= self.blocks
        return tuple(dims)

    def __repr__(self) -> str:
        return f"BlockShape({tuple(self)}, blocks={self.blocks}, axis={self.axis})"


def _block(shape: Shape) -> tuple[int, ...]:
    """The dims ER/ERK score: one block of a :class:`BlockShape`, else the shape itself."""
    return shape.block if isinstance(shape, BlockShape) else tuple(int(s) for s in shape)


def _numel(shape: Shape) -> int:
    return math.prod(int(s) for s in shape)


def _check(shapes: Mapping[str, Shape], density: float, fixed: Mapping[str, float]) -> None:
    if not shapes:
        raise ConfigError("no layers to distribute density over")
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"global density must be in (0, 1]; got {density}")
    for name, d in fixed.items():
        if name not in shapes:
            raise ConfigError(f"fixed density given for unknown layer '{name}'")
        if not 0.0 < d <= 1.0:
            raise ConfigError(f"density of layer '{name}' must be in (0, 1]; got {d}")


def _solve(
    shapes: Mapping[str, Shape],
    density: float,
    fixed: Mapping[str, float] | None,
    raw: Mapping[str, float],
) -> dict[str, float]:
    fixed = dict(fixed or {})
    _check(shapes, density, fixed)
    sizes = {n: _numel(s) for n, s in shapes.items()}
    total = sum(sizes.values())
    budget = density * total - sum(fixed[n] * sizes[n] for n in fixed)
    free = [n for n in shapes if n not in fixed]
    tol = 1e-9 * total
    if budget < -tol:
        held = sum(fixed[n] * sizes[n] for n in fixed) / total
        raise ConfigError(
            f"global density {density:.4g} (sparsity {1 - density:.4g}) cannot be reached: the "
            f"layers with fixed density ({', '.join(fixed)}) already hold {held:.4g} of the weights; "
            "lower the sparsity, or let those layers be sparse"
        )
    if not free:
        if abs(budget) > max(tol, 0.5):
            raise ConfigError(
                f"global density {density:.4g} cannot be reached: every layer has a fixed density; "
                "remove a per-layer override or change the sparsity"
            )
        return {n: fixed[n] for n in shapes}
    dense: set[str] = set()
    while True:
        rest = [n for n in free if n not in dense]
        remaining = budget - sum(sizes[n] for n in dense)
        if not rest:
            if remaining > tol:
                raise ConfigError(
                    f"global density {density:.4g} cannot be reached: even with every free layer "
                    "dense the fixed per-layer densities keep it lower; raise those densities "
                    "or lower the global density"
                )
            break
        eps = remaining / sum(raw[n] * sizes[n] for n in rest)
        over = {n for n in rest if eps * raw[n] > 1.0}
        if not over:
            break
        dense |= over
    out: dict[str, float] = {}
    for n in shapes:
        if n in fixed:
            out[n] = fixed[n]
        elif n in dense:
            out[n] = 1.0
        else:
            out[n] = eps * raw[n]
    return out


def uniform(
    shapes: Mapping[str, Shape], density: float, fixed: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Same density for every free layer, chosen so the global density is met.

    Without fixed layers every layer simply gets ``density``.
    """
    return _solve(shapes, density, fixed, {n: 1.0 for n in shapes})


def erdos_renyi(
    shapes: Mapping[str, Shape], density: float, fixed: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Erdős–Rényi: density proportional to ``(n_in + n_out) / (n_in * n_out)``.

    Mocanu et al., "Scalable training of artificial neural networks with adaptive sparse
    connectivity inspired by network science", Nature Communications 2018 (SET). For
    convolutions only the channel dimensions count (use ERK to include the kernel).
    """
    raw = {}
    for n, shape in shapes.items():
        s = _block(shape)
        n_out, n_in = int(s[0]), int(s[1]) if len(s) > 1 else 1
        raw[n] = (n_in + n_out) / (n_in * n_out)
    return _solve(shapes, density, fixed, raw)


def erdos_renyi_kernel(
    shapes: Mapping[str, Shape],
    density: float,
    fixed: Mapping[str, float] | None = None,
    power_scale: float = 1.0,
) -> dict[str, float]:
    """Erdős–Rényi-Kernel: density proportional to ``(sum(shape) / prod(shape)) ** power_scale``.

    Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020 (RigL), the
    distribution the ITOP paper uses. Small layers get denser, large ones sparser; a layer
    whose density would pass 1 becomes dense and the others are rescaled.

    Args:
        shapes: Layer name to weight shape.
        density: Global fraction of weights kept.
        fixed: Layers with a user-chosen density.
        power_scale: Exponent on the raw scale; 0 gives uniform, 1 is RigL's ERK.
    """
    blocks = {n: _block(s) for n, s in shapes.items()}
    raw = {n: (sum(b) / _numel(b)) ** power_scale for n, b in blocks.items()}
    return _solve(shapes, density, fixed, raw)


def custom(
    shapes: Mapping[str, Shape],
    density: float | None = None,
    fixed: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """A user-given density for every layer (``fixed`` must name them all).

    ``density``, when given, must match the resulting global density within one weight.
    """
    fixed = dict(fixed or {})
    missing = [n for n in shapes if n not in fixed]
    if missing:
        raise ConfigError(f"custom distribution needs a density for every layer; missing: {missing}")
    _check(shapes, density if density is not None else 1.0, fixed)
    out = {n: fixed[n] for n in shapes}
    if density is not None:
        total = sum(_numel(s) for s in shapes.values())
        got = sum(out[n] * _numel(s) for n, s in shapes.items())
        if abs(got - density * total) > 1.0:
            raise ConfigError(
                f"custom layer densities give global density {got / total:.4g}, "
                f"not the requested {density:.4g}; adjust the per-layer map or the sparsity"
            )
    return out


DISTRIBUTIONS: Registry[Distribution] = Registry("distribution")
DISTRIBUTIONS.register("uniform", uniform)
DISTRIBUTIONS.register("er", erdos_renyi)
DISTRIBUTIONS.register("erk", erdos_renyi_kernel)
DISTRIBUTIONS.register("custom", custom)


def get_distribution(name: str | Distribution) -> Distribution:
    """Look up a distribution by name, or pass a callable through."""
    if callable(name):
        return name
    return DISTRIBUTIONS.lookup(name)


def allocate(
    shapes: Mapping[str, Shape],
    densities: Mapping[str, float],
    total: int | None = None,
    fixed: Sequence[str] = (),
) -> dict[str, int]:
    """Turn per-layer densities into exact integer counts of active weights.

    Counts are ``floor(density * numel)`` plus one for the layers with the largest remainders,
    until the sum equals ``total`` (by default the rounded sum of ``density * numel``). Layers
    in ``fixed`` are rounded on their own and never adjusted. Every layer keeps at least one
    active weight; when that makes the sum exceed ``total``, the layers with the smallest
    remainders give weights back. The sum is exact unless ``total`` is below the number of
    layers.

    Args:
        shapes: Layer name to weight shape.
        densities: Layer name to density in (0, 1].
        total: Exact global number of active weights wanted.
        fixed: Layers whose count is not adjusted.

    Returns:
        Layer name to number of active weights.
    """
    sizes = {n: _numel(s) for n, s in shapes.items()}
    exact = {n: densities[n] * sizes[n] for n in shapes}
    if total is None:
        total = round(sum(exact.values()))
    counts = {n: min(sizes[n], max(1, math.floor(exact[n] + 1e-9))) for n in shapes}
    for n in fixed:
        counts[n] = min(sizes[n], max(1, round(exact[n])))
    free = [n for n in shapes if n not in fixed]
    frac = {n: exact[n] - math.floor(exact[n] + 1e-9) for n in free}
    short = total - sum(counts.values())
    # Largest remainders gain a weight first; smallest remainders give one up first.
    step, order = (1, sorted(free, key=lambda n: (-frac[n], n))) if short > 0 else (
        -1, sorted(free, key=lambda n: (frac[n], n)))
    while short != 0:
        movable = [n for n in order if 1 <= counts[n] + step <= sizes[n]]
        if not movable:
            break
        for n in movable:
            if short == 0:
                break
            counts[n] += step
            short -= step
    return counts

"""Pruning at initialisation: SNIP, GraSP and SynFlow masks for a freshly built model.

Each criterion scores every sparsified weight (see :class:`~itop.targets.TargetSelector`) and
:func:`global_topk` keeps the highest scores over all layers at once, so the per-layer densities
come out of the criterion instead of a fixed distribution. The resulting masks are plain
``{parameter name: bool tensor}`` dicts, ready for ``Sparsifier(..., masks=masks)``::

    masks = prune_at_init("snip", model, density=0.1, batches=[next(iter(train_loader))])
    sparsifier = Sparsifier(model, optimizer, sparsity=0.9, masks=masks)

Every score returned here follows one convention: **higher means keep**. For SNIP and SynFlow
that is the criterion of the paper as written; for GraSP, whose paper removes the weights with
the *highest* score, :func:`grasp_scores` returns the negated GraSP score (see there).

None of the functions change the model: weights, buffers (BatchNorm running statistics),
train/eval modes, ``requires_grad`` flags and ``.grad`` fields are as they were on return.
They score the unwrapped model (``DistributedDataParallel`` and ``torch.compile`` wrappers are
looked through). Under data parallelism each rank scores its own batches; the
:class:`~itop.Sparsifier` broadcasts rank 0's masks, so the ranks still agree.
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import reduce
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .errors import ConfigError, DivergenceError, unknown_name
from .registry import Registry
from .targets import Target, TargetSelector, unwrap_model

__all__ = [
    "PRUNE_AT_INIT",
    "global_topk",
    "grasp_scores",
    "prune_at_init",
    "snip_scores",
    "synflow_masks",
]

logger = logging.getLogger(__name__)

LossFn = Callable[[Any, Any], Tensor]
Batch = tuple[Any, Any]

SYNFLOW_SCHEDULES = ("exponential", "linear")


# --------------------------------------------------------------------------------------------
# Selecting the kept weights


def global_topk(scores: Mapping[str, Tensor], n_keep: int) -> dict[str, Tensor]:
    """Keep the ``n_keep`` highest scores over all layers together.

    Exactly ``n_keep`` entries are kept. Ties at the threshold are broken deterministically:
    the entry that comes first in ``scores``' order (layer order, then row-major position in
    the layer) wins. Scores of ``-inf`` are allowed (they are kept last).

    Args:
        scores: Per-layer scores, higher = more important; any shapes and devices.
        n_keep: Number of entries to keep, ``1 <= n_keep <= total``.

    Returns:
        Bool masks with the shape and device of each score tensor, True = kept.

    Raises:
        ConfigError: ``scores`` is empty or ``n_keep`` is out of range.
        DivergenceError: A score is NaN.
    """
    if not scores:
        raise ConfigError("global_topk got no scores: pass a non-empty {name: tensor} dict")
    total = sum(s.numel() for s in scores.values())
    if isinstance(n_keep, bool) or not isinstance(n_keep, int) or not 1 <= n_keep <= total:
        raise ConfigError(
            f"n_keep must be an integer in [1, {total}] (the number of scored weights); "
            f"got {n_keep!r}"
        )
    first = next(iter(scores.values()))
    dtype = reduce(torch.promote_types, (s.dtype for s in scores.values()))
    if dtype == torch.bool:
        dtype = torch.int32
    with torch.no_grad():
        flat = torch.cat([s.detach().reshape(-1).to(first.device, dtype) for s in scores.values()])
        if flat.is_floating_point() and bool(torch.isnan(flat).any()):
            bad = [n for n, s in scores.items() if bool(torch.isnan(s).any())]
            raise DivergenceError(
                f"pruning scores of {', '.join(bad)} contain NaN: the loss or gradients are not "
                "finite; check the inputs, the loss and the initialisation"
            )
        if n_keep == total:
            keep = torch.ones_like(flat, dtype=torch.bool)
        else:
            # The n_keep-th largest value; everything above it is kept, and as many entries
            # equal to it as are still needed, first ones first.
            threshold = torch.kthvalue(flat, total - n_keep + 1).values
            above = flat > threshold
            need = n_keep - int(above.sum())
            tied = flat == threshold
            keep = above | (tied & (torch.cumsum(tied, 0) <= need))
        masks: dict[str, Tensor] = {}
        start = 0
        for name, s in scores.items():
            masks[name] = keep[start : start + s.numel()].view(s.shape).to(s.device)
            start += s.numel()
    return masks


def _n_keep(density: float, total: int) -> int:
    n = round(density * total)
    if n < 1:
        raise ConfigError(
            f"density {density} keeps no weight of {total}; use a density of at least "
            f"{1 / total:.3g}"
        )
    return n


def _check_density(density: Any) -> float:
    if isinstance(density, bool) or not isinstance(density, numbers.Real):
        raise ConfigError(f"density must be a number in (0, 1]; got {density!r}")
    if not 0.0 < float(density) <= 1.0:
        raise ConfigError(
            f"density must be in (0, 1] (the fraction of weights kept, 1 - sparsity); got {density}"
        )
    return float(density)


# --------------------------------------------------------------------------------------------
# Shared plumbing


def _resolve(model: nn.Module, targets: Sequence[Target] | None) -> tuple[nn.Module, list[Target]]:
    base = unwrap_model(model)
    targets = list(TargetSelector().select(base) if targets is None else targets)
    if not targets:
        raise ConfigError("no weights to score: pass targets=TargetSelector().select(model)")
    return base, targets


def _device(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    if first is None:
        first = next(iter(model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def _to(obj: Any, device: torch.device) -> Any:
    """Move the tensors of a (nested) batch to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_to(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def _materialise(batches: Iterable[Batch] | None, method: str, device: torch.device) -> list[Batch]:
    if batches is None:
        raise ConfigError(_needs_batches(method))
    out = []
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ConfigError(
                f"{method} batches must be (inputs, targets) pairs, e.g. from a DataLoader; "
                f"got a {type(batch).__name__}"
            )
        out.append((_to(batch[0], device), _to(batch[1], device)))
    if not out:
        raise ConfigError(_needs_batches(method))
    return out


def _needs_batches(method: str) -> str:
    return (
        f"{method} needs training batches: pass batches=[(inputs, targets), ...], e.g. a few "
        "batches of the training loader"
    )


@contextmanager
def _preserved(model: nn.Module, targets: Sequence[Target], train: bool) -> Iterator[None]:
    """Run with the model in train/eval mode and the targets requiring grad, then restore the
    modes, the ``requires_grad`` flags and every buffer (BatchNorm running statistics)."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    flags = [(t.param, t.param.requires_grad) for t in targets]
    try:
        model.train(train)
        for t in targets:
            t.param.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def _loss(model: nn.Module, batch: Batch, loss_fn: LossFn, temperature: float) -> Tensor:
    x, y = batch
    out = model(x)
    if temperature != 1.0:
        out = out / temperature
    loss = loss_fn(out, y)
    if loss.dim() != 0:
        raise ConfigError(
            f"loss_fn must return a scalar; got shape {tuple(loss.shape)} (use reduction='mean')"
        )
    return loss


def _grads(loss: Tensor, params: list[Tensor], create_graph: bool = False) -> list[Tensor]:
    if not loss.requires_grad:
        return [torch.zeros_like(p) for p in params]
    gs = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs, strict=True)]


def _summed_grad(
    model: nn.Module,
    batches: list[Batch],
    params: list[Tensor],
    loss_fn: LossFn,
    temperature: float,
) -> list[Tensor]:
    total = [torch.zeros_like(p) for p in params]
    for batch in batches:
        for acc, g in zip(
            total, _grads(_loss(model, batch, loss_fn, temperature), params), strict=True
        ):
            acc.add_(g)
    return total


def _loss_fn(loss_fn: LossFn | None) -> LossFn:
    return nn.functional.cross_entropy if loss_fn is None else loss_fn


# --------------------------------------------------------------------------------------------
# SNIP


def snip_scores(
    model: nn.Module,
    batches: Iterable[Batch],
    targets: Sequence[Target] | None = None,
    loss_fn: LossFn | None = None,
) -> dict[str, Tensor]:
    """SNIP connection sensitivity ``|g ⊙ w|`` of every sparsified weight.

    Lee, Ajanthan and Torr, 2019, "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity" (ICLR). ``g`` is the gradient of the loss summed over ``batches`` (with one
    batch this is the paper's criterion; several batches give a lower-variance estimate of the
    same gradient). The paper's normalisation by the sum of all scores does not change the
    ranking and is left out. Higher = keep.

    Args:
        model: The model at initialisation (evaluated in train mode, left unchanged).
        batches: Iterable of ``(inputs, targets)`` pairs, moved to the model's device.
        targets: Weights to score; default ``TargetSelector().select(model)``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``; default cross-entropy.

    Returns:
        ``{target name: score tensor of the weight's shape}``.
    """
    base, targets = _resolve(model, targets)
    data = _materialise(batches, "SNIP", _device(base))
    params = [t.param for t in targets]
    with _preserved(base, targets, train=True):
        grads = _summed_grad(base, data, params, _loss_fn(loss_fn), 1.0)
    with torch.no_grad():
        return {t.name: (g * t.param).abs() for t, g in zip(targets, grads, strict=True)}


# --------------------------------------------------------------------------------------------
# GraSP


def _twice_differentiable_attention() -> AbstractContextManager:
    """Scaled-dot-product attention on the math kernel (composed of ordinary ops, so it has
    second derivatives), where torch lets one choose the kernel."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3 computes CPU attention with the math kernel anyway
        return nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def grasp_scores(
    model: nn.Module,
    batches: Iterable[Batch],
    targets: Sequence[Target] | None = None,
    loss_fn: LossFn | None = None,
    temperature: float = 200.0,
) -> dict[str, Tensor]:
    """GraSP keep-scores ``w ⊙ (H g)``: the **negated** GraSP score, so higher = keep.

    Wang, Zhang and Grosse, 2020, "Picking Winning Tickets Before Training by Preserving
    Gradient Flow" (ICLR). The paper scores ``S(-w) = -w ⊙ H g`` and *removes* the weights with
    the highest ``S`` (removing them reduces the gradient norm the least, or increases it).
    This function returns ``-S = w ⊙ H g`` so that, as for every criterion in this module,
    :func:`global_topk` of the returned scores gives the GraSP mask.

    ``g`` is the gradient of the loss summed over ``batches`` and ``H g`` the Hessian-vector
    product of the same summed loss, computed by double backpropagation (the gradient of
    ``g_detached · ∇L``). Both are taken with respect to the scored weights only. Following the
    paper, the model's outputs are divided by ``temperature`` before the loss (``1`` disables).

    Args:
        model: The model at initialisation (evaluated in train mode, left unchanged).
        batches: Iterable of ``(inputs, targets)`` pairs, moved to the model's device.
        targets: Weights to score; default ``TargetSelector().select(model)``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``; default cross-entropy.
        temperature: Divisor of the outputs (logits) before the loss.

    Returns:
        ``{target name: w ⊙ Hg}`` (higher = keep; the paper's score is its negation).
    """
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not (math.isfinite(temperature) and temperature > 0)
    ):
        raise ConfigError(f"GraSP temperature must be a positive number; got {temperature!r}")
    base, targets = _resolve(model, targets)
    data = _materialise(batches, "GraSP", _device(base))
    params = [t.param for t in targets]
    fn = _loss_fn(loss_fn)
    temperature = float(temperature)
    # The Hessian-vector product differentiates twice; fused attention kernels (flash attention
    # on CPU) have no second derivative, so attention runs on the math kernel here.
    with _preserved(base, targets, train=True), _twice_differentiable_attention():
        g = _summed_grad(base, data, params, fn, temperature)
        hg = [torch.zeros_like(p) for p in params]
        for batch in data:
            grads = _grads(_loss(base, batch, fn, temperature), params, create_graph=True)
            z = sum((gi * vi).sum() for gi, vi in zip(grads, g, strict=True))
            for acc, h in zip(hg, _grads(z, params), strict=True):
                acc.add_(h)
    with torch.no_grad():
        return {t.name: t.param * h for t, h in zip(targets, hg, strict=True)}


# --------------------------------------------------------------------------------------------
# SynFlow


def _synflow_densities(density: float, rounds: int, schedule: str) -> list[float]:
    if schedule == "exponential":
        return [density ** (r / rounds) for r in range(1, rounds + 1)]
    return [1.0 - (1.0 - density) * r / rounds for r in range(1, rounds + 1)]


def _output_sum(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out.sum()
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        parts = [_output_sum(o) for o in out if isinstance(o, (Tensor, Mapping, list, tuple))]
        if parts:
            return torch.stack(parts).sum()
    raise ConfigError(
        f"SynFlow needs a model returning tensors; got {type(out).__name__}: score it with "
        "targets of a submodule that does"
    )


def synflow_masks(
    model: nn.Module,
    input_shape: Sequence[int],
    density: float,
    rounds: int = 100,
    schedule: str = "exponential",
    targets: Sequence[Target] | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    input_dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """Iterative SynFlow masks: data-free pruning that avoids layer collapse.

    Tanaka, Kunin, Yamins and Ganguli, 2020, "Pruning neural networks without any data by
    iteratively conserving synaptic flow" (NeurIPS). Every parameter and floating buffer is
    replaced by its absolute value (on copies: the model itself is never written), the model
    is run in eval mode on an all-ones input, and ``R = sum(outputs)``. The score of a weight is
    ``|θ ⊙ ∂R/∂θ|``. Over ``rounds`` rounds the kept fraction shrinks to ``density`` —
    ``density ** (r / rounds)`` (exponential, the paper's choice) or linearly — and each round
    rescores with the previous round's mask applied, which is what avoids layer collapse.

    The computation runs in ``dtype`` (float64 by default: ``R`` is a product over all layers
    and overflows float32 in deep networks). Masks only shrink: a pruned weight is never
    regrown. The last round keeps exactly ``round(density * total)`` weights.

    Args:
        model: The model at initialisation (unchanged on return, BatchNorm statistics too).
        input_shape: Shape of one input *without* the batch dimension, e.g. ``(3, 32, 32)``.
        density: Fraction of the scored weights kept, in (0, 1].
        rounds: Number of pruning rounds (the paper uses 100).
        schedule: ``"exponential"`` or ``"linear"`` density schedule over the rounds.
        targets: Weights to prune; default ``TargetSelector().select(model)``.
        dtype: Floating dtype of the computation.
        input_dtype: Dtype of the all-ones input (default ``dtype``); ``torch.long`` for a
            model that takes token ids (every position is then token 1).

    Returns:
        ``{target name: bool mask of the weight's shape}``, True = kept.
    """
    density = _check_density(density)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(
            f"SynFlow rounds must be a positive integer (the paper uses 100); got {rounds!r}"
        )
    if schedule not in SYNFLOW_SCHEDULES:
        raise unknown_name("SynFlow schedule", schedule, SYNFLOW_SCHEDULES)
    shape = _check_shape(input_shape)
    if not dtype.is_floating_point:
        raise ConfigError(
            f"SynFlow dtype must be a floating dtype such as torch.float64; got {dtype}"
        )
    base, targets = _resolve(model, targets)
    total = sum(t.param.numel() for t in targets)
    n_final = _n_keep(density, total)
    device = _device(base)

    names = {id(p): n for n, p in base.named_parameters()}
    missing = [t.name for t in targets if id(t.param) not in names]
    if missing:
        raise ConfigError(
            f"SynFlow targets {missing} are not parameters of the model; select them from it "
            "with TargetSelector().select(model)"
        )
    with torch.no_grad():
        params = {n: p.detach().abs().to(dtype) for n, p in base.named_parameters()}
        buffers = {
            n: (b.detach().abs().to(dtype) if b.is_floating_point() else b)
            for n, b in base.named_buffers()
        }
    weights = {t.name: params[names[id(t.param)]] for t in targets}
    masks = {t.name: torch.ones_like(t.param, dtype=torch.bool) for t in targets}
    ones = torch.ones((1, *shape), dtype=input_dtype or dtype, device=device)

    modes = [(m, m.training) for m in base.modules()]
    try:
        base.eval()
        for r, d in enumerate(_synflow_densities(density, rounds, schedule), start=1):
            n_keep = n_final if r == rounds else max(n_final, round(d * total))
            with torch.enable_grad():
                live = {
                    name: (weights[name] * masks[name]).requires_grad_(True) for name in weights
                }
                current = dict(params)
                for t in targets:
                    current[names[id(t.param)]] = live[t.name]
                R = _output_sum(functional_call(base, (current, buffers), (ones,)))
                order = [t.name for t in targets]
                grads = _grads(R, [live[n] for n in order])
            with torch.no_grad():
                scores = {
                    n: torch.where(masks[n], (live[n] * g).abs(), -math.inf)
                    for n, g in zip(order, grads, strict=True)
                }
            masks = global_topk(scores, n_keep)
            logger.debug("SynFlow round %d/%d: kept %d of %d weights", r, rounds, n_keep, total)
    finally:
        for m, mode in modes:
            m.training = mode
    return masks


def _check_shape(input_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(s < 1 for s in shape) or any(isinstance(s, bool) for s in input_shape):
        raise ConfigError(
            f"input_shape must be the shape of one input without the batch dimension, e.g. "
            f"(3, 32, 32); got {input_shape!r}"
        )
    return shape


# --------------------------------------------------------------------------------------------
# Dispatch


def _prune_snip(model, density, batches, input_shape, targets, loss_fn=None):
    scores = snip_scores(model, batches, targets, loss_fn=loss_fn)
    return global_topk(scores, _n_keep(density, sum(s.numel() for s in scores.values())))


def _prune_grasp(model, density, batches, input_shape, targets, loss_fn=None, temperature=200.0):
    scores = grasp_scores(model, batches, targets, loss_fn=loss_fn, temperature=temperature)
    return global_topk(scores, _n_keep(density, sum(s.numel() for s in scores.values())))


def _prune_synflow(
    model,
    density,
    batches,
    input_shape,
    targets,
    rounds=100,
    schedule="exponential",
    dtype=torch.float64,
    input_dtype=None,
):
    if input_shape is None:
        if batches is None:
            raise ConfigError(
                "SynFlow needs the input shape: pass input_shape=(C, H, W) of one input, "
                "without the batch dimension (or batches to read it from)"
            )
        x = next(iter(batches))[0]
        input_shape = tuple(x.shape[1:])
        if input_dtype is None and not x.is_floating_point():
            input_dtype = x.dtype  # token ids
    return synflow_masks(
        model, input_shape, density, rounds=rounds, schedule=schedule, targets=targets, dtype=dtype,
        input_dtype=input_dtype,
    )


PRUNE_AT_INIT: Registry[Callable[..., dict[str, Tensor]]] = Registry("pruning-at-init method")
PRUNE_AT_INIT.register("snip", _prune_snip)
PRUNE_AT_INIT.register("grasp", _prune_grasp)
PRUNE_AT_INIT.register("synflow", _prune_synflow)
"""Pruning-at-init methods by name: ``fn(model, density, batches, input_shape, targets, **kw)``."""

_DATA_METHODS = {"snip": "SNIP", "grasp": "GraSP"}


def prune_at_init(
    method: str,
    model: nn.Module,
    density: float,
    *,
    batches: Iterable[Batch] | None = None,
    input_shape: Sequence[int] | None = None,
    targets: Sequence[Target] | None = None,
    **kw: Any,
) -> dict[str, Tensor]:
    """Masks from a pruning-at-initialisation criterion, keeping ``round(density * total)``.

    Methods (see :data:`PRUNE_AT_INIT`):

    - ``"snip"``: :func:`snip_scores` (Lee et al. 2019); needs ``batches``; option ``loss_fn``.
    - ``"grasp"``: :func:`grasp_scores` (Wang et al. 2020); needs ``batches``; options
      ``loss_fn``, ``temperature``.
    - ``"synflow"``: :func:`synflow_masks` (Tanaka et al. 2020); data-free, needs
      ``input_shape`` (or ``batches`` to read it from); options ``rounds``, ``schedule``,
      ``dtype``.

    Args:
        method: Name of the criterion.
        model: The model at initialisation; left unchanged.
        density: Fraction of the sparsified weights kept, in (0, 1].
        batches: ``(inputs, targets)`` pairs for the data-driven criteria.
        input_shape: Shape of one input without the batch dimension, for SynFlow.
        targets: Weights to prune; default ``TargetSelector().select(model)``.
        **kw: Options of the criterion.

    Returns:
        ``{target name: bool mask}`` (True = kept), e.g. for ``Sparsifier(..., masks=...)``.

    Raises:
        ConfigError: Unknown method or option, density out of range, missing batches/shape.
    """
    fn = PRUNE_AT_INIT.lookup(method)
    density = _check_density(density)
    if method in _DATA_METHODS and batches is None:
        raise ConfigError(_needs_batches(_DATA_METHODS[method]))
    options = list(inspect.signature(fn).parameters)[5:]
    unknown = sorted(set(kw) - set(options))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for pruning-at-init method '{method}'; "
            f"valid options: {', '.join(options)}"
        )
    masks = fn(model, density, batches, input_shape, targets, **kw)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    logger.info(
        "%s pruning at init: kept %d of %d weights (density %.4g); per layer: %s",
        method,
        kept,
        total,
        kept / total,
        ", ".join(f"{n}={float(m.float().mean()):.3g}" for n, m in masks.items()),
    )
    return masks

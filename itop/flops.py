"""Floating-point operation (FLOP) counts of sparse inference and sparse training.

The accounting follows Evci, Gale, Menick, Castro & Elsen, "Rigging the Lottery: Making All
Tickets Winners", ICML 2020 (arXiv:1911.11134), appendix "FLOPs needed for training and
inference":

* A multiply-add counts as 2 FLOPs. The forward cost of a fully connected or convolutional
  layer whose weight has density ``d`` is ``d`` times its dense cost, so the sparse forward cost
  of a network is ``f_S = sum_l d_l * f_l`` (plus the small terms sparsity does not touch),
  against ``f_D = sum_l f_l`` for the dense network.
* One training step costs one forward pass (``f_S``) and a backward pass of twice that
  (``2 f_S``): one ``f_S`` for the gradient with respect to the activations and one for the
  gradient with respect to the active weights. A dense model therefore costs ``3 f_D``.
* A method that needs the *dense* weight gradient at a step (RigL at its topology-update steps,
  SNFS at every step for its dense momentum) pays ``f_D`` instead of ``f_S`` for the
  weight-gradient part of that step: ``2 f_S + f_D``. With updates every ``dT`` steps RigL
  averages ``(3 f_S dT + 2 f_S + f_D) / (dT + 1)`` per step, as in the paper.

The paper neglects normalisation, activations and the loss; here those small dense terms are
counted separately (:attr:`ModelFlops.other`) so that :attr:`ModelFlops.layers` reproduces the
paper's numbers exactly and a report can show both. In a transformer the products of two
activations (attention's ``Q K^T`` and ``A V``) do not shrink with weight sparsity either: they
are counted in ``other`` as kind ``"attention"``.

Every matrix product and convolution of the forward pass is seen at the dispatcher (with the
formulas of ``torch.utils.flop_counter``) and charged to the weight it reads, found by storage:
so functional uses count too, e.g. ``nn.MultiheadAttention``'s packed Q/K/V and output
projections, Hugging Face ``Conv1D``, and a tied LM head that reads the embedding matrix.

Typical use::

    profile = profile_model(model, (3, 32, 32))
    training = TrainingFlops(profile)
    policy = dense_gradient_policy(sparsifier)          # "never" | "update" | "always"
    ...  # after every optimizer step:
    training.add_steps(densities_of(sparsifier), samples_per_step=batch_size,
                       dense_gradient=needs_dense_gradient(policy, updated))
    summarize(profile, densities_of(sparsifier), training)
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from .errors import CheckpointError, ConfigError
from .targets import DEFAULT_RULES, unwrap_model

if TYPE_CHECKING:
    from .sparsifier import Sparsifier

__all__ = [
    "DENSE_GRADIENT_POLICIES",
    "ModelFlops",
    "TrainingFlops",
    "dense_gradient_policy",
    "densities_of",
    "inference_flops",
    "needs_dense_gradient",
    "profile_model",
    "summarize",
]

logger = logging.getLogger(__name__)

#: Valid values of a grow criterion's ``dense_gradient`` attribute.
DENSE_GRADIENT_POLICIES = ("never", "update", "always")

# Other operations, as FLOPs per output element (see ``profile_model``). Activations cost one
# operation per element; softmax-like ones an exponential, a sum and a division.
_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Threshold, nn.LogSigmoid, nn.GLU,
)
_SOFTMAX: tuple[type[nn.Module], ...] = (nn.Softmax, nn.LogSoftmax, nn.Softmin)
_SOFTMAX_COST = 3.0
# Batch normalisation at inference is a per-channel scale and shift (2 FLOPs per element).
# Layer, group and instance normalisation compute their statistics on every input: mean (1),
# variance (2), normalisation (2), plus 2 for an affine transform.
_BATCHNORM_COST = 2.0
_STAT_NORM_COST = 5.0
_AFFINE_COST = 2.0
_POOL_DIMS: dict[type[nn.Module], int] = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3,
    nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
}
_ADAPTIVE_POOLS: tuple[type[nn.Module], ...] = (
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_WEIGHTED: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)
_BIAS_MODULES = ("Conv1D",)  # Hugging Face Conv1D: one bias addition per output element


@dataclass
class ModelFlops:
    """Dense forward FLOPs of one sample, per sparsifiable layer and for everything else.

    Attributes:
        layers: Dense forward FLOPs of every weight that takes part in a matrix product or
            convolution (``nn.Linear``, ``nn.Conv*d`` including transposed, MHA projections,
            HF ``Conv1D``, an embedding read by a tied LM head), keyed by the name of the
            weight as ``model.named_parameters()`` spells it (e.g. ``"features.0.weight"``),
            so that it matches :meth:`Sparsifier.layer_stats` names. A multiply-add is 2
            FLOPs; a weight used several times in one forward pass is summed.
        other: FLOPs of the operations sparsity does not reduce (biases, normalisation,
            activations, pooling, products of two activations), per sample.
        other_by_kind: ``other`` broken down into ``"bias"``, ``"norm"``, ``"activation"``,
            ``"pool"`` and ``"attention"`` (matrix products with no weight operand, such as
            attention's ``Q K^T`` and ``A V``).
        input_shape: The per-sample input shape the model was profiled with.
    """

    layers: dict[str, float]
    other: float = 0.0
    other_by_kind: dict[str, float] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()

    @property
    def dense_forward(self) -> float:
        """``f_D``: the forward FLOPs of one sample through the dense model."""
        return float(sum(self.layers.values())) + self.other

    def forward(self, densities: Mapping[str, float] | Sparsifier) -> float:
        """``f_S``: the forward FLOPs of one sample with the given layer densities.

        Args:
            densities: Density (fraction of active weights, in ``[0, 1]``) of each sparse
                layer, keyed by weight name, or a :class:`Sparsifier` to read them from.
                Layers not named are dense (density 1); names the profile does not know
                (e.g. a layer the forward pass never called) add nothing.

        Returns:
            ``sum_l density_l * layers[l] + other``.

        Raises:
            ConfigError: If a density is outside ``[0, 1]``.
        """
        dens = _check_densities(densities)
        return float(sum(f * dens.get(name, 1.0) for name, f in self.layers.items())) + self.other


def _check_densities(densities: Mapping[str, float] | Sparsifier) -> dict[str, float]:
    if not isinstance(densities, Mapping):
        if hasattr(densities, "layer_stats"):
            return densities_of(densities)
        raise ConfigError(
            f"densities must be a mapping of weight name to density or a Sparsifier; "
            f"got {type(densities).__name__}"
        )
    out = {}
    for name, d in densities.items():
        d = float(d)
        if not 0.0 <= d <= 1.0:
            raise ConfigError(f"density of '{name}' must be in [0, 1]; got {d}")
        out[name] = d
    return out


def densities_of(sparsifier: Sparsifier) -> dict[str, float]:
    """Current density of every layer of a :class:`Sparsifier`, keyed by weight name.

    Args:
        sparsifier: The sparsifier whose :meth:`~Sparsifier.layer_stats` to read.

    Returns:
        ``{name: density}`` for every sparsified (or kept-dense) layer.
    """
    return {s.name: float(s.density) for s in sparsifier.layer_stats()}


# -- profiling ---------------------------------------------------------------------------------


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        for item in x:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def _attention_flops(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> float:
    """FLOPs of ``softmax(Q K^T) V`` without the softmax: ``2 L S E_k + 2 L S E_v`` per head."""
    *batch, length, e_k = query.shape
    source, e_v = key.shape[-2], value.shape[-1]
    heads = math.prod(batch)
    return 2.0 * heads * length * source * (e_k + e_v)


class _MatmulCounter(TorchDispatchMode):
    """Counts every matrix product and convolution at the dispatcher and charges it to the
    weight it reads.

    Formulas are ``torch.utils.flop_counter``'s (``mm``, ``addmm``, ``bmm``, ``baddbmm``,
    ``convolution``, ...), plus fused scaled-dot-product attention kernels (whose CPU variant
    the registry lacks). The weight of an operation is the parameter whose storage holds one of
    its operands (a transposed or sliced view included); failing that, the weight of the
    innermost Linear/Conv module running (a weight computed by a parametrization). Products
    with no weight are the functional ones, e.g. attention's ``Q K^T`` and ``A V``.
    """

    def __init__(self, params: dict[int, list[tuple[int, int, str]]], stack: list[str | None]) -> None:
        super().__init__()
        self.params = params
        self.stack = stack
        self.layers: dict[str, float] = {}
        self.functional = 0.0

    def _owner(self, args: tuple) -> str | None:
        for a in args:
            if not isinstance(a, torch.Tensor) or a.layout is not torch.strided:
                continue
            try:
                ptr = a.untyped_storage().data_ptr()
            except (RuntimeError, NotImplementedError):
                continue
            for start, end, name in self.params.get(ptr, ()):
                if start <= a.storage_offset() < end:
                    return name
        return self.stack[-1] if self.stack else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        name = getattr(packet, "__name__", "")
        formula = flop_registry.get(packet)
        if formula is not None and "backward" not in name:
            flops = float(formula(*args, **kwargs, out_val=out))
        elif "scaled_dot_product" in name and "backward" not in name and len(args) >= 3:
            flops = _attention_flops(args[0], args[1], args[2])
        else:
            return out
        owner = self._owner(args)
        if owner is None:
            self.functional += flops
        else:
            self.layers[owner] = self.layers.get(owner, 0.0) + flops
        return out


def _weighted_leaf(module: nn.Module) -> bool:
    """A layer whose only product is with its own ``weight`` (Linear, Conv, HF Conv1D), a
    parametrized one (``torch.nn.utils.parametrize``) included."""
    if any(name != "parametrizations" for name, _ in module.named_children()):
        return False
    for cls in type(module).__mro__:
        if DEFAULT_RULES.get(f"{cls.__module__}.{cls.__qualname__}") == ("weight",):
            return True
    return False


def _other_flops(module: nn.Module, inputs: tuple, output: torch.Tensor) -> tuple[str, float]:
    """(kind, FLOPs) of one call of a module sparsity does not reduce; kind "" for none."""
    n = output.numel()
    if isinstance(module, _WEIGHTED) or type(module).__name__ in _BIAS_MODULES:
        bias = getattr(module, "bias", None)
        return ("bias", float(n)) if bias is not None else ("", 0.0)
    if isinstance(module, nn.MultiheadAttention):
        return "bias", _mha_bias_flops(module, inputs)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "norm", _BATCHNORM_COST * n
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)):
        affine = getattr(module, "elementwise_affine", None)
        if affine is None:
            affine = getattr(module, "affine", False)
        return "norm", (_STAT_NORM_COST + (_AFFINE_COST if affine else 0.0)) * n
    if isinstance(module, _ACTIVATIONS):
        return "activation", float(n)
    if isinstance(module, _SOFTMAX):
        return "activation", _SOFTMAX_COST * n
    dims = _POOL_DIMS.get(type(module))
    if dims is not None:
        k = module.kernel_size
        window = math.prod(k) if isinstance(k, (tuple, list)) else k**dims
        return "pool", float(window * n)
    if isinstance(module, _ADAPTIVE_POOLS):
        x = _first_tensor(inputs)
        return "pool", float(x.numel()) if x is not None else 0.0
    return "", 0.0


def _mha_bias_flops(module: nn.MultiheadAttention, inputs: tuple) -> float:
    """Bias additions of one MHA call: Q on the query tokens, K and V on the source tokens,
    the output projection on the query tokens."""
    tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
    if not tensors:
        return 0.0
    e = module.embed_dim
    query = tensors[0].numel() // e
    source = tensors[1].numel() // (module.kdim or e) if len(tensors) > 1 else query
    flops = 0.0
    if module.in_proj_bias is not None:
        flops += (query + 2 * source) * e
    if module.out_proj.bias is not None:
        flops += query * e
    return flops


def profile_model(
    model: nn.Module,
    input_shape: tuple[int, ...] | list[int],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> ModelFlops:
    """Count the dense forward FLOPs of one sample, layer by layer.

    Runs one forward pass on a zero batch of shape ``(1, *input_shape)`` in evaluation mode,
    with forward hooks on every module and a dispatch mode that sees every matrix product;
    the hooks are removed and each module's training mode restored afterwards, even if the
    pass fails. Gradients are enabled during the pass (no backward runs) so that fused
    inference kernels, which would hide the products, are not taken. Wrappers
    (``DistributedDataParallel``, ``DataParallel``, ``torch.compile``) are stripped first so
    that names match the sparsifier's.

    Counted per weight (Evci et al., 2020, appendix on FLOPs; a multiply-add is 2 FLOPs):
    every matrix product and convolution that reads a parameter, with the formulas of
    ``torch.utils.flop_counter``: ``nn.Linear`` (``2 * in * out`` per token), ``nn.Conv*d``
    including transposed and grouped convolutions (``2 * out_elements * in_channels/groups *
    prod(kernel)``; for a transposed convolution the same count over input positions),
    ``nn.MultiheadAttention``'s Q/K/V and output projections, Hugging Face ``Conv1D``, and any
    parameter used functionally (``x @ self.weight``, a tied LM head reading the embedding).

    Counted in :attr:`ModelFlops.other` (dense whatever the sparsity; per output element
    unless noted): bias additions of those layers (1); batch normalisation (2, a folded scale
    and shift); layer/group/instance normalisation (5 for the statistics and normalisation,
    +2 when affine); element-wise activation modules (1; softmax-like 3); max/average pooling
    (kernel size); adaptive pooling (1 per input element); products of two activations
    (``"attention"``: ``Q K^T`` and ``A V``, as ``bmm``/``matmul`` or fused scaled-dot-product
    attention, ``2 L S E`` each). Element-wise operations called as functions rather than
    modules (``F.relu``, residual additions, the softmax inside attention, the loss) are not
    counted.

    Args:
        model: The network, possibly wrapped.
        input_shape: Shape of one input sample without the batch dimension, e.g.
            ``(3, 32, 32)``, or ``(block_size,)`` for a language model (with
            ``dtype=torch.long``: the zero input is token 0).
        dtype: Dtype of the zero input; defaults to that of the first floating-point
            parameter (else ``torch.get_default_dtype()``).
        device: Device of the zero input; defaults to that of the first parameter.

    Returns:
        The :class:`ModelFlops` of one sample.

    Raises:
        ConfigError: If ``input_shape`` is not a sequence of positive integers.
    """
    shape = tuple(input_shape)
    if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ConfigError(
            f"input_shape must be the per-sample shape as positive integers, e.g. (3, 32, 32); "
            f"got {input_shape!r}"
        )
    net = unwrap_model(model)
    params = list(net.parameters())
    if dtype is None:
        dtype = next((p.dtype for p in params if p.is_floating_point()), None)
        dtype = dtype or torch.get_default_dtype()
    if device is None:
        device = params[0].device if params else torch.device("cpu")

    param_names: dict[int, str] = {id(p): name for name, p in net.named_parameters()}
    storages: dict[int, list[tuple[int, int, str]]] = {}
    for name, p in net.named_parameters():
        if p.dim() >= 2 and p.layout is torch.strided:
            ptr = p.untyped_storage().data_ptr()
            storages.setdefault(ptr, []).append((p.storage_offset(), p.storage_offset() + p.numel(), name))
    other_by_kind: dict[str, float] = {}
    stack: list[str | None] = []

    def enter(module: nn.Module, module_name: str):
        key = None
        if _weighted_leaf(module):
            weight = getattr(module, "weight", None)
            key = param_names.get(id(weight), f"{module_name}.weight" if module_name else "weight")

        def fn(mod: nn.Module, inputs: tuple) -> None:
            stack.append(key)

        return fn

    def leave(mod: nn.Module, inputs: tuple, output: Any) -> None:
        if stack:
            stack.pop()
        out = _first_tensor(output)
        if out is None:
            return
        kind, flops = _other_flops(mod, inputs, out)
        if kind:
            other_by_kind[kind] = other_by_kind.get(kind, 0.0) + flops

    modes = {m: m.training for m in net.modules()}
    handles = []
    for name, m in net.named_modules():
        handles.append(m.register_forward_pre_hook(enter(m, name)))
        handles.append(m.register_forward_hook(leave))
    counter = _MatmulCounter(storages, stack)
    try:
        net.eval()
        with torch.enable_grad(), counter:
            net(torch.zeros((1, *shape), dtype=dtype, device=device))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training

    layers = counter.layers
    if counter.functional:
        other_by_kind["attention"] = other_by_kind.get("attention", 0.0) + counter.functional
    for name, m in net.named_modules():
        weight = getattr(m, "weight", None)
        if _weighted_leaf(m) and param_names.get(id(weight), f"{name}.weight") not in layers:
            logger.debug("flops: layer '%s' was not called in the forward pass", name)
    return ModelFlops(
        layers=layers,
        other=float(sum(other_by_kind.values())),
        other_by_kind=other_by_kind,
        input_shape=shape,
    )


# -- inference and training --------------------------------------------------------------------


def inference_flops(
    profile: ModelFlops, densities: Mapping[str, float] | Sparsifier
) -> tuple[float, float]:
    """Sparse inference FLOPs of one sample and their fraction of the dense model's.

    Args:
        profile: The model's :class:`ModelFlops`.
        densities: Layer densities (see :meth:`ModelFlops.forward`).

    Returns:
        ``(f_S, f_S / f_D)``; the fraction is NaN for a model with no counted FLOPs.
    """
    sparse = profile.forward(densities)
    dense = profile.dense_forward
    return sparse, (sparse / dense if dense > 0 else math.nan)


def dense_gradient_policy(criterion: Any) -> str:
    """When a grow criterion needs the dense weight gradient: ``"never"``, ``"update"`` or
    ``"always"``.

    Read from the criterion's ``dense_gradient`` class attribute: RigL's gradient growth needs
    the dense gradient at topology-update steps only (``"update"``); SNFS's momentum growth
    keeps a dense momentum and needs it at every step (``"always"``); random growth (SET)
    needs none (``"never"``, the default when the attribute is absent). Evci et al. (2020)
    charge such a step ``2 f_S + f_D`` instead of ``3 f_S``.

    Args:
        criterion: A grow criterion, its registered name (e.g. ``"gradient"``), a
            :class:`Sparsifier` (its ``grow`` criterion is used) or ``None`` (dense training,
            ``"never"``).

    Returns:
        One of :data:`DENSE_GRADIENT_POLICIES`.

    Raises:
        ConfigError: If the attribute holds another value, or the name is unknown.
    """
    if criterion is None:
        return "never"
    if isinstance(criterion, str):
        from .criteria import get_grow

        criterion = get_grow(criterion)
    from .criteria import Criterion

    grow = getattr(criterion, "grow", None)
    if not isinstance(criterion, Criterion) and isinstance(grow, Criterion):
        criterion = grow  # a Sparsifier
    policy = getattr(criterion, "dense_gradient", "never")
    if policy not in DENSE_GRADIENT_POLICIES:
        raise ConfigError(
            f"{type(criterion).__name__}.dense_gradient must be one of "
            f"{', '.join(DENSE_GRADIENT_POLICIES)}; got {policy!r}"
        )
    return policy


def needs_dense_gradient(policy: str, update_step: bool) -> bool:
    """Whether a step computes the dense weight gradient under a policy.

    Args:
        policy: ``"never"``, ``"update"`` or ``"always"`` (see :func:`dense_gradient_policy`).
        update_step: Whether the topology is updated at this step.

    Returns:
        True for ``"always"``, and for ``"update"`` at update steps.

    Raises:
        ConfigError: For an unknown policy.
    """
    if policy not in DENSE_GRADIENT_POLICIES:
        raise ConfigError(
            f"dense-gradient policy must be one of {', '.join(DENSE_GRADIENT_POLICIES)}; "
            f"got {policy!r}"
        )
    return policy == "always" or (policy == "update" and bool(update_step))


class TrainingFlops:
    """Accumulates training FLOPs step by step with the RigL paper's accounting.

    A step on one sample costs ``f_S`` (forward) + ``f_S`` (gradient w.r.t. activations) +
    ``f_S`` (gradient w.r.t. the active weights), or ``f_D`` for that last part when the step
    needs the dense weight gradient (Evci et al., 2020). The dense baseline for the same
    samples is ``3 f_D`` each. Densities are passed at every call, so a changing sparsity
    (e.g. gradual pruning) is charged as it changes.

    Args:
        profile: The model's :class:`ModelFlops`.

    Example:
        >>> training = TrainingFlops(profile_model(model, (1, 28, 28)))
        >>> training.add_steps({"0.weight": 0.1}, steps=100, samples_per_step=128)
        >>> training.relative  # fraction of the dense model's training FLOPs
    """

    def __init__(self, profile: ModelFlops) -> None:
        self.profile = profile
        self.total = 0.0
        self.dense_equivalent = 0.0
        self.steps = 0
        self.samples = 0
        self.dense_gradient_steps = 0

    def step_cost(
        self, densities: Mapping[str, float] | Sparsifier, dense_gradient: bool = False
    ) -> float:
        """FLOPs of one training step on one sample (see the class docstring)."""
        f_s = self.profile.forward(densities)
        return 2.0 * f_s + (self.profile.dense_forward if dense_gradient else f_s)

    def add_steps(
        self,
        densities: Mapping[str, float] | Sparsifier,
        steps: int = 1,
        *,
        samples_per_step: int,
        dense_gradient: bool = False,
    ) -> float:
        """Charge ``steps`` training steps of ``samples_per_step`` samples each.

        Args:
            densities: Layer densities during these steps (see :meth:`ModelFlops.forward`).
            steps: Number of steps, ``>= 0``.
            samples_per_step: Samples per step (the global batch size), ``>= 1``.
            dense_gradient: Whether these steps compute the dense weight gradient.

        Returns:
            The FLOPs added.

        Raises:
            ConfigError: For a negative ``steps`` or a non-positive ``samples_per_step``.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigError(f"steps must be a non-negative integer; got {steps!r}")
        if (
            isinstance(samples_per_step, bool)
            or not isinstance(samples_per_step, int)
            or samples_per_step < 1
        ):
            raise ConfigError(
                f"samples_per_step must be a positive integer; got {samples_per_step!r}"
            )
        n = steps * samples_per_step
        added = self.step_cost(densities, dense_gradient) * n
        self.total += added
        self.dense_equivalent += 3.0 * self.profile.dense_forward * n
        self.steps += steps
        self.samples += n
        if dense_gradient:
            self.dense_gradient_steps += steps
        return added

    @property
    def relative(self) -> float:
        """``total / dense_equivalent``: 1 for dense training; NaN before any sample."""
        return self.total / self.dense_equivalent if self.dense_equivalent > 0 else math.nan

    def state_dict(self) -> dict[str, float | int]:
        """Plain numbers to store in a checkpoint."""
        return {
            "total": self.total,
            "dense_equivalent": self.dense_equivalent,
            "steps": self.steps,
            "samples": self.samples,
            "dense_gradient_steps": self.dense_gradient_steps,
            "dense_forward": self.profile.dense_forward,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore counters saved by :meth:`state_dict`.

        Warns if the checkpoint was counted for a model with a different dense forward cost.

        Raises:
            CheckpointError: If a counter is missing or not a number.
        """
        try:
            total = float(state["total"])
            dense_equivalent = float(state["dense_equivalent"])
            steps = int(state["steps"])
            samples = int(state["samples"])
            dense_gradient_steps = int(state.get("dense_gradient_steps", 0))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"invalid training-FLOPs state in checkpoint: {e!r}") from e
        saved = state.get("dense_forward")
        if saved is not None and not math.isclose(
            float(saved), self.profile.dense_forward, rel_tol=1e-9
        ):
            warnings.warn(
                f"training FLOPs were counted for a model of {float(saved):.6g} dense forward "
                f"FLOPs; this one has {self.profile.dense_forward:.6g}",
                stacklevel=2,
            )
        self.total, self.dense_equivalent = total, dense_equivalent
        self.steps, self.samples = steps, samples
        self.dense_gradient_steps = dense_gradient_steps

    def __repr__(self) -> str:
        return (
            f"TrainingFlops(total={self.total:.4g}, relative={self.relative:.4g}, "
            f"steps={self.steps}, samples={self.samples})"
        )


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def summarize(
    profile: ModelFlops,
    densities: Mapping[str, float] | Sparsifier,
    training: TrainingFlops | None = None,
) -> dict[str, float | None]:
    """Flat numbers for a run's ``summary.json``.

    Args:
        profile: The model's :class:`ModelFlops`.
        densities: Final layer densities (see :meth:`ModelFlops.forward`).
        training: The run's accumulated training FLOPs, if counted.

    Returns:
        ``inference_flops`` (``f_S`` per sample), ``inference_flops_relative`` (``f_S /
        f_D``), ``dense_inference_flops`` (``f_D``), ``inference_other_flops`` (the part of
        both that sparsity does not reduce), ``training_flops`` (total over the run) and
        ``training_flops_relative`` (fraction of dense training on the same samples). Values
        that are unknown (no training counter, nothing counted yet) are ``None``.
    """
    sparse, rel = inference_flops(profile, densities)
    out: dict[str, float | None] = {
        "inference_flops": sparse,
        "inference_flops_relative": _finite_or_none(rel),
        "dense_inference_flops": profile.dense_forward,
        "inference_other_flops": profile.other,
        "training_flops": None,
        "training_flops_relative": None,
    }
    if training is not None:
        out["training_flops"] = training.total
        out["training_flops_relative"] = _finite_or_none(training.relative)
    return out

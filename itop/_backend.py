"""Selection and sampling primitives shared by every criterion.

A topology update needs three operations: the ``n`` largest scores, the ``n`` smallest scores,
and ``n`` distinct positions drawn uniformly from a candidate set. They are the hot path of an
update, so they live here once, with one fast implementation per device kind:

* CPU tensors go through numpy (``argpartition`` is about 6x faster than ``torch.topk`` on CPU,
  and numpy's PCG64 draws integers an order of magnitude faster than torch's CPU generator);
* every other device uses ``torch.topk`` and torch generators on that device.

Results are exact: always exactly ``n`` distinct indices, ties broken deterministically by the
backend. Everything random comes from :class:`RandomState`, whose state is saved in checkpoints.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "RandomState",
    "all_finite",
    "bottom_n",
    "flat_gather",
    "flat_set_",
    "sample_positions",
    "top_n",
]


def _on_cpu(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"


def _as_numpy(scores: torch.Tensor) -> np.ndarray:
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()
    return scores.numpy()


def top_n(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` largest entries of a 1-D score tensor (unordered)."""
    size = scores.numel()
    if n <= 0:
        return torch.empty(0, dtype=torch.long, device=scores.device)
    if n >= size:
        return torch.arange(size, device=scores.device)
    if _on_cpu(scores):
        s = _as_numpy(scores)
        return torch.from_numpy(np.argpartition(s, size - n)[size - n :])
    return torch.topk(scores.float(), n, sorted=False).indices


def bottom_n(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` smallest entries of a 1-D score tensor (unordered)."""
    size = scores.numel()
    if n <= 0:
        return torch.empty(0, dtype=torch.long, device=scores.device)
    if n >= size:
        return torch.arange(size, device=scores.device)
    if _on_cpu(scores):
        s = _as_numpy(scores)
        return torch.from_numpy(np.argpartition(s, n - 1)[:n])
    return torch.topk(scores.float(), n, largest=False, sorted=False).indices


class RandomState:
    """The engine's own random streams: numpy PCG64 for CPU, torch generators elsewhere.

    Keeping the engine's randomness separate from the global RNGs means that resuming from a
    checkpoint reproduces every topology decision exactly, and that user code drawing random
    numbers does not change which weights get grown.

    Args:
        seed: Seed for every stream.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.numpy = np.random.Generator(np.random.PCG64(self.seed))
        self._torch: dict[str, torch.Generator] = {}

    def torch_generator(self, device: torch.device) -> torch.Generator:
        """The generator for a (non-CPU) device, created on first use from the seed."""
        key = str(device)
        if key not in self._torch:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            self._torch[key] = gen
        return self._torch[key]

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "numpy": _pcg_state_to_tensor(self.numpy.bit_generator.state),
            "torch": {k: g.get_state() for k, g in self._torch.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.numpy = np.random.Generator(np.random.PCG64(self.seed))
        self.numpy.bit_generator.state = _pcg_state_from_tensor(state["numpy"])
        self._torch = {}
        for key, gstate in state["torch"].items():
            gen = torch.Generator(device=key)
            gen.set_state(gstate)
            self._torch[key] = gen


def _pcg_state_to_tensor(state: dict) -> torch.Tensor:
    # PCG64's state holds two 128-bit integers; store them as eight 32-bit words plus the
    # buffered-uint32 pair so the checkpoint holds only tensors (safe for weights_only loads).
    words = []
    for value in (state["state"]["state"], state["state"]["inc"]):
        words += [(value >> (32 * i)) & 0xFFFFFFFF for i in range(4)]
    words += [int(state["has_uint32"]), int(state["uinteger"])]
    return torch.tensor(words, dtype=torch.int64)


def _pcg_state_from_tensor(t: torch.Tensor) -> dict:
    w = [int(v) for v in t.tolist()]
    state = sum(w[i] << (32 * i) for i in range(4))
    inc = sum(w[4 + i] << (32 * i) for i in range(4))
    return {
        "bit_generator": "PCG64",
        "state": {"state": state, "inc": inc},
        "has_uint32": w[8],
        "uinteger": w[9],
    }


def sample_positions(
    size: int,
    n: int,
    rng: RandomState,
    device: torch.device,
    blocked: torch.Tensor | None = None,
    allowed_count: int | None = None,
) -> torch.Tensor:
    """Draw ``n`` distinct positions uniformly from ``range(size)``, avoiding ``blocked`` ones.

    Args:
        size: Number of positions.
        n: How many to draw; must not exceed the number of unblocked positions.
        rng: The engine's random streams.
        device: Device of the returned indices.
        blocked: Optional 1-D tensor of length ``size`` (bool, or a 0/1 mask of any dtype);
            nonzero entries may not be drawn. Only the drawn positions are looked up when few
            are wanted, so a weight mask can be passed as is.
        allowed_count: Number of unblocked positions when the caller knows it.

    Returns:
        A 1-D int64 tensor of ``n`` distinct positions, uniform over all ``n``-subsets.
    """
    if n <= 0:
        return torch.empty(0, dtype=torch.long, device=device)
    if allowed_count is None:
        allowed_count = size if blocked is None else size - int((blocked != 0).sum())
    if n > allowed_count:
        raise ValueError(f"cannot draw {n} positions from {allowed_count} candidates")
    if device.type != "cpu":
        gen = rng.torch_generator(device)
        keys = torch.rand(size, device=device, generator=gen)
        if blocked is not None:
            keys.masked_fill_(blocked != 0, -1.0)
        return torch.topk(keys, n, sorted=False).indices
    blocked_np = None
    if blocked is not None:
        blocked_np = _numpy_view(blocked)
        if blocked_np is None:
            blocked_np = (blocked != 0).numpy()
    frac = allowed_count / size
    want = n
    while True:
        draw = int(want / frac * 1.1) + 64
        if frac < 0.25 or draw * 4 > size:
            # Few candidates, or most of them wanted: list them and choose among them.
            cand = np.arange(size) if blocked_np is None else np.flatnonzero(blocked_np == 0)
            pick = rng.numpy.choice(cand.size, size=n, replace=False, shuffle=False)
            return torch.from_numpy(np.ascontiguousarray(cand[pick]))
        # Many candidates, few wanted: draw distinct positions from the whole range and reject
        # the blocked ones. Given its size, the kept set is a uniform subset of the candidates,
        # so a uniform choice of n among it is a uniform n-subset of them.
        pos = _distinct_uniform(size, draw, rng.numpy)
        if blocked_np is not None:
            pos = pos[blocked_np[pos] == 0]
        if pos.size >= n:
            if pos.size > n:
                pos = pos[rng.numpy.choice(pos.size, size=n, replace=False, shuffle=False)]
            return torch.from_numpy(np.ascontiguousarray(pos))
        want = int(want * 1.5) + 64


def _distinct_uniform(size: int, draw: int, gen: np.random.Generator) -> np.ndarray:
    """About ``draw`` distinct positions of ``range(size)``, uniform given their number."""
    if draw * 50 <= size:
        # numpy's sampler without replacement is a hash-set algorithm in this regime.
        return gen.choice(size, size=draw, replace=False, shuffle=False)
    # Larger draws: with replacement, then deduplicate through a scratch flag array. Given how
    # many distinct positions come out, they are a uniform subset (every subset is equally likely).
    seen = np.zeros(size, dtype=np.bool_)
    seen[gen.integers(0, size, draw)] = True
    return np.flatnonzero(seen)


_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16, torch.int32, torch.int64, torch.bool,
                 torch.uint8, torch.int16, torch.int8)


def _numpy_view(t: torch.Tensor) -> np.ndarray | None:
    """A writable flat numpy view of a contiguous CPU tensor (None when there is none)."""
    if t.device.type == "cpu" and t.dtype in _NUMPY_DTYPES and t.is_contiguous():
        return t.detach().view(-1).numpy()
    return None


def flat_gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t.reshape(-1)[idx]`` in logical (row-major) order, without copying ``t``."""
    if t.is_contiguous():
        return t.view(-1).index_select(0, idx)
    return t[torch.unravel_index(idx, t.shape)]


def flat_set_(t: torch.Tensor, idx: torch.Tensor, value: torch.Tensor | float) -> None:
    """In place ``t.reshape(-1)[idx] = value`` for contiguous and strided (channels_last) ``t``.

    CPU tensors are written through numpy (``np.put`` is several times faster than torch's
    indexed assignment on CPU); callers hold ``torch.no_grad`` and write between steps.
    """
    view = _numpy_view(t)
    if view is not None and idx.device.type == "cpu":
        if isinstance(value, torch.Tensor):
            value = value.detach().to(t.dtype).numpy()
        np.put(view, idx.numpy(), value)
    elif t.is_contiguous():
        t.view(-1)[idx] = value
    else:
        t[torch.unravel_index(idx, t.shape)] = value


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry is finite (numpy on CPU: far cheaper than torch there)."""
    view = _numpy_view(t) if t.dtype.is_floating_point else None
    if view is not None:
        return bool(np.isfinite(view).all())
    return bool(torch.isfinite(t).all())

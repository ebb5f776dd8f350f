"""Selection and sampling primitives shared by every criterion.

A topology update needs three operations: the ``n`` largest scores, the ``n`` smallest scores,
and ``n`` distinct positions drawn uniformly from a candidate set. They are the hot path of an
update, so they live here once, with one fast implementation per device kind:

* CPU tensors go through numpy (``argpartition`` is about 6x faster than ``torch.topk`` on CPU,
  and numpy's PCG64 draws integers an order of magnitude faster than torch's CPU generator);
* every other device uses ``torch.topk`` and torch generators on that device.

Results are exact: always exactly ``n`` distinct indices, ties broken by index (lower first)
on every device, so the selected set does not depend on the backend or on the sampled
prefilter that makes CPU selections over large layers cheap (:func:`top_n`). Everything random comes from :class:`RandomState`, whose state is saved in checkpoints.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "RandomState",
    "all_finite",
    "bottom_n",
    "flat_gather",
    "flat_member",
    "fresh_abs",
    "flat_set_",
    "sample_positions",
    "set_sampled_selection",
    "top_n",
]


def _on_cpu(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"


def _as_numpy(scores: torch.Tensor) -> np.ndarray:
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()
    return scores.numpy()


#: Layers smaller than this are ranked by the full selection (the sample would not pay off).
SAMPLED_MIN_SIZE = 1 << 15
#: Scores drawn to estimate the threshold; the estimate's error shrinks as 1/sqrt of it.
SAMPLE_SIZE = 8192
#: Safety margin of the threshold, in standard deviations of the sample's count above it.
SAMPLE_MARGIN = 5.0


def top_n(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` largest entries of a 1-D score tensor, in ascending index order.

    Ties are broken by index (the lower index wins) and NaN ranks level with ``+inf`` above
    every number, so the result is one well-defined set on every device and path: the sampled
    prefilter (see :func:`_sampled_select`) returns exactly what the full selection would.
    """
    return _select(scores, n, largest=True)


def bottom_n(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` smallest entries of a 1-D score tensor, in ascending index order.

    Same tie rule as :func:`top_n` (lower index wins; NaN ranks level with ``+inf``).
    """
    return _select(scores, n, largest=False)


def _select(scores: torch.Tensor, n: int, largest: bool) -> torch.Tensor:
    size = scores.numel()
    if n <= 0:
        return torch.empty(0, dtype=torch.long, device=scores.device)
    if n >= size:
        return torch.arange(size, device=scores.device)
    if not _on_cpu(scores):
        return _exact_select_torch(scores.float(), n, largest)
    s = _as_numpy(scores)
    chosen = _sampled_select(s, n, largest) if _SELECTION["sampled"] else None
    if chosen is None:
        chosen = _exact_select(s, n, largest)
    return torch.from_numpy(chosen)


# Whether CPU selections try the sampled prefilter first. Only benchmarks switch it off (to time
# the full selection against it in one run, see benchmarks/bench_update.py); results are the
# same either way.
_SELECTION = {"sampled": True}


def set_sampled_selection(enabled: bool) -> bool:
    """Turn the sampled prefilter of :func:`top_n`/:func:`bottom_n` on or off; returns the old
    setting. Results do not change, only speed: this exists so benchmarks can compare."""
    old = _SELECTION["sampled"]
    _SELECTION["sampled"] = bool(enabled)
    return old


def _exact_select(v: np.ndarray, n: int, largest: bool) -> np.ndarray:
    """The full selection on a numpy array: positions of the ``n`` best entries, ascending.

    ``np.partition`` finds the boundary value (the ``n``-th best); every entry strictly better
    is taken, and the remaining places go to the entries equal to the boundary in index order.
    ``0 < n < v.size``.
    """
    size = v.size
    kth = np.partition(v, size - n if largest else n - 1)[size - n if largest else n - 1]
    if np.isnan(kth) or kth == np.inf:
        # The boundary class is {+inf, NaN} (numpy sorts NaN above +inf; this rule ties them).
        tied = np.isnan(v)
        tied |= v == np.inf
        better = np.flatnonzero(v < np.inf) if not largest else np.empty(0, dtype=np.int64)
    else:
        tied = v == kth
        if largest:
            above = np.less_equal(v, kth)
            np.logical_not(above, out=above)  # NaN is above every number
            better = np.flatnonzero(above)
        else:
            better = np.flatnonzero(v < kth)
    fill = np.flatnonzero(tied)[: n - better.size]
    return np.sort(np.concatenate([better, fill]), kind="stable")


def _exact_select_torch(s: torch.Tensor, n: int, largest: bool) -> torch.Tensor:
    """:func:`_exact_select` in torch (non-CPU devices): same set, same tie rule."""
    s = torch.where(torch.isnan(s), torch.full_like(s, float("inf")), s)
    kth = torch.topk(s, n, largest=largest, sorted=False).values
    kth = kth.min() if largest else kth.max()
    better = (s > kth) if largest else (s < kth)
    nb = int(better.sum())
    fill = (s == kth).nonzero().squeeze(1)[: n - nb]
    return torch.sort(torch.cat([better.nonzero().squeeze(1), fill])).values


_SAMPLES: dict[int, np.ndarray] = {}


def _sample_index(size: int) -> np.ndarray:
    """Fixed positions (with replacement) at which a layer of ``size`` scores is sampled.

    Drawn once per size from a generator seeded with the size itself: independent of every
    other random stream (the engine's and the global ones), so using them changes no random
    decision, and a run or its resume samples the same positions. The sample only steers
    speed; the selected set never depends on it.
    """
    idx = _SAMPLES.get(size)
    if idx is None:
        gen = np.random.Generator(np.random.PCG64(size))
        idx = np.sort(gen.integers(0, size, SAMPLE_SIZE))
        idx.setflags(write=False)
        if len(_SAMPLES) < 1024:
            _SAMPLES[size] = idx
    return idx


def _sampled_select(v: np.ndarray, n: int, largest: bool) -> np.ndarray | None:
    """The ``n`` best entries found through a sampled threshold, or None to fall back.

    Exact selection over a large layer costs a partition of all of it (``np.argpartition``
    over 25.5M RigL gradient scores was ~120 ms of an update). When few are wanted, a
    threshold does most of the work at the cost of one comparison pass:

    1. score a fixed sample of :data:`SAMPLE_SIZE` positions (:func:`_sample_index`);
    2. take as threshold the sample's ``r``-th best value, ``r`` being the expected number of
       sample entries better than the true ``n``-th best plus :data:`SAMPLE_MARGIN` standard
       deviations, so the threshold lies, almost surely, safely *below* the ``n``-th best;
    3. keep every entry at least as good as the threshold (NaN kept when ranking the largest);
    4. if fewer than ``n`` survived the estimate was wrong: return None (the caller runs the
       full selection). Otherwise every one of the true ``n`` best survived (each is at least
       as good as the ``n``-th best, which is at least as good as the threshold), so the
       exact selection among the survivors, in index order, is the full selection's set with
       the same ties.

    Returns None as well when the prefilter would not save work (small layer, many wanted).
    """
    size = v.size
    if size < SAMPLED_MIN_SIZE:
        return None
    m = SAMPLE_SIZE
    q = n / size
    r = int(np.ceil(m * q + SAMPLE_MARGIN * np.sqrt(m * q * (1.0 - q)) + SAMPLE_MARGIN))
    if r * 2 > m:
        return None
    sample = v[_sample_index(size)]
    threshold = np.partition(sample, m - r if largest else r - 1)[m - r if largest else r - 1]
    if np.isnan(threshold):
        return None
    if largest:
        keep = np.less(v, threshold)
        np.logical_not(keep, out=keep)
    else:
        keep = np.less_equal(v, threshold)
    cand = np.flatnonzero(keep)
    if cand.size < n:
        return None
    if cand.size == n:
        return cand
    return cand[_exact_select(v[cand], n, largest)]


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


def flat_member(idx: torch.Tensor, members: torch.Tensor, size: int) -> torch.Tensor:
    """Bool tensor: whether each of the flat indices ``idx`` (all ``< size``) is in ``members``.

    Through one scratch flag array of ``size`` entries: O(size + len) and no sort, where
    ``torch.isin`` sorts both sides on CPU (it cost ~600 ms per ResNet-50 update at 90%).
    """
    if idx.device.type == "cpu" and members.device.type == "cpu":
        table = np.zeros(size, dtype=np.bool_)
        table[members.numpy()] = True
        return torch.from_numpy(table[idx.numpy()])
    table = torch.zeros(size, dtype=torch.bool, device=idx.device)
    table[members] = True
    return table[idx]


def fresh_abs(t: torch.Tensor) -> torch.Tensor:
    """A new tensor ``|t|`` (same shape; ``t`` is left alone).

    CPU float tensors go through numpy: one single-threaded pass, where ``torch.abs`` hands a
    25.5M-element ResNet-50 gradient to the intra-op thread pool, which on a loaded 2-core
    machine waited longer for busy cores than the pass itself took.
    """
    view = _numpy_view(t) if t.dtype in (torch.float32, torch.float64) else None
    if view is None:
        return t.abs()
    return torch.from_numpy(np.abs(view)).view(t.shape)

"""Exploration tracking: the In-Time Over-Parameterization rate and its reliability.

Liu, Yin, Mocanu & Pechenizkiy, "Do We Actually Need Dense Over-Parameterization? In-Time
Over-Parameterization in Sparse Training", ICML 2021. The ITOP rate

    R_s = |union over time of the active masks| / |all sparsifiable weights|

measures how much of the dense parameter space a sparse network has visited. It equals the
initial density at step 0 and never decreases.

Exploration only helps when it is *reliable*: a regrown weight must stay long enough to be
trained before the next prune judges it. The tracker therefore also records, for every
active weight, the step it was (re)grown, the lifetimes of pruned weights, and a *reliable*
R_s that counts a weight only once it has stayed active for at least ``reliable_steps``
steps in one stretch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ._backend import flat_gather, flat_set_

__all__ = ["ExplorationTracker"]


class _LayerTrack:
    def __init__(self, numel: int, device: torch.device) -> None:
        self.numel = numel
        self.ever = torch.zeros(numel, dtype=torch.bool, device=device)
        self.reliable = torch.zeros(numel, dtype=torch.bool, device=device)
        self.grown_at = torch.full((numel,), -1, dtype=torch.int32, device=device)
        self.explored = 0
        self.grown_total = 0
        self.pruned_total = 0


class ExplorationTracker:
    """Tracks the union of active masks, the age of active weights and pruned lifetimes.

    All updates are O(number of changed weights); reads of R_s are O(1).

    Args:
        reliable_steps: Minimum stretch of activity, in steps, for a weight to count in the
            reliable R_s. The sparsifier defaults it to the update interval ΔT; for comparing
            runs with different ΔT fix one value for all of them.
    """

    def __init__(self, reliable_steps: int) -> None:
        self.reliable_steps = max(int(reliable_steps), 1)
        self.layers: dict[str, _LayerTrack] = {}
        self.lifetimes: dict[int, int] = {}  # lifetime in steps -> number of pruned weights

    def register(self, name: str, active: torch.Tensor, numel: int, step: int = 0) -> None:
        """Start tracking a layer whose active flat indices are ``active``."""
        t = _LayerTrack(numel, active.device)
        t.ever[active] = True
        t.grown_at[active] = step
        t.explored = int(active.numel())
        self.layers[name] = t

    def record(self, name: str, dropped: torch.Tensor, grown: torch.Tensor, step: int) -> int:
        """Record one layer's topology change at ``step``; returns newly explored weights.

        ``dropped`` and ``grown`` are flat indices; a weight in both was dropped and regrown,
        which ends its old stretch and starts a new one. The sparsifier passes only the net
        change by default (``keep_regrown``): a weight it drops and regrows in one update is
        in neither, so its stretch goes on and no lifetime is recorded for it.
        """
        t = self.layers[name]
        if dropped.numel():
            life = step - flat_gather(t.grown_at, dropped)
            flat_set_(t.reliable, dropped[life >= self.reliable_steps], True)
            counts = torch.bincount(life.long().cpu())
            nz = counts.nonzero().squeeze(1)
            for lifetime, c in zip(nz.tolist(), counts.index_select(0, nz).tolist(), strict=True):
                self.lifetimes[lifetime] = self.lifetimes.get(lifetime, 0) + c
            flat_set_(t.grown_at, dropped, -1)
            t.pruned_total += int(dropped.numel())
        new = 0
        if grown.numel():
            new = int(grown.numel()) - int(flat_gather(t.ever, grown).sum())
            flat_set_(t.ever, grown, True)
            flat_set_(t.grown_at, grown, step)
            t.explored += new
            t.grown_total += int(grown.numel())
        return new

    # -- reads ---------------------------------------------------------------------------------

    def itop_rate(self, name: str | None = None) -> float:
        """R_s of one layer, or of all layers weighted by their size (the paper's definition)."""
        if name is not None:
            t = self.layers[name]
            return t.explored / t.numel
        total = sum(t.numel for t in self.layers.values())
        return sum(t.explored for t in self.layers.values()) / max(total, 1)

    def _reliable_count(self, t: _LayerTrack, step: int) -> int:
        current = (t.grown_at >= 0) & (t.grown_at <= step - self.reliable_steps)
        return int((t.reliable | current).sum())

    def reliable_itop_rate(self, step: int, name: str | None = None) -> float:
        """Fraction of weights that stayed active at least ``reliable_steps`` steps at a time."""
        layers = [self.layers[name]] if name is not None else list(self.layers.values())
        total = sum(t.numel for t in layers)
        return sum(self._reliable_count(t, step) for t in layers) / max(total, 1)

    def lifetime_stats(self) -> dict[str, float]:
        """Summary of the lifetimes (in steps) of pruned weights."""
        n = sum(self.lifetimes.values())
        if n == 0:
            return {"pruned": 0}
        items = sorted(self.lifetimes.items())
        mean = sum(k * c for k, c in items) / n
        acc, median = 0, items[-1][0]
        for k, c in items:
            acc += c
            if acc * 2 >= n:
                median = k
                break
        short = sum(c for k, c in items if k < self.reliable_steps) / n
        return {
            "pruned": n,
            "mean": mean,
            "median": float(median),
            "min": float(items[0][0]),
            "max": float(items[-1][0]),
            "fraction_unreliable": short,
        }

    def ages(self, name: str, step: int) -> torch.Tensor:
        """Steps since each active weight of a layer was (re)grown; -1 for inactive weights."""
        g = self.layers[name].grown_at
        return torch.where(g >= 0, step - g, g)

    # -- persistence ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        layers = {}
        for name, t in self.layers.items():
            layers[name] = {
                "ever": t.ever.clone(),
                "reliable": t.reliable.clone(),
                "grown_at": t.grown_at.clone(),
                "grown_total": t.grown_total,
                "pruned_total": t.pruned_total,
            }
        keys = sorted(self.lifetimes)
        return {
            "reliable_steps": self.reliable_steps,
            "layers": layers,
            "lifetimes": torch.tensor(
                [keys, [self.lifetimes[k] for k in keys]], dtype=torch.int64
            ).reshape(2, -1),
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.reliable_steps = int(state["reliable_steps"])
        for name, s in state["layers"].items():
            t = self.layers[name]
            t.ever.copy_(s["ever"])
            t.reliable.copy_(s["reliable"])
            t.grown_at.copy_(s["grown_at"])
            t.explored = int(t.ever.sum())
            t.grown_total = int(s["grown_total"])
            t.pruned_total = int(s["pruned_total"])
        lt = state["lifetimes"]
        self.lifetimes = dict(zip(lt[0].tolist(), lt[1].tolist(), strict=True))

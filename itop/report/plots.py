"""Plots of a report: the paper's figures over aggregated runs (matplotlib, Agg canvas).

The third step of a report (read -> aggregate -> plot -> render). Each ``plot_*`` function
writes one PNG, or raises :class:`SkipPlot` saying why the runs cannot support it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .aggregate import (
    Group,
    Stat,
    _clean,
    _fmt_value,
    _hashable,
    _label,
    _sort_key,
    aggregate,
)
from .read import Run, _finite, _num

__all__ = [
    "PLOTS",
    "SkipPlot",
    "itop_curve",
    "plot_accuracy_vs_itop",
    "plot_accuracy_vs_parameters",
    "plot_accuracy_vs_wall_time",
    "plot_accuracy_vs_sparsity",
    "plot_itop_over_steps",
    "plot_layers",
    "plot_lifetimes",
    "plot_reliable_itop",
]

log = logging.getLogger(__name__)

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")


class SkipPlot(Exception):
    """Raised by a ``plot_*`` function when the runs cannot support the plot (message: why)."""


def _figure(width: float = 7.5, height: float = 5.0):
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend change)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SkipPlot("matplotlib is not installed (pip install matplotlib)") from None
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    log.info("wrote %s", path)
    return path


def _method_colors(runs: Sequence[Run]) -> dict[str, Any]:
    """One colour per method, the same in every plot of a report (from all its runs)."""
    from matplotlib import colormaps

    names = sorted({str(r.get("method")) for r in runs})
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(names)}


def _group_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _outside_legend(fig, ax) -> None:
    """A legend below the axes; two columns when there are many short entries.

    The figure grows taller with the legend, so the axes keep about 3.5 inches of height
    however many groups there are.
    """
    handles, labels = ax.get_legend_handles_labels()
    ncols = 2 if len(labels) > 3 and max(len(t) for t in labels) <= 40 else 1
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=ncols)
    rows = math.ceil(len(labels) / ncols)
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, max(height, 3.5 + 0.6 + 0.17 * rows))


def _err(s: Stat, scale: float = 1.0) -> float:
    return s.std * scale if math.isfinite(s.std) else 0.0


def _acc_metric(groups: Sequence[Group]) -> str:
    if any(g.stats.get("test_acc_selected", Stat(0, 0, 0)).n for g in groups):
        return "test_acc_selected"
    return "final_test_acc"


def _stats_for(groups: Sequence[Group], needed: Sequence[str]) -> list[Group]:
    return [g for g in groups if all(k in g.stats and g.stats[k].n for k in needed)]


def _method_sparsity_styles(runs: Sequence[Run], groups: Sequence[Group]
                            ) -> tuple[dict[str, Any], set[str], list[Any], dict[Any, str]]:
    """Colours per method (from all runs), the methods shown, the sparsities and their markers."""
    sparsities = sorted({_clean(g.get("target_sparsity")) for g in groups}, key=_sort_key)
    markers = {s: _MARKERS[i % len(_MARKERS)] for i, s in enumerate(sparsities)}
    return _method_colors(runs), {str(g.get("method")) for g in groups}, sparsities, markers


def _method_sparsity_legend(ax, colors: dict[str, Any], used: set[str], markers: dict[Any, str],
                            sparsities: Sequence[Any], size: int) -> None:
    """The legend of the scatter plots: a colour per method shown, a marker per sparsity."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", linestyle="", markersize=size, label=m)
               for m, c in colors.items() if m in used]
    handles += [Line2D([], [], color="grey", marker=markers[s], linestyle="", markersize=size,
                       label=f"sparsity {_fmt_value('target_sparsity', s)}") for s in sparsities]
    ax.legend(handles=handles, fontsize=8, loc="best", title="colour: method, marker: sparsity",
              title_fontsize=8)


def plot_accuracy_vs_itop(runs: Sequence[Run], path: str | os.PathLike,
                          by: Sequence[str] | None = None) -> Path:
    """Test accuracy vs ITOP rate R_s, one point per group with std error bars.

    Colour by method, marker by sparsity; points are annotated with ΔT, batch size and
    multiplier where these vary between groups.

    Args:
        runs: Runs from :func:`collect`.
        path: PNG file to write.
        by: Grouping keys (see :func:`aggregate`).

    Returns:
        ``path``.

    Raises:
        SkipPlot: No group has both a test accuracy and an R_s.
    """
    groups = aggregate(runs, by)
    acc = _acc_metric(groups)
    groups = _stats_for(groups, (acc, "itop_rate"))
    if not groups:
        raise SkipPlot("no run has both a test accuracy and an ITOP rate")
    fig = _figure()
    ax = fig.add_subplot()
    colors, used, sparsities, markers = _method_sparsity_styles(runs, groups)
    annotate = [k for k in ("update_interval", "batch_size", "multiplier")
                if len({_hashable(g.get(k)) for g in groups}) > 1]
    offsets = ((6, 6), (6, -14), (-10, 10), (-10, -16))
    for i, g in enumerate(groups):
        x, y = g.stats["itop_rate"], g.stats[acc]
        ax.errorbar(x.mean, y.mean * 100, xerr=_err(x), yerr=_err(y, 100),
                    fmt=markers[_clean(g.get("target_sparsity"))], color=colors[str(g.get("method"))],
                    markersize=8, capsize=3, elinewidth=1, markeredgecolor="black", markeredgewidth=0.5)
        text = _label({k: g.get(k) for k in annotate}, empty="")
        if text:
            ax.annotate(text, (x.mean, y.mean * 100), textcoords="offset points",
                        xytext=offsets[i % len(offsets)], fontsize=8)
    _method_sparsity_legend(ax, colors, used, markers, sparsities, 8)
    ax.set_xlabel("ITOP rate R_s (fraction of weights ever active)")
    which = " of the model selected by val. acc." if acc == "test_acc_selected" else ", last epoch"
    ax.set_ylabel(f"test accuracy (%){which}")
    ax.set_title("Test accuracy vs in-time over-parameterization (mean ± std over seeds)")
    ax.grid(True, alpha=0.3)
    return _save(fig, Path(path))


def _plot_accuracy_against(runs: Sequence[Run], path: str | os.PathLike, by: Sequence[str] | None,
                           metric: str, xlabel: str, title: str) -> Path:
    """Test accuracy against one summary metric, one point per group (log x axis).

    Colour by method, marker by target sparsity; points of models other than the most common
    one are annotated with their model (e.g. the narrow dense baselines of an equal-parameter
    comparison).
    """
    groups = aggregate(runs, by)
    acc = _acc_metric(groups)
    groups = [g for g in _stats_for(groups, (acc, metric)) if g.stats[metric].mean > 0]
    if not groups:
        raise SkipPlot(f"no run has both a test accuracy and a positive {metric}")
    fig = _figure()
    ax = fig.add_subplot()
    colors, used, sparsities, markers = _method_sparsity_styles(runs, groups)
    models = [str(g.get("model")) for g in groups]
    common = max(set(models), key=models.count)  # label only the other models (e.g. narrow dense ones)
    for g in groups:
        x, y = g.stats[metric], g.stats[acc]
        ax.errorbar(x.mean, y.mean * 100, xerr=_err(x), yerr=_err(y, 100),
                    fmt=markers[_clean(g.get("target_sparsity"))], color=colors[str(g.get("method"))],
                    markersize=7, capsize=3, elinewidth=1, markeredgecolor="black", markeredgewidth=0.5)
        if str(g.get("model")) != common:
            ax.annotate(str(g.get("model")), (x.mean, y.mean * 100), textcoords="offset points",
                        xytext=(5, 5), fontsize=7)
    _method_sparsity_legend(ax, colors, used, markers, sparsities, 7)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    which = " of the model selected by val. acc." if acc == "test_acc_selected" else ", last epoch"
    ax.set_ylabel(f"test accuracy (%){which}")
    ax.set_title(title)
    ax.grid(True, alpha=0.3, which="both")
    return _save(fig, Path(path))


def plot_accuracy_vs_wall_time(runs: Sequence[Run], path: str | os.PathLike,
                               by: Sequence[str] | None = None) -> Path:
    """Test accuracy against training wall time per run (``wall_time_s``, log scale).

    Shows what sparse execution buys in seconds: at equal accuracy, the point further left
    trained faster.

    Raises:
        SkipPlot: No run has both a test accuracy and a wall time.
    """
    return _plot_accuracy_against(runs, path, by, "wall_time_s", "training wall time per run (s, log scale)",
                                  "Test accuracy vs training wall time (mean ± std over seeds)")


def plot_accuracy_vs_parameters(runs: Sequence[Run], path: str | os.PathLike,
                                by: Sequence[str] | None = None) -> Path:
    """Test accuracy against the parameters a trained network holds (``parameters``, log scale).

    The equal-parameter view of Liu et al. 2021 ("Do we actually need dense
    over-parameterization?"): a sparse network beside dense networks narrow enough to hold
    as many weights as it does.

    Raises:
        SkipPlot: No run has both a test accuracy and a parameter count (runs made before the
            count was written to ``summary.json``).
    """
    return _plot_accuracy_against(runs, path, by, "parameters",
                                  "parameters of the trained network (active weights, log scale)",
                                  "Test accuracy vs parameters (mean ± std over seeds)")


def itop_curve(run: Run) -> tuple[list[int], list[float]] | None:
    """R_s of a run as a step function of the training step.

    Built from the update records (R_s after each topology update) and the epoch records;
    the value at step 0 comes from an epoch record before the first update, else it is
    reconstructed from ``newly_explored`` (R_s rises by ``newly_explored / N`` at each update),
    else, when every update regrew as many weights as it dropped, it is the run's density.

    Args:
        run: A run with metrics.

    Returns:
        ``(steps, values)``, increasing steps; ``None`` when the run has no update records.
    """
    ups = sorted((u for u in run.updates if _finite(u.get("itop_rate")) and _finite(u.get("step"))),
                 key=lambda u: u["step"])
    if not ups:
        return None
    first = ups[0]["step"]
    eps = sorted((int(e["step"]), float(e["itop_rate"])) for e in run.epochs
                  if _finite(e.get("step")) and _finite(e.get("itop_rate")))
    before = [v for s, v in eps if s < first]
    start = before[-1] if before else _initial_itop(ups)
    if start is None and all(_num(u.get("dropped")) == _num(u.get("grown")) for u in ups):
        # Drop-and-grow at constant density: R_s starts at the density the run keeps.
        density = 1.0 - run.metric("sparsity")
        start = density if 0.0 <= density <= 1.0 else None
    points: dict[int, float] = {}
    if start is not None:
        points[0] = start
    for s, v in eps:
        if s >= first:
            points[s] = v
    for u in ups:
        points[int(u["step"])] = float(u["itop_rate"])
    steps = sorted(points)
    values = [points[s] for s in steps]
    end = run.summary.get("steps")
    if _finite(end) and int(end) > steps[-1]:
        steps.append(int(end))
        values.append(values[-1])
    return steps, values


def _initial_itop(ups: list[dict[str, Any]]) -> float | None:
    """R_s before the first update, from R_s increments and ``newly_explored`` counts."""
    best = None
    for prev, cur in zip(ups, ups[1:], strict=False):
        d = _num(cur["itop_rate"]) - _num(prev["itop_rate"])
        newly = _num(cur.get("newly_explored"))
        if d > 0 and newly > 0 and (best is None or newly > best[0]):
            best = (newly, newly / d)
    newly0 = _num(ups[0].get("newly_explored"))
    if newly0 == 0:
        return float(ups[0]["itop_rate"])
    if best is None or not math.isfinite(newly0):
        return None
    total = round(best[1])
    return min(max(float(ups[0]["itop_rate"]) - newly0 / total, 0.0), 1.0)


def _value_at(steps: list[int], values: list[float], s: int) -> float | None:
    lo, hi = 0, len(steps)
    while lo < hi:
        mid = (lo + hi) // 2
        if steps[mid] <= s:
            lo = mid + 1
        else:
            hi = mid
    return values[lo - 1] if lo > 0 else None


def _mean_curve(curves: list[tuple[list[int], list[float]]]) -> tuple[list[int], list[float]]:
    grid = sorted({s for steps, _ in curves for s in steps})
    out_s, out_v = [], []
    for s in grid:
        vals = [v for v in (_value_at(st, vs, s) for st, vs in curves) if v is not None]
        if vals:
            out_s.append(s)
            out_v.append(sum(vals) / len(vals))
    return out_s, out_v


def plot_itop_over_steps(runs: Sequence[Run], path: str | os.PathLike,
                         by: Sequence[str] | None = None) -> Path:
    """R_s over training steps, one step-function line per group (mean over its seeds).

    Args:
        runs: Runs from :func:`collect`.
        path: PNG file to write.
        by: Grouping keys (see :func:`aggregate`).

    Returns:
        ``path``.

    Raises:
        SkipPlot: No run recorded a topology update.
    """
    lines = []
    for g in aggregate(runs, by):
        curves = [c for c in (itop_curve(r) for r in g.runs) if c is not None]
        if curves:
            lines.append((g, len(curves), _mean_curve(curves)))
    if not lines:
        raise SkipPlot("no run recorded a topology update (static masks or no metrics.jsonl)")
    fig = _figure()
    ax = fig.add_subplot()
    styles = ("-", "--", "-.", ":")
    # Colour per group, line style per method, so identical curves of two methods stay visible.
    methods = sorted({str(g.get("method")) for g, _, _ in lines})
    for (g, n, (steps, values)), color in zip(lines, _group_colors(len(lines)), strict=True):
        label = f"{g.label} (n={n})" if n > 1 else g.label
        k = methods.index(str(g.get("method"))) % len(styles)
        ax.step(steps, values, where="post", color=color, linestyle=styles[k],
                linewidth=2.4 if k == 0 else 1.8, label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("ITOP rate R_s")
    ax.set_title("R_s during training" + (" (mean over seeds)" if any(n > 1 for _, n, _ in lines) else ""))
    ax.grid(True, alpha=0.3)
    _outside_legend(fig, ax)
    return _save(fig, Path(path))


def plot_accuracy_vs_sparsity(runs: Sequence[Run], path: str | os.PathLike,
                              by: Sequence[str] | None = None) -> Path:
    """Test accuracy vs sparsity, one line per method (and per other varying setting).

    Dense runs are drawn as a horizontal reference line.

    Args:
        runs: Runs from :func:`collect`.
        path: PNG file to write.
        by: Grouping keys (see :func:`aggregate`); ``target_sparsity`` is always one of them.

    Returns:
        ``path``.

    Raises:
        SkipPlot: Fewer than two sparsities among the sparse runs.
    """
    if by is not None and "target_sparsity" not in by:
        by = list(by) + ["target_sparsity"]
    groups = aggregate(runs, by)
    acc = _acc_metric(groups)
    groups = _stats_for(groups, (acc,))
    dense = [g for g in groups if g.get("method") == "dense"]
    sparse = [g for g in groups if g.get("method") != "dense" and _finite(g.get("target_sparsity"))]
    levels = sorted({_num(g.get("target_sparsity")) for g in sparse})
    if len(levels) < 2:
        only = f" ({_fmt_value('target_sparsity', levels[0])})" if levels else ""
        raise SkipPlot(f"all sparse runs have the same sparsity{only}; train at several --sparsity values")
    lines: dict[tuple, list[Group]] = {}
    for g in sparse:
        rest = tuple((k, _hashable(v)) for k, v in g.key.items() if k != "target_sparsity")
        lines.setdefault(rest, []).append(g)
    fig = _figure()
    ax = fig.add_subplot()
    colors = _method_colors(runs)
    method_lines: dict[str, int] = {}
    styles = ("-", "--", "-.", ":")
    for members in lines.values():
        members.sort(key=lambda g: _num(g.get("target_sparsity")))
        method = str(members[0].get("method"))
        k = method_lines[method] = method_lines.get(method, -1) + 1
        xs = [_num(g.get("target_sparsity")) for g in members]
        ys = [g.stats[acc].mean * 100 for g in members]
        es = [_err(g.stats[acc], 100) for g in members]
        label = _label({kk: v for kk, v in members[0].key.items() if kk != "target_sparsity"})
        ax.errorbar(xs, ys, yerr=es, color=colors[method], marker=_MARKERS[k % len(_MARKERS)],
                    linestyle=styles[k % len(styles)], capsize=3, markersize=6, label=label)
    for i, g in enumerate(dense):
        s = g.stats[acc]
        label = _label({k: v for k, v in g.key.items() if k != "target_sparsity"})
        ax.axhline(s.mean * 100, color="black", linestyle=(0, (4, 2 + i)), linewidth=1.2,
                   label=f"{label} (reference)")
        if s.n > 1 and math.isfinite(s.std):
            ax.axhspan((s.mean - s.std) * 100, (s.mean + s.std) * 100, color="black", alpha=0.08)
    ax.set_xticks(levels)
    ax.set_xticklabels([_fmt_value("target_sparsity", v) for v in levels])
    ax.set_xlabel("sparsity (fraction of weights removed)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy vs sparsity (mean ± std over seeds)")
    ax.grid(True, alpha=0.3)
    _outside_legend(fig, ax)
    return _save(fig, Path(path))


def _representatives(runs: Sequence[Run]) -> list[Run]:
    """One run per method with per-layer records: completed first, then lowest seed."""
    with_layers = [r for r in runs if _last_layers(r)]
    if not with_layers:
        return []
    models: dict[Any, int] = {}
    for r in with_layers:
        models[r.get("model")] = models.get(r.get("model"), 0) + 1
    model = max(models, key=lambda m: models[m])
    chosen: dict[str, Run] = {}

    def preference(r: Run) -> tuple:  # completed, lowest seed, highest sparsity
        sparsity = r.metric("target_sparsity")
        top = -sparsity if math.isfinite(sparsity) else 0.0
        return (not r.completed, _sort_key(r.seed), top, str(r.path))

    for r in sorted(with_layers, key=preference):
        if r.get("model") == model:
            chosen.setdefault(str(r.get("method")), r)
    return [chosen[m] for m in sorted(chosen)]


def _last_layers(run: Run) -> dict[str, Any] | None:
    """The per-layer stats of the run's last epoch record that has them."""
    for e in reversed(run.epochs):
        if isinstance(e.get("layers"), dict) and e["layers"]:
            return e["layers"]
    return None


def _short_layer(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def plot_layers(runs: Sequence[Run], path: str | os.PathLike, by: Sequence[str] | None = None) -> Path:
    """Per-layer density and per-layer R_s at the last epoch, one representative run per method.

    The representative is the first completed run of the method with the lowest seed (for
    the most common model when models differ).

    Args:
        runs: Runs from :func:`collect`.
        path: PNG file to write.
        by: Unused (for a uniform signature).

    Returns:
        ``path``.

    Raises:
        SkipPlot: No run has per-layer records.
    """
    reps = _representatives(runs)
    if not reps:
        raise SkipPlot("no run has per-layer records (epoch lines of metrics.jsonl)")
    last_layers = []
    names: list[str] = []
    for r in reps:
        layers = _last_layers(r)
        last_layers.append(layers)
        names.extend(n for n in layers if n not in names)
    n_bars = len(reps)
    width = min(max(7.5, 0.28 * len(names) * n_bars + 2.5), 28.0)
    fig = _figure(width, 7.0)
    axes = fig.subplots(2, 1, sharex=True)
    colors = _method_colors(runs)
    bar = 0.8 / n_bars
    for ax, key, ylabel in ((axes[0], "density", "density (fraction active)"),
                            (axes[1], "itop_rate", "layer R_s")):
        for i, (r, layers) in enumerate(zip(reps, last_layers, strict=True)):
            xs = [j + (i - (n_bars - 1) / 2) * bar for j in range(len(names))]
            ys = [_num(layers.get(n, {}).get(key)) for n in names]
            sparsity = _fmt_value("target_sparsity", r.get("target_sparsity"))
            label = f"{r.get('method')} ({r.name}, s={sparsity})"
            ax.bar(xs, [y if math.isfinite(y) else 0.0 for y in ys], width=bar,
                   color=colors[str(r.get("method"))],
                   edgecolor="black", linewidth=0.4, label=label)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.05)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_title(f"Per-layer density and R_s at the last epoch ({reps[0].get('model')})")
    axes[0].legend(fontsize=8, loc="best")
    axes[1].set_xticks(range(len(names)))
    rotate = len(names) > 5 or max(len(_short_layer(n)) for n in names) > 12
    axes[1].set_xticklabels([_short_layer(n) for n in names], rotation=45 if rotate else 0,
                            ha="right" if rotate else "center", fontsize=8)
    axes[1].set_xlabel("layer")
    return _save(fig, Path(path))


def plot_lifetimes(runs: Sequence[Run], path: str | os.PathLike,
                   by: Sequence[str] | None = None) -> Path:
    """Lifetimes of pruned (regrown then pruned) weights, one histogram per group (ΔT).

    Sums the runs' ``lifetime_histogram`` (lifetime in steps -> count) over each group and
    shows the fraction of the group's pruned weights per lifetime.

    Args:
        runs: Runs from :func:`collect`.
        path: PNG file to write.
        by: Grouping keys (see :func:`aggregate`).

    Returns:
        ``path``.

    Raises:
        SkipPlot: No run pruned any weight.
    """
    hists = []
    for g in aggregate(runs, by):
        total: dict[float, float] = {}
        unreliable = pruned = 0.0
        for r in g.runs:
            h = r.summary.get("lifetime_histogram")
            if not isinstance(h, dict):
                continue
            for k, c in h.items():
                if _finite(c) and c > 0:
                    try:
                        life = float(k)
                    except ValueError:
                        continue
                    total[life] = total.get(life, 0.0) + float(c)
            lt = r.summary.get("lifetime") or {}
            if _finite(lt.get("pruned")) and _finite(lt.get("fraction_unreliable")):
                pruned += lt["pruned"]
                unreliable += lt["pruned"] * lt["fraction_unreliable"]
        if total:
            hists.append((g, total, unreliable / pruned if pruned else float("nan")))
    if not hists:
        raise SkipPlot("no weight was pruned and regrown (empty lifetime histograms)")
    fig = _figure()
    ax = fig.add_subplot()
    colors = _group_colors(len(hists))
    values = sorted({v for _, h, _ in hists for v in h})
    for i, ((g, h, unrel), color) in enumerate(zip(hists, colors, strict=True)):
        n = sum(h.values())
        label = f"{g.label} ({int(n)} pruned"
        label += f", {unrel:.0%} unreliable)" if math.isfinite(unrel) and unrel > 0 else ")"
        if len(values) <= 24:  # few distinct lifetimes (multiples of ΔT): bars per value
            bar = 0.8 / len(hists)
            xs = [j + (i - (len(hists) - 1) / 2) * bar for j in range(len(values))]
            ax.bar(xs, [h.get(v, 0.0) / n for v in values], width=bar, color=color, label=label,
                   edgecolor="black", linewidth=0.3)
        else:
            import numpy as np

            lo, hi = max(values[0], 1.0), max(values[-1], 1.0)
            log_x = hi / lo > 30
            if log_x:
                edges = np.geomspace(lo, hi * 1.001, 31)
            else:
                edges = np.linspace(values[0], values[-1] * 1.001 + 1, 31)
            data = [max(v, lo) if log_x else v for v in h]
            ax.hist(data, bins=edges, weights=[c / n for c in h.values()], histtype="step",
                    linewidth=1.8, color=color, label=label)
            if log_x:
                ax.set_xscale("log")
    if len(values) <= 24:
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels([f"{v:g}" for v in values], rotation=45 if len(values) > 10 else 0, fontsize=8)
    ax.set_xlabel("lifetime of a pruned weight (steps from growth to pruning)")
    ax.set_ylabel("fraction of pruned weights")
    ax.set_title("Lifetimes of regrown weights before they were pruned")
    ax.grid(True, axis="y", alpha=0.3)
    _outside_legend(fig, ax)
    return _save(fig, Path(path))


def plot_reliable_itop(runs: Sequence[Run], path: str | os.PathLike,
                       by: Sequence[str] | None = None) -> Path:
    """R_s and reliable R_s side by side per group (bars with std error bars).

    Args:
        runs: Runs from :func:`collect`.
        path: PNG file to write.
        by: Grouping keys (see :func:`aggregate`).

    Returns:
        ``path``.

    Raises:
        SkipPlot: No run has an R_s.
    """
    groups = [g for g in aggregate(runs, by) if g.stats["itop_rate"].n or g.stats["reliable_itop_rate"].n]
    if not groups:
        raise SkipPlot("no run has an ITOP rate")
    labels = [g.label for g in groups]
    width = min(max(7.5, 0.9 * len(groups) + 2.5), 28.0)
    fig = _figure(width, 5.0)
    ax = fig.add_subplot()
    for offset, key, label, color, hatch in ((-0.2, "itop_rate", "R_s", "#4C72B0", None),
                                             (0.2, "reliable_itop_rate", "reliable R_s", "#DD8452", "//")):
        stats = [g.stats[key] for g in groups]
        ax.bar([i + offset for i in range(len(groups))],
               [s.mean if s.n else 0.0 for s in stats], width=0.4,
               yerr=[_err(s) for s in stats], capsize=3, color=color, hatch=hatch,
               edgecolor="black", linewidth=0.4, label=label)
    ax.set_xticks(range(len(groups)))
    rotate = len(groups) > 4 or max(len(t) for t in labels) > 18
    ax.set_xticklabels(labels, rotation=30 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    ax.set_ylabel("ITOP rate (fraction of weights)")
    ax.set_ylim(0, 1.05)
    ax.set_title("R_s and reliable R_s (weights active long enough to be trained), mean ± std")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    return _save(fig, Path(path))


class _PlotSpec(NamedTuple):
    filename: str
    title: str
    caption: str
    fn: Callable[..., Path]


PLOTS: tuple[_PlotSpec, ...] = (
    _PlotSpec("accuracy_vs_itop.png", "Test accuracy vs R_s",
              "One point per group (mean over seeds, bars: std); colour: method, marker: sparsity.",
              plot_accuracy_vs_itop),
    _PlotSpec("itop_over_steps.png", "R_s over training steps",
              "ITOP rate after each topology update (step function), mean over each group's seeds.",
              plot_itop_over_steps),
    _PlotSpec("accuracy_vs_sparsity.png", "Test accuracy vs sparsity",
              "One line per method (and other varying setting); dense runs as a reference line.",
              plot_accuracy_vs_sparsity),
    _PlotSpec("layers.png", "Per-layer density and R_s",
              "Last epoch of one representative run per method.", plot_layers),
    _PlotSpec("lifetimes.png", "Lifetimes of pruned weights",
              "Steps between a weight's (re)growth and its pruning, summed over each group's runs.",
              plot_lifetimes),
    _PlotSpec("accuracy_vs_parameters.png", "Test accuracy vs parameters",
              "Equal-parameter view: one point per group (mean over seeds, bars: std), parameters "
              "counting only active weights; colour: method, marker: sparsity.",
              plot_accuracy_vs_parameters),
    _PlotSpec("accuracy_vs_wall_time.png", "Test accuracy vs wall time",
              "Training wall time per run (mean over seeds, bars: std); colour: method, marker: sparsity.",
              plot_accuracy_vs_wall_time),
    _PlotSpec("reliable_itop.png", "Reliable R_s beside R_s",
              "Reliable R_s counts a weight only once it stayed active for the reliable threshold "
              "(ΔT by default).", plot_reliable_itop),
)



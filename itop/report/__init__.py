"""Reports over finished runs: tables of mean ± std over seeds and the paper's figures.

``itop report RUN_DIRS...`` reads the run folders written by ``itop train`` (``summary.json``,
``config.yaml``, ``metrics.jsonl``), groups runs that differ only by seed, and writes a folder
with one Markdown (or self-contained HTML) report plus one PNG per plot::

    report.md / report.html      header, tables, the plots embedded
    groups.csv, runs.csv         the tables as CSV
    accuracy_vs_itop.png         test accuracy vs R_s (the paper's key figure)
    itop_over_steps.png          R_s during training (step function of the updates)
    accuracy_vs_sparsity.png     test accuracy vs sparsity per method
    layers.png                   per-layer density and R_s of one run per method
    lifetimes.png                lifetimes of pruned weights (from the lifetime histograms)
    reliable_itop.png            reliable R_s beside R_s

A plot the runs cannot support (for example accuracy vs sparsity when every run has the same
sparsity) is skipped and the report says why. Four steps, one module each:
:mod:`~itop.report.read` (:func:`collect`), :mod:`~itop.report.aggregate` (:func:`aggregate`),
:mod:`~itop.report.plots` (the ``plot_*`` functions) and :mod:`~itop.report.render`
(:func:`write_report`).
"""

from .aggregate import GROUP_KEYS, METRICS, Group, Stat, aggregate, varying_keys
from .plots import (
    PLOTS,
    SkipPlot,
    itop_curve,
    plot_accuracy_vs_itop,
    plot_accuracy_vs_parameters,
    plot_accuracy_vs_sparsity,
    plot_accuracy_vs_wall_time,
    plot_itop_over_steps,
    plot_layers,
    plot_lifetimes,
    plot_reliable_itop,
)
from .read import Run, collect
from .render import write_report

__all__ = [
    "GROUP_KEYS",
    "METRICS",
    "PLOTS",
    "Group",
    "Run",
    "SkipPlot",
    "Stat",
    "aggregate",
    "collect",
    "itop_curve",
    "plot_accuracy_vs_itop",
    "plot_accuracy_vs_parameters",
    "plot_accuracy_vs_wall_time",
    "plot_accuracy_vs_sparsity",
    "plot_itop_over_steps",
    "plot_layers",
    "plot_lifetimes",
    "plot_reliable_itop",
    "varying_keys",
    "write_report",
]

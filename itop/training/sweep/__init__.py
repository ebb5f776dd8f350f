"""Sweeps: a grid of training runs from one YAML file (``itop sweep``).

A sweep file describes a study as a base config plus a grid of values; every point of the grid
is one ``itop train`` run. The same file holds several *scales* of the study: ``smoke``
(seconds, for tests), ``cpu`` (a laptop-sized version) and ``paper`` (the published setting).

File format (YAML)::

    name: itop-rate                  # the sweep's folder is <out_dir>/<name>-<scale>
    description: free text           # optional
    base:                            # config keys shared by every run (any `itop train` key)
      batch_size: 128
    grid:                            # key -> list of values; the product is the runs
      seed: [0, 1, 2]                # the first key varies slowest (put seed first to get
      method: [rigl, set]            # one complete seed early)
      update_interval: [100, never]  # `never`: no topology update at all (see below)
    runs_extra:                      # optional: more runs, each merged onto base and crossed
      - {method: rigl-itop, multiplier: 2}  # with the grid keys it does not set
    rules:                           # optional: keys set on the runs whose base + grid values
      - when: {method: rigl-itop}    # match every key of `when` (all matching rules apply,
        set: {update_interval: 50}   # in order; a rule sees the grid values, not other rules)
    exclude:                         # optional: drop every run whose final values match all keys
      - {method: set, update_interval: never}
    scales:                          # each scale the sweep can run at
      smoke: {base: {...}, grid: {...}}
      cpu: {}
      paper: {base: {...}}

A scale's ``base`` and ``grid`` are merged key by key onto the top-level ones (a grid key given
at a scale replaces that key's list); its ``runs_extra``, ``rules`` and ``exclude``, when given,
replace the top-level lists. Command-line overrides (``--data-dir``) come last; they may not
touch the keys the sweep varies. Grid values may be ``null``, which (as in any config) means the key's default:
for the sparsifier keys, the method's preset. ``update_interval: never`` (as in ``itop
train``) means "no topology updates with this method" (a static mask that keeps the method's
name and every other setting). Such runs need ``reliable_steps`` set, since the reliable R_s
threshold defaults to ΔT.

Runs whose resolved configs (method presets filled in) are identical are run once: dense
training ignores ``sparsity``, so ``{method: dense}`` crossed with four sparsities is one run
per seed. Every run is validated before any starts; unknown keys fail with the nearest valid
name. A run is named after the values that vary across the sweep, e.g.
``rigl-s0.98-dt100-b128-x1-seed0``, so names are deterministic and a rerun finds its folders:
completed runs (``summary.json`` with ``completed: true``) are skipped, interrupted ones resume
from their last checkpoint (each run is ``itop train ... --resume auto``).
"""

from .plan import (
    CONTROL_KEYS,
    SCALES,
    RunResult,
    RunSpec,
    SweepPlan,
    expand,
    load_sweep,
    plan_sweep,
)
from .run import format_table, run_sweep

__all__ = [
    "CONTROL_KEYS",
    "SCALES",
    "RunResult",
    "RunSpec",
    "SweepPlan",
    "expand",
    "format_table",
    "load_sweep",
    "plan_sweep",
    "run_sweep",
]

"""Dynamic sparse training inside training frameworks.

* :mod:`itop.integrations.hf`: :class:`~itop.integrations.hf.ItopCallback` for Hugging Face
  ``transformers.Trainer`` (``pip install 'itop[hf]'``).
* :mod:`itop.integrations.lightning`: :class:`~itop.integrations.lightning.ItopCallback` for
  ``lightning.Trainer`` (``pip install 'itop[lightning]'``).

Both build the sparsifier once the framework has created the optimizer, advance it once per
optimizer step (so ΔT and every schedule count optimizer steps, with gradient accumulation
too, and RigL sees the accumulated gradient before the framework zeroes it), report sparsity
and the ITOP rate R_s in the framework's logs, and save the sparsifier's state with the
framework's checkpoints so that a resumed run continues exactly. The submodules import their
framework; this package imports neither.
"""

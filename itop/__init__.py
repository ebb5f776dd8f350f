"""itop: dynamic sparse training with In-Time Over-Parameterization tracking.

Liu, Yin, Mocanu & Pechenizkiy, "Do We Actually Need Dense Over-Parameterization? In-Time
Over-Parameterization in Sparse Training", ICML 2021 (arXiv:2102.02887).

Three lines add dynamic sparse training to a PyTorch loop::

    sparsifier = itop.build("rigl-itop", model, optimizer, sparsity=0.98, total_steps=T)
    ...
    loss.backward(); optimizer.step(); sparsifier.step()
    sparsifier.itop_rate()

Layers: the engine lives at the top of the package (``sparsifier``, ``criteria``,
``distributions``, ``schedules``, ``tracker``, ``optim_state``, ``methods``, ``lottery``);
orchestration (run configs, the training loop, checkpoints, sweeps) in :mod:`itop.training`;
reports in :mod:`itop.report`; the command line in :mod:`itop.cli`; callbacks for the Hugging
Face Trainer and Lightning in :mod:`itop.integrations` (``hf``, ``lightning``).
"""

from . import (
    criteria,
    distributed,
    distributions,
    flops,
    integrations,
    lottery,
    pruning,
    schedules,
    sparse,
    storage,
)
from .criteria import Criterion, LayerContext, ScoreCriterion
from .errors import (
    CheckpointError,
    ConfigError,
    DataNotFoundError,
    DivergenceError,
    Interrupted,
    ItopError,
)
from .initialization import rescale_to_sparse_fan_in
from .lottery import IterativeMagnitudePruning
from .methods import (
    METHODS,
    Method,
    SparseConfig,
    build,
    from_config,
    get_method,
    list_methods,
    register_method,
    resolve_config,
)
from .registry import Registry
from .schedules import ConstantDrop, CosineDrop, LinearDrop, UpdateSchedule
from .sparsifier import LayerStats, Sparsifier
from .targets import Target, TargetSelector, unwrap_model
from .tracker import ExplorationTracker

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "CheckpointError",
    "ConfigError",
    "ConstantDrop",
    "CosineDrop",
    "Criterion",
    "DataNotFoundError",
    "DivergenceError",
    "ExplorationTracker",
    "Interrupted",
    "ItopError",
    "IterativeMagnitudePruning",
    "LayerContext",
    "LayerStats",
    "LinearDrop",
    "Method",
    "Registry",
    "ScoreCriterion",
    "SparseConfig",
    "Sparsifier",
    "Target",
    "TargetSelector",
    "UpdateSchedule",
    "__version__",
    "build",
    "criteria",
    "distributed",
    "distributions",
    "flops",
    "integrations",
    "pruning",
    "from_config",
    "get_method",
    "list_methods",
    "lottery",
    "register_method",
    "rescale_to_sparse_fan_in",
    "resolve_config",
    "schedules",
    "sparse",
    "storage",
    "unwrap_model",
]

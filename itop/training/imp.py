"""``itop train --method imp``: the rounds of :class:`~itop.lottery.IterativeMagnitudePruning`,
each a full run with its own folder (``<name>/round-K``), checkpoints and summary.

The run folder gets a final summary whose R_s counts every weight active in any round (1.0:
round 0 is dense) and whose training FLOPs add up all rounds. An interrupted IMP run resumes
round by round: finished rounds are rebuilt from their checkpoints, the rewind weights from
``round-0/rewind.pt``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..lottery import IterativeMagnitudePruning
from .config import RunConfig, dump_config
from .progress import StepInfo
from .trainer import Trainer

__all__ = ["train_imp"]

log = logging.getLogger(__name__)


def train_imp(cfg: RunConfig, on_step: Callable[[StepInfo], None] | None = None) -> dict[str, Any]:
    """Train every round of iterative magnitude pruning with rewinding; returns the summary."""
    sc = cfg.sparse_config()
    imp = IterativeMagnitudePruning(cfg.sparsity, sc.rounds, sc.rewind_step, sc)
    base = cfg.run_name()
    root = Path(cfg.out_dir) / base
    summaries = []
    training_flops = 0.0
    dense_run_flops = None
    trainer = None
    for k in range(imp.num_trainings):
        round_cfg = cfg.replace(name=f"{base}/round-{k}", sparsity=imp.round_sparsity(k))
        trainer = Trainer(round_cfg, on_step, masks=imp.masks, init_state=imp.rewind_state if k else None,
                          capture_step=sc.rewind_step if k == 0 else None, sparse_config=imp.round_config(k))
        log.info("IMP round %d/%d: sparsity %.4f", k, imp.rounds, trainer.sparsifier.actual_sparsity())
        summary = trainer.fit()
        summaries.append(summary)
        if k == 0:
            captured = trainer.load_captured()
            if captured is None:
                raise ConfigError(
                    f"rewind_step {sc.rewind_step} is beyond round 0's {trainer.progress.step} steps; lower it"
                )
            imp.rewind_state = captured
            dense_run_flops = trainer.flops.dense_equivalent
        training_flops += trainer.flops.total
        imp.end_round(k, trainer.model, trainer.sparsifier)
    final = dict(summaries[-1])
    final.update({
        "run": base, "method": "imp", "rounds": imp.rounds, "run_dir": str(root),
        "itop_rate": imp.itop_rate(),
        "training_flops": training_flops,
        "training_flops_relative": training_flops / dense_run_flops if dense_run_flops else None,
        "round_summaries": [
            {"round": i, "sparsity": s["sparsity"], "test_acc_selected": s["test_acc_selected"],
             "final_test_acc": s["final_test_acc"], "run_dir": s["run_dir"]} for i, s in enumerate(summaries)
        ],
        "wall_time_s": sum(s["wall_time_s"] for s in summaries),
    })
    if trainer is not None and trainer.is_main:
        root.mkdir(parents=True, exist_ok=True)
        (root / "summary.json").write_text(json.dumps(final, indent=2) + "\n")
        dump_config(cfg.resolved(), root / "config.yaml")
    return final

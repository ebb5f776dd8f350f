"""Run configuration: one flat set of keys shared by YAML files and ``--key value`` overrides.

A run is described by :class:`RunConfig`. Every field is a config key; the sparsifier keys
(``update_interval``, ``drop_fraction``, ...) default to ``None``, meaning "the method's
preset" (see ``itop list``). :func:`load_config` reads a YAML file, applies overrides, rejects
unknown keys with the nearest valid name, and validates values, so bad input fails before any
work starts. The resolved config (method presets filled in) is written next to the results.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .methods import SparseConfig, get_method, resolve_config

__all__ = ["NEVER", "RunConfig", "SPARSE_KEYS", "coerce_value", "dump_config", "load_config", "parse_overrides", "read_yaml"]

SPARSE_KEYS = [k for k in SparseConfig.keys() if k not in ("sparsity", "seed")]

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
NEVER = "never"  # update_interval value: no topology updates


@dataclass
class RunConfig:
    """Everything one training run needs. Keys are also CLI flags (``--batch-size 64``).

    Data: ``dataset``, ``data_dir``, ``val_fraction``, ``download``, ``num_workers``,
    ``augment``. Model: ``model``. Optimisation: ``optimizer`` (sgd/adam/adamw), ``lr``,
    ``momentum``, ``nesterov``, ``weight_decay``, ``no_decay_norm`` (no weight decay on
    normalisation and bias parameters), ``batch_size`` (per process), ``epochs``,
    ``multiplier`` (extended training: scales epochs and every schedule defined as a fraction
    of training, as in the paper's 2x/5x runs; ΔT is not scaled, so longer runs make more
    updates), ``lr_schedule`` (step/cosine/constant), ``lr_milestones`` (fractions of training
    for the step schedule), ``lr_gamma``, ``warmup_epochs``, ``label_smoothing``, ``grad_clip``,
    ``lr_reference_batch`` (when set, the learning rate is ``lr * global_batch /
    lr_reference_batch``, the linear scaling rule). Performance: ``amp`` (none/bf16/fp16; fp16
    uses a GradScaler), ``channels_last``, ``compile`` (``torch.compile`` the model),
    ``dist_backend`` (auto/nccl/gloo under torchrun).
    Sparsity: ``method``, ``sparsity`` and every :class:`~itop.methods.SparseConfig` key.
    Run control: ``threads`` (torch CPU threads of this process; default: torch's choice),
    ``seed``, ``device``, ``out_dir``, ``name``, ``eval_every``,
    ``checkpoint_every_steps``, ``keep_checkpoints``, ``resume``, ``max_steps`` (stop early,
    for smoke tests), ``tensorboard``, ``progress``.
    """

    # data
    dataset: str = "digits"
    data_dir: str | None = None
    val_fraction: float = 0.1
    download: bool = True
    num_workers: int = 0
    augment: bool = True
    # model
    model: str = "lenet-300-100"
    # optimisation
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    no_decay_norm: bool = False
    batch_size: int = 128
    epochs: int = 10
    multiplier: float = 1.0
    lr_schedule: str = "step"
    lr_milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    lr_reference_batch: int | None = None
    # performance (CUDA)
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    dist_backend: str = "auto"
    # sparsity
    method: str = "rigl-itop"
    sparsity: float = 0.9
    distribution: str | None = None
    erk_power_scale: float | None = None
    prune: str | None = None
    grow: str | None = None
    update_interval: int | str | None = None
    update_start: int | None = None
    update_end: float | None = None
    drop_fraction: float | None = None
    final_drop_fraction: float | None = None
    drop_schedule: str | None = None
    grow_init: str | None = None
    keep_regrown: bool | None = None
    drop_rounding: str | None = None
    sparse_init: bool | None = None
    keep_first_dense: bool | None = None
    keep_last_dense: bool | None = None
    layer_sparsity: dict[str, float] | None = None
    exclude: list[str] | None = None
    reliable_steps: int | None = None
    initial_sparsity: float | None = None
    prune_start: float | None = None
    prune_end: float | None = None
    global_pruning: bool | None = None
    init_pruning: str | None = None
    init_batches: int | None = None
    synflow_rounds: int | None = None
    rounds: int | None = None
    rewind_step: int | None = None
    execution: str | None = None
    # run control
    threads: int | None = None
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs"
    name: str | None = None
    eval_every: int = 1
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 2
    resume: str | None = None
    max_steps: int | None = None
    tensorboard: bool = True
    progress: str = "auto"

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def sparse_overrides(self) -> dict[str, Any]:
        """The sparsifier keys the user set (``None`` ones fall back to the method preset).

        ``update_interval: never`` means no topology updates with this method (a static mask
        that keeps every other setting of the method).
        """
        out = {k: getattr(self, k) for k in SPARSE_KEYS if getattr(self, k) is not None}
        if out.get("update_interval") == NEVER:
            out["update_interval"] = None
        out["sparsity"] = self.sparsity
        out["seed"] = self.seed
        return out

    def sparse_config(self) -> SparseConfig:
        return resolve_config(self.method, **self.sparse_overrides())

    def resolved(self) -> dict[str, Any]:
        """This config with the method's preset values filled in (what actually runs)."""
        out = self.to_dict()
        sparse = self.sparse_config().to_dict()
        for k in SPARSE_KEYS + ["sparsity"]:
            out[k] = sparse[k]
        if out["update_interval"] is None:  # written so that reading it back means the same
            out["update_interval"] = NEVER
        return out

    def run_name(self) -> str:
        if self.name:
            return self.name
        return f"{self.method}-{self.model}-{self.dataset}-s{self.sparsity:g}-seed{self.seed}"

    def validate(self) -> RunConfig:
        """Check values; raise :class:`ConfigError` naming the key and the fix."""
        from .data import get_dataset_spec
        from .models import get_model_spec

        get_method(self.method)
        get_dataset_spec(self.dataset)
        get_model_spec(self.model)
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(
                f"sparsity must be in [0, 1) (fraction of weights set to zero), got {self.sparsity}; "
                "e.g. --sparsity 0.9"
            )
        _positive("batch_size", self.batch_size)
        _positive("epochs", self.epochs)
        _positive("multiplier", self.multiplier)
        _positive("lr", self.lr)
        _positive("eval_every", self.eval_every)
        _positive("keep_checkpoints", self.keep_checkpoints)
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise _choice("optimizer", self.optimizer, ["sgd", "adam", "adamw"])
        if self.lr_schedule not in ("step", "cosine", "constant"):
            raise _choice("lr_schedule", self.lr_schedule, ["step", "cosine", "constant"])
        if self.amp not in ("none", "bf16", "fp16"):
            raise _choice("amp", self.amp, ["none", "bf16", "fp16"])
        if self.dist_backend not in ("auto", "nccl", "gloo"):
            raise _choice("dist_backend", self.dist_backend, ["auto", "nccl", "gloo"])
        if self.lr_reference_batch is not None:
            _positive("lr_reference_batch", self.lr_reference_batch)
        if self.progress not in ("auto", "bar", "lines", "none"):
            raise _choice("progress", self.progress, ["auto", "bar", "lines", "none"])
        if any(not 0.0 < m < 1.0 for m in self.lr_milestones):
            raise ConfigError(f"lr_milestones are fractions of training in (0, 1), got {self.lr_milestones}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs < 0 or self.weight_decay < 0 or self.checkpoint_every_steps < 0:
            raise ConfigError("warmup_epochs, weight_decay and checkpoint_every_steps must be >= 0")
        if self.max_steps is not None:
            _positive("max_steps", self.max_steps)
        if self.threads is not None:
            _positive("threads", self.threads)
        if isinstance(self.update_interval, str) and self.update_interval != NEVER:
            raise ConfigError(
                f"update_interval must be a number of steps or 'never', got '{self.update_interval}'"
            )
        self.sparse_config().validate()  # unknown sparse names and bad values surface now
        return self


def _positive(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{key} must be a positive number, got {value!r}")


def _choice(key: str, value: Any, options: list[str]) -> ConfigError:
    close = difflib.get_close_matches(str(value), options, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{key} '{value}' is not one of {', '.join(options)}{hint}")


def _check_key(key: str, source: str) -> str:
    norm = key.replace("-", "_")
    valid = RunConfig.keys()
    if norm not in valid:
        close = difflib.get_close_matches(norm, valid, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown config key '{key}' in {source}{hint} (see `itop train --help`)")
    return norm


_TYPES = {f.name: f.type for f in dataclasses.fields(RunConfig)}


def coerce_value(key: str, value: Any) -> Any:
    """Type-check one config value against its field (ints given for floats are fine)."""
    if value is None or (key == "update_interval" and value == NEVER):
        return value
    if key == "update_interval" and isinstance(value, str):
        raise ConfigError(f"update_interval must be a number of steps or '{NEVER}', got '{value}'")
    kind = _TYPES[key]
    if kind.startswith("float") and not isinstance(value, bool):
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    checks = {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, float),
        "bool": lambda v: isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "list": lambda v: isinstance(v, list),
        "dict": lambda v: isinstance(v, dict),
    }
    base = kind.split(" ")[0].split("[")[0].rstrip("|")
    if base in checks and not checks[base](value):
        if base == "str":
            return str(value)
        raise ConfigError(f"config key '{key}' expects {kind}, got {value!r}")
    return value


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Parse ``["--key", "value", "--flag", ...]``; values are read as YAML scalars.

    ``--key=value`` also works; a key with no value means ``true``.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or len(token) == 2:
            raise ConfigError(f"expected --key value, got '{token}'")
        key, _, inline = token[2:].partition("=")
        if inline:
            raw, i = inline, i + 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            raw, i = args[i + 1], i + 2
        else:
            raw, i = "true", i + 1
        key = _check_key(key, "the command line")
        try:
            out[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[key] = raw
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Build a validated :class:`RunConfig` from a YAML file and overrides.

    Args:
        path: YAML file with a flat mapping of keys; ``None`` starts from the built-in demo
            (RigL-ITOP on scikit-learn's digits, about a minute on two CPU cores).
        overrides: Keys set on top of the file (e.g. from the command line).
    """
    source = Path(path) if path is not None else DEMO_CONFIG
    data = read_yaml(source, "config file")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {source} must hold a mapping of key: value")
    values: dict[str, Any] = {}
    for key, value in data.items():
        values[_check_key(str(key), str(source))] = value
    for key, value in (overrides or {}).items():
        values[_check_key(key, "the overrides")] = value
    values = {k: coerce_value(k, v) for k, v in values.items()}
    return RunConfig(**values).validate()


def read_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file (empty -> ``{}``); unreadable or invalid files give a one-line error."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}; check the path given to -c") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"{what} {path} is not valid YAML{where}; fix the syntax") from None


def dump_config(values: dict[str, Any], path: str | Path) -> None:
    """Write a config mapping as YAML (keys in definition order)."""
    Path(path).write_text(yaml.safe_dump(values, sort_keys=False))

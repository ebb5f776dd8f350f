"""Run configuration: one schema for YAML files, ``--key value`` flags, sweeps and run identity.

A run is a :class:`RunConfig`. Its keys are flat (a YAML file is one mapping, every key is a
flag), but they come from one schema with two sources, each key declared once:

* the run's own fields (data, model, optimisation, performance, run control), declared on
  :class:`RunConfig`;
* the sparsifier's fields, declared on :class:`~itop.methods.SparseConfig`. The run config
  *contains* them: ``RunConfig.sparse`` holds the ones the user set, the others come from the
  method's preset, and :meth:`RunConfig.sparse_config` resolves them once.

Each key carries its metadata where it is declared (``dataclasses.field(metadata=...)``):

* ``role``: ``"identity"`` (defines which run this is: a checkpoint of another run is refused),
  ``"control"`` (does not change what a run computes: threads, folders, logging; a sweep reuses
  a run folder made with other values) or, by default, ``"setting"``;
* ``label`` and ``rank``: how the key appears in sweep run names (``sparsity`` -> ``s0.98``; a
  label of ``""`` shows the value alone; parts are ordered by rank, default 50, then by config
  order, so the method comes first and the seed last);
* ``words``: words that stand for values (``update_interval: never`` is ``None``, no updates);
* ``midrun`` (settings only): whether a resumed run can take a new value from the resume step
  (``True``: the value is read again at every step, e.g. the learning rate or the drop fraction)
  or, as a string, why it cannot (e.g. the distribution, which decided the masks at step 0).
  A key that does not say is treated as one that cannot change.

Resuming is a contract (:func:`resume_changes`): a checkpoint of another run (an identity key
differs) is refused; a changed setting is refused too unless the user names it in
``resume_override``, and then only if its ``midrun`` says it can be applied.

So a new key is one field in one place: its type, default, documentation and role travel with
it into validation, the CLI's ``--help``, ``config.yaml``, run identity and sweep names.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, check_sparsity, did_you_mean
from ..methods import SparseConfig, get_method, resolve_config

__all__ = [
    "CONTROL",
    "IDENTITY",
    "KEYS",
    "NEVER",
    "SETTING",
    "Key",
    "RunConfig",
    "coerce_value",
    "resume_changes",
    "dump_config",
    "load_config",
    "meaning",
    "parse_overrides",
    "read_yaml",
]

log = logging.getLogger(__name__)

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
NEVER = "never"  # update_interval value: no topology updates

IDENTITY, SETTING, CONTROL = "identity", "setting", "control"


def key(default: Any = None, *, role: str = SETTING, label: str | None = None, rank: int | None = None,
        factory: Any = None, midrun: bool | str | None = None) -> Any:
    """A config field with its schema metadata (see the module docstring)."""
    metadata = {"role": role, "label": label, "rank": rank, "midrun": midrun}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs. Keys are also CLI flags (``--batch-size 64``).

    Data: ``dataset``, ``data_dir``, ``data_file`` (the file of a file-based dataset such as
    ``text``; the same as ``data_args: {data_file: ...}``), ``data_args`` (dataset options, e.g.
    ``crop_size`` for ImageNet), ``val_fraction``, ``download``, ``num_workers``, ``augment``. Model: ``model``,
    ``model_args`` (options of the model factory, e.g. ``{hidden: [4096, 4096]}``).
    Optimisation: ``optimizer`` (sgd/adam/adamw), ``lr``, ``momentum``, ``nesterov``,
    ``weight_decay``, ``no_decay_norm`` (no weight decay on normalisation and bias parameters),
    ``batch_size`` (per process and micro-batch), ``accumulate`` (gradient accumulation: micro-batches
    per optimizer step, so the global batch is ``batch_size x accumulate x processes``; ΔT and
    every schedule count optimizer steps), ``epochs``, ``multiplier`` (extended training: scales epochs
    and every schedule defined as a fraction of training, as in the paper's 2x/5x runs; ΔT is
    not scaled, so longer runs make more updates), ``lr_schedule`` (step/cosine/constant),
    ``lr_milestones`` (fractions of training for the step schedule), ``lr_gamma``,
    ``warmup_epochs``, ``label_smoothing``, ``grad_clip``, ``lr_reference_batch`` (when set, the
    learning rate is ``lr * global_batch / lr_reference_batch``, the linear scaling rule).
    Performance: ``amp`` (none/bf16/fp16; fp16 uses a GradScaler), ``channels_last``,
    ``compile`` (``torch.compile`` the model), ``dist_backend`` (auto/nccl/gloo under torchrun).
    Sparsity: ``method``, ``sparsity`` and every :class:`~itop.methods.SparseConfig` key (held
    in :attr:`sparse`; unset keys take the method's preset). Run control: ``threads`` (torch CPU
    threads of this process; default: torch's choice), ``seed`` (also seeds the sparsifier),
    ``device``, ``out_dir``, ``name``, ``eval_every``, ``checkpoint_every_steps``,
    ``keep_checkpoints``, ``resume`` (``none``; ``auto``: the newest good checkpoint of this run;
    ``restart``: start over, deleting this run's results; or a checkpoint file),
    ``resume_override`` (settings a resume may change, applied from the resume step, e.g.
    ``[lr]``; on the command line ``--resume-override lr,grad_clip``), ``max_steps`` (stop early, for smoke tests),
    ``tensorboard``, ``progress``.

    Build one with :meth:`from_flat` (or :func:`load_config`); read a key with :meth:`get` or as
    an attribute (a sparsifier key the user did not set reads ``None``: the method's preset).
    """

    # data
    dataset: str = key("digits", role=IDENTITY, label="", rank=2)
    data_dir: str | None = key(None, role=CONTROL)
    data_file: str | None = key(None, midrun="it changes the data, and so the samples and the steps of an epoch")
    data_args: dict[str, Any] = key(role=SETTING, factory=dict, midrun="it changes the data, and so the "
                                    "samples and the steps of an epoch")
    val_fraction: float = key(0.1, midrun="it sizes the validation split, and so the training set and the "
                              "steps of an epoch")
    download: bool = key(True, role=CONTROL)
    num_workers: int = key(0, role=CONTROL)
    augment: bool = key(True, midrun=True)
    # model
    model: str = key("lenet-300-100", role=IDENTITY, label="", rank=1)
    model_args: dict[str, Any] = key(role=IDENTITY, factory=dict)
    # optimisation
    optimizer: str = key("sgd", label="", midrun="the saved optimizer state belongs to the optimizer "
                         "it was written with")
    lr: float = key(0.1, midrun=True)
    momentum: float = key(0.9, midrun=True)
    nesterov: bool = key(True, midrun=True)
    weight_decay: float = key(5e-4, midrun=True)
    no_decay_norm: bool = key(False, midrun="it changes the optimizer's parameter groups, which the "
                              "saved optimizer state must match")
    batch_size: int = key(128, role=IDENTITY, label="b", rank=5)
    accumulate: int = key(1, role=IDENTITY, label="accum", rank=5)
    epochs: int = key(10, role=IDENTITY, label="e", rank=7)
    multiplier: float = key(1.0, role=IDENTITY, label="x", rank=6)
    lr_schedule: str = key("step", label="", midrun=True)
    lr_milestones: list[float] = key(factory=lambda: [0.5, 0.75], midrun=True)
    lr_gamma: float = key(0.1, midrun=True)
    warmup_epochs: float = key(0.0, midrun=True)
    label_smoothing: float = key(0.0, midrun=True)
    grad_clip: float | None = key(None, midrun=True)
    lr_reference_batch: int | None = key(None, midrun=True)
    # performance (CUDA)
    amp: str = key("none", label="", midrun=True)
    channels_last: bool = key(False, role=CONTROL)
    compile: bool = key(False, role=CONTROL)
    dist_backend: str = key("auto", role=CONTROL)
    # sparsity: the method, the target sparsity, and the SparseConfig keys the user set
    method: str = key("rigl-itop", role=IDENTITY, label="", rank=0)
    sparsity: float = key(0.9, role=IDENTITY, label="s", rank=3)
    sparse: dict[str, Any] = field(default_factory=dict)
    # run control
    threads: int | None = key(None, role=CONTROL)
    seed: int = key(0, role=IDENTITY, label="seed", rank=99)
    device: str = key("auto", role=CONTROL)
    out_dir: str = key("runs", role=CONTROL)
    name: str | None = key(None, role=CONTROL)
    eval_every: int = key(1, role=CONTROL)
    checkpoint_every_steps: int = key(0, role=CONTROL)
    keep_checkpoints: int = key(2, role=CONTROL)
    resume: str | None = key(None, role=CONTROL)
    resume_override: list[str] = key(role=CONTROL, factory=list)
    max_steps: int | None = key(None, role=CONTROL)
    tensorboard: bool = key(True, role=CONTROL)
    progress: str = key("auto", role=CONTROL)

    # -- the flat view -------------------------------------------------------------------------

    @classmethod
    def keys(cls) -> list[str]:
        """Every config key, in the order of ``config.yaml``."""
        return list(KEYS)

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from a flat mapping of config keys (sparsifier keys go into :attr:`sparse`)."""
        own, sparse = {}, {}
        for k, v in values.items():
            spec = KEYS.get(k)
            if spec is None:
                raise ConfigError(f"unknown config key '{k}'{did_you_mean(k, KEYS)} (see `itop train --help`)")
            if not spec.sparse:
                own[k] = v
            elif v is not None:  # None: the method's preset
                sparse[k] = v
        return cls(**own, sparse=sparse)

    def to_flat(self) -> dict[str, Any]:
        """Every key with the value given (``None`` for sparsifier keys left to the preset)."""
        return {k: self.get(k) for k in KEYS}

    def to_dict(self) -> dict[str, Any]:
        """The flat view (what checkpoints and sweep run files hold)."""
        return self.to_flat()

    def get(self, name: str) -> Any:
        """The value of a config key as given (a sparsifier key not set: ``None``)."""
        spec = KEYS.get(name)
        if spec is None:
            raise ConfigError(f"unknown config key '{name}'{did_you_mean(name, KEYS)}")
        if spec.sparse:
            return self.sparse.get(name)
        return getattr(self, name)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: the sparsifier keys.
        spec = KEYS.get(name)
        sparse = self.__dict__.get("sparse")
        if spec is not None and spec.sparse and sparse is not None:
            return sparse.get(name)
        raise AttributeError(f"{type(self).__name__} has no attribute '{name}'")

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some flat keys changed (sparsifier keys included)."""
        return RunConfig.from_flat({**self.to_flat(), **changes})

    # -- resolution ------------------------------------------------------------------------------

    @functools.cached_property
    def _sparse_config(self) -> SparseConfig:
        given = {k: meaning(k, v) for k, v in self.sparse.items()}
        return resolve_config(self.method, **given, sparsity=self.sparsity, seed=self.seed)

    def sparse_config(self) -> SparseConfig:
        """The sparsifier's config: the method's preset, the keys the user set, the run's
        sparsity and seed (resolved once)."""
        return self._sparse_config

    def resolved(self) -> dict[str, Any]:
        """The flat config with the method's preset values filled in (what actually runs)."""
        out = self.to_flat()
        sparse = self.sparse_config().to_dict()
        for k, spec in KEYS.items():
            if spec.sparse or k == "sparsity":
                out[k] = _to_word(k, sparse[k])
        return out

    def dataset_options(self) -> dict[str, Any]:
        """The dataset's options: ``data_args`` plus ``data_file`` when set (given once)."""
        if self.data_file is None:
            return dict(self.data_args)
        if "data_file" in self.data_args:
            raise ConfigError("data_file is given twice, as --data-file and in data_args; keep one of them")
        return {**self.data_args, "data_file": self.data_file}

    @property
    def total_epochs(self) -> int:
        """Epochs this run trains (``epochs x multiplier``, rounded, at least one)."""
        return total_epochs(self.epochs, self.multiplier)

    def run_name(self) -> str:
        if self.name:
            return self.name
        return f"{self.method}-{self.model}-{self.dataset}-s{self.sparsity:g}-seed{self.seed}"

    def identity(self) -> dict[str, Any]:
        """The values of the keys that define the run (see ``role`` in the module docstring)."""
        return {k: self.get(k) for k, spec in KEYS.items() if spec.role == IDENTITY}

    # -- validation ------------------------------------------------------------------------------

    def validate(self) -> RunConfig:
        """Check values; raise :class:`ConfigError` naming the key and the fix."""
        from ..data.registry import check_dataset_options
        from ..models.registry import check_model_options
        from .factories import AMP_MODES, LR_SCHEDULES, OPTIMIZERS, PROGRESS_MODES

        get_method(self.method)
        check_dataset_options(self.dataset, self.dataset_options())
        check_model_options(self.model, self.model_args)
        check_sparsity(self.sparsity)
        for k, spec in KEYS.items():  # nan and inf pass range checks written as comparisons
            v = self.get(k)
            if spec.type.startswith("float") and isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{k} must be a finite number, got {v!r}")
        for k in ("batch_size", "accumulate", "epochs", "multiplier", "lr", "lr_gamma", "eval_every",
                  "keep_checkpoints"):
            _positive(k, getattr(self, k))
        for k in ("lr_reference_batch", "max_steps", "threads"):
            if getattr(self, k) is not None:
                _positive(k, getattr(self, k))
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1) (0: plain SGD, the paper: 0.9), got {self.momentum!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"grad_clip is the largest gradient norm let through and must be positive, got "
                              f"{self.grad_clip!r}; leave it unset (null) for no clipping")
        OPTIMIZERS.lookup(self.optimizer)
        LR_SCHEDULES.lookup(self.lr_schedule)
        AMP_MODES.lookup(self.amp)
        PROGRESS_MODES.lookup(self.progress)
        if self.dist_backend not in ("auto", "nccl", "gloo"):
            raise ConfigError(f"dist_backend '{self.dist_backend}' is not one of auto, nccl, gloo"
                              f"{did_you_mean(self.dist_backend, ('auto', 'nccl', 'gloo'))}")
        if any(not 0.0 < m < 1.0 for m in self.lr_milestones):
            raise ConfigError(f"lr_milestones are fractions of training in (0, 1), got {self.lr_milestones}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs < 0 or self.weight_decay < 0 or self.checkpoint_every_steps < 0:
            raise ConfigError("warmup_epochs, weight_decay and checkpoint_every_steps must be >= 0")
        self._check_folders()
        self._check_resume()
        self.sparse_config().validate()  # unknown sparse names and bad values surface now
        self._warn_suspicious()
        return self

    def _check_folders(self) -> None:
        """The run folder must lie inside ``out_dir`` and be creatable there."""
        if self.name is not None:
            parts = Path(self.name).parts
            if not self.name.strip() or Path(self.name).is_absolute() or ".." in parts:
                raise ConfigError(f"name {self.name!r} must be a folder name inside out_dir (no '..', not an "
                                  "absolute path); use --out-dir to write somewhere else")
        target = Path(self.out_dir) / self.run_name()
        probe = target
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            raise ConfigError(f"run folder {target} cannot be created: {probe} is a file, not a folder; "
                              "choose another --out-dir")
        if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
            raise ConfigError(f"run folder {target} cannot be created: {probe} is not writable; "
                              "choose another --out-dir")

    def _check_resume(self) -> None:
        for k in self.resume_override:
            if k not in KEYS:
                raise ConfigError(f"resume_override names unknown key '{k}'{did_you_mean(k, KEYS)}")
        if self.resume_override and (self.resume or "none") in ("none", "restart"):
            raise ConfigError("resume_override changes settings of a resumed run: add --resume auto "
                              "(or --resume PATH), or drop --resume-override for a fresh run")

    def _warn_suspicious(self) -> None:
        """One warning line for each value that is valid but probably not what was meant."""
        if self.sparsity == 0.0 and "sparsity" not in get_method(self.method).forced:
            log.warning("sparsity 0 keeps every weight: %s trains a dense network (for the dense "
                        "baseline use --method dense)", self.method)
        if self.warmup_epochs and self.warmup_epochs >= self.total_epochs:
            log.warning("warmup_epochs %g is not shorter than training (%d epoch%s): the learning rate "
                        "never reaches lr=%g", self.warmup_epochs, self.total_epochs,
                        "" if self.total_epochs == 1 else "s", self.lr)


@dataclass(frozen=True)
class Key:
    """One config key of the schema.

    Attributes:
        name: The key (``batch_size``; the flag is ``--batch-size``).
        type: Its annotation, e.g. ``"int | None"``.
        default: The default of a run (``None`` for a sparsifier key: the method's preset).
        role: ``identity``, ``setting`` or ``control``.
        label: Prefix of its value in sweep run names (``None``: the key itself).
        rank: Order of its part in sweep run names (lower first; ties in config order).
        words: Words standing for values, e.g. ``{"never": None}``.
        sparse: Whether the key belongs to :class:`~itop.methods.SparseConfig`.
        midrun: ``True`` when a resumed run can apply a new value from the resume step, else
            why it cannot (``None``: not declared, so it cannot).
    """

    name: str
    type: str
    default: Any
    role: str = SETTING
    label: str | None = None
    rank: int = 50
    words: Mapping[str, Any] = field(default_factory=dict)
    sparse: bool = False
    midrun: bool | str | None = None

    def fixed_reason(self) -> str | None:
        """Why this key cannot take a new value when a run resumes (``None``: it can)."""
        if self.role == CONTROL or self.midrun is True:
            return None
        if self.role == IDENTITY:
            return "it defines which run this is"
        return self.midrun if isinstance(self.midrun, str) else "it declares no way to change during a run"


def _schema() -> dict[str, Key]:
    out: dict[str, Key] = {}
    # SparseConfig fields the run sets itself (sparsity: its own key; seed: the run's seed).
    own_sparse = {"sparsity", "seed"}
    for f in dataclasses.fields(RunConfig):
        if f.name == "sparse":
            for s in dataclasses.fields(SparseConfig):
                if s.name in own_sparse:
                    continue
                meta = s.metadata
                out[s.name] = Key(s.name, str(s.type), None, meta.get("role", SETTING), meta.get("label"),
                                  meta.get("rank", 50), dict(meta.get("words", {})), sparse=True,
                                  midrun=meta.get("midrun"))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        meta = f.metadata
        out[f.name] = Key(f.name, str(f.type), default, meta.get("role", SETTING), meta.get("label"),
                          meta.get("rank") if meta.get("rank") is not None else 50, midrun=meta.get("midrun"))
    return out


#: The schema: every config key, in config order.
KEYS: dict[str, Key] = _schema()


def meaning(name: str, value: Any) -> Any:
    """The value a config word stands for (``update_interval: never`` -> ``None``)."""
    words = KEYS[name].words
    return words[value] if isinstance(value, str) and value in words else value



def total_epochs(epochs: int, multiplier: float) -> int:
    """Epochs a run trains: ``epochs x multiplier``, rounded, at least one."""
    return max(1, int(round(epochs * multiplier)))


def _to_word(name: str, value: Any) -> Any:
    for word, meaning in KEYS[name].words.items() if name in KEYS else ():
        if value is meaning:
            return word  # written so that reading it back means the same
    return value


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def check_key(name: str, source: str) -> str:
    """The normalised key (``batch-size`` -> ``batch_size``); unknown keys raise with the nearest."""
    norm = str(name).replace("-", "_")
    if norm not in KEYS:
        raise ConfigError(f"unknown config key '{name}' in {source}{did_you_mean(norm, KEYS)} "
                          "(see `itop train --help`)")
    return norm


_CHECKS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, float),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
}


def coerce_value(name: str, value: Any) -> Any:
    """Type-check one config value against its key (ints given for floats are fine)."""
    spec = KEYS[name]
    if value is None and not spec.sparse and "None" not in spec.type:
        default = "" if spec.default is None else f" (default {spec.default!r})"
        raise ConfigError(f"config key '{name}' cannot be null: give a value of type {spec.type}{default}, "
                          "or leave it out")
    if value is None or (isinstance(value, str) and value in spec.words):
        return value
    kind = spec.type
    if kind == "list[str]" and isinstance(value, str):  # --resume-override lr,grad_clip
        return [v.strip() for v in value.split(",") if v.strip()]
    if kind.startswith("float") and not isinstance(value, bool):
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    base = kind.split(" ")[0].split("[")[0].rstrip("|")
    if base in _CHECKS and not _CHECKS[base](value):
        if base == "str":
            return str(value)
        words = "".join(f" or '{w}'" for w in spec.words)
        raise ConfigError(f"config key '{name}' expects {kind}{words}, got {value!r}")
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
        name, _, inline = token[2:].partition("=")
        if inline:
            raw, i = inline, i + 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            raw, i = args[i + 1], i + 2
        else:
            raw, i = "true", i + 1
        name = check_key(name, "the command line")
        try:
            out[name] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[name] = raw
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
    for name, value in data.items():
        values[check_key(str(name), str(source))] = value
    for name, value in (overrides or {}).items():
        values[check_key(name, "the overrides")] = value
    values = {k: coerce_value(k, v) for k, v in values.items()}
    return RunConfig.from_flat(values).validate()


def resume_changes(saved: Mapping[str, Any], current: RunConfig) -> tuple[dict[str, tuple[Any, Any]],
                                                                         dict[str, tuple[Any, Any]]]:
    """How ``current`` differs from the config a checkpoint was written with.

    Args:
        saved: The resolved config stored in the checkpoint (or, in checkpoints written before
            it was stored, the flat config, resolved here with today's method presets).
        current: The config of the run that resumes.

    Returns:
        ``(identity, settings)``: the changed identity keys and the changed settings, each as
        ``key -> (saved value, current value)``, compared as resolved (method presets filled in,
        so a preset that changed between itop versions counts as a change). Control keys and keys
        the checkpoint does not know (added to itop after it was written) are left out.
    """
    known = {k: v for k, v in saved.items() if k in KEYS}
    old = RunConfig.from_flat(known).resolved()  # a resolved config resolves to itself
    new = current.resolved()
    identity: dict[str, tuple[Any, Any]] = {}
    settings: dict[str, tuple[Any, Any]] = {}
    for k, spec in KEYS.items():
        if k not in known or spec.role == CONTROL or old[k] == new[k]:
            continue
        (identity if spec.role == IDENTITY else settings)[k] = (old[k], new[k])
    return identity, settings


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

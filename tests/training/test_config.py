import logging

import pytest

from itop.errors import ConfigError
from itop.training.config import (
    KEYS,
    SETTING,
    RunConfig,
    load_config,
    parse_overrides,
    resume_changes,
)


def test_overrides_parse_yaml_scalars_and_dashes():
    o = parse_overrides(["--sparsity", "0.98", "--update-interval=100", "--sparse-init",
                         "--layer-sparsity", "{fc1: 0.5}", "--name", "x"])
    assert o == {"sparsity": 0.98, "update_interval": 100, "sparse_init": True,
                 "layer_sparsity": {"fc1": 0.5}, "name": "x"}


def test_unknown_key_names_the_nearest():
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        parse_overrides(["--batchsize", "3"])
    with pytest.raises(ConfigError, match="expected --key value"):
        parse_overrides(["sparsity", "0.9"])


def test_yaml_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("dataset: digits\nsparsity: 0.8\nepochs: 3\n")
    c = load_config(f, {"epochs": 5})
    assert (c.sparsity, c.epochs) == (0.8, 5)
    assert c.update_interval is None  # from the method preset
    assert c.resolved()["update_interval"] == 4000  # rigl-itop's preset


def test_demo_is_the_default_base():
    c = load_config(None)
    assert (c.dataset, c.method, c.sparsity, c.update_interval) == ("digits", "rigl-itop", 0.9, 40)


@pytest.mark.parametrize(
    "over, match",
    [
        ({"sparsity": 1.5}, "sparsity must be in"),
        ({"method": "rigll"}, "did you mean 'rigl'"),
        ({"model": "resnet18"}, "did you mean"),
        ({"dataset": "cifar"}, "dataset"),
        ({"epochs": 0}, "epochs must be a positive"),
        ({"optimizer": "sgdd"}, "did you mean 'sgd'"),
        ({"batch_size": "big"}, "expects int"),
        ({"update_interval": 0}, "positive integer"),
        ({"lr_milestones": [0.5, 2]}, "fractions"),
    ],
)
def test_bad_values(over, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, over)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("sparsty: 0.9\n")
    with pytest.raises(ConfigError, match="did you mean 'sparsity'"):
        load_config(bad)


def test_run_name_and_keys():
    c = RunConfig(method="set", model="m", dataset="d", sparsity=0.95, seed=3)
    assert c.run_name() == "set-m-d-s0.95-seed3"
    assert "update_interval" in RunConfig.keys()


def test_every_sparsifier_key_is_a_run_config_key():
    from itop.methods import SparseConfig

    assert set(SparseConfig.keys()) <= set(RunConfig.keys())


def test_every_shipped_config_is_valid():
    import pathlib

    root = pathlib.Path(__file__).parents[2] / "configs"
    files = sorted(f for f in root.rglob("*.yaml") if "studies" not in f.parts)  # studies: sweep files
    assert len(files) >= 12
    for f in files:
        c = load_config(f)
        assert c.resolved()["update_interval"] in (1500, 4000), f


def test_update_interval_never_is_a_static_mask_that_round_trips(tmp_path):
    c = load_config(None, {"method": "rigl", "update_interval": "never"})
    assert c.sparse_config().update_interval is None
    resolved = c.resolved()
    assert resolved["update_interval"] == "never" and resolved["grow"] == "gradient"
    f = tmp_path / "r.yaml"
    from itop.training.config import dump_config

    dump_config({k: v for k, v in resolved.items() if v is not None}, f)
    assert load_config(f).sparse_config().update_interval is None
    with pytest.raises(ConfigError, match="'never'"):
        load_config(None, {"update_interval": "sometimes"})


def test_the_schema_declares_each_key_once():
    import dataclasses

    from itop.methods import SparseConfig
    from itop.training.config import CONTROL, IDENTITY, KEYS

    sparse_fields = {f.name: f for f in dataclasses.fields(SparseConfig)}
    for name, spec in KEYS.items():
        if spec.sparse:  # read from SparseConfig: same name and type, preset by default
            assert str(sparse_fields[name].type) == spec.type and spec.default is None
    assert set(sparse_fields) - {k for k, s in KEYS.items() if s.sparse} == {"sparsity", "seed"}
    # Run identity and the keys a sweep ignores come from the roles, not from lists.
    assert {k for k, s in KEYS.items() if s.role == IDENTITY} == {
        "model", "model_args", "dataset", "method", "sparsity", "batch_size", "accumulate", "epochs", "multiplier",
        "seed"}
    assert {k for k, s in KEYS.items() if s.role == CONTROL} == {
        "threads", "out_dir", "name", "resume", "progress", "tensorboard", "max_steps",
        "checkpoint_every_steps", "keep_checkpoints", "eval_every", "device", "num_workers",
        "data_dir", "download", "compile", "channels_last", "dist_backend", "resume_override"}


def test_flat_round_trip_and_one_resolution():
    c = load_config(None, {"method": "set", "drop_fraction": 0.2, "sparsity": 0.95})
    assert c.sparse == {"update_interval": 40, "drop_fraction": 0.2}  # the demo file sets ΔT
    again = RunConfig.from_flat(c.to_flat())
    assert again == c and again.resolved() == c.resolved()
    assert c.sparse_config() is c.sparse_config()  # resolved once
    sc = c.sparse_config()
    assert (sc.grow, sc.drop_fraction, sc.sparsity, sc.seed) == ("random", 0.2, 0.95, c.seed)
    changed = c.replace(drop_fraction=0.4, lr=0.01)
    assert changed.sparse_config().drop_fraction == 0.4 and changed.lr == 0.01 and c.lr != 0.01
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lr = 1.0
    with pytest.raises(ConfigError, match="did you mean 'drop_fraction'"):
        RunConfig.from_flat({"drop_fractoin": 0.1})


@pytest.mark.parametrize(
    "over, match",
    [
        ({"grad_clip": -1.0}, "grad_clip is the largest gradient norm let through and must be positive"),
        ({"grad_clip": 0}, "must be positive, got 0"),
        ({"lr": "nan"}, "lr must be a finite number, got nan"),  # --lr nan: YAML reads a string
        ({"lr": float("inf")}, "lr must be a finite number"),
        ({"weight_decay": float("nan")}, "weight_decay must be a finite number"),
        ({"warmup_epochs": float("nan")}, "warmup_epochs must be a finite number"),
        ({"drop_fraction": float("nan")}, "drop_fraction must be a finite number"),
        ({"momentum": -1}, r"momentum must be in \[0, 1\)"),
        ({"momentum": 1.5}, r"momentum must be in \[0, 1\)"),
        ({"lr_gamma": 0}, "lr_gamma must be a positive number"),
        ({"sparsity": None}, "cannot be null"),
        ({"epochs": None}, "'epochs' cannot be null: give a value of type int"),
        ({"name": "../x"}, "must be a folder name inside out_dir"),
        ({"name": "/tmp/x"}, "not an absolute path"),
        ({"name": "a/../../b"}, "no '..'"),
        ({"resume_override": "lr"}, "add --resume auto"),
        ({"resume_override": "lrr", "resume": "auto"}, "unknown key 'lrr'; did you mean 'lr'"),
    ],
)
def test_values_that_used_to_pass_or_crash(over, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, over)


def test_the_same_values_in_yaml_files(tmp_path):
    cases = {"sparsity: null": "cannot be null", "grad_clip: -1": "must be positive", "lr: .nan": "finite",
             "momentum: -1": "momentum must be in", "name: ../x": "inside out_dir"}
    for text, match in cases.items():
        f = tmp_path / "c.yaml"
        f.write_text(f"epochs: 1\n{text}\n")
        with pytest.raises(ConfigError, match=match):
            load_config(f)


def test_a_run_folder_that_cannot_be_created_is_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"cannot be created: .*file is a file, not a folder; choose another --out-dir"):
        load_config(None, {"out_dir": str(tmp_path / "file" / "runs")})
    with pytest.raises(ConfigError, match="is a file"):
        load_config(None, {"out_dir": str(tmp_path), "name": "file/sub"})
    assert load_config(None, {"out_dir": str(tmp_path / "new" / "deeper"), "name": "a/b"}).name == "a/b"


def test_resume_override_reads_a_comma_list():
    c = load_config(None, parse_overrides(["--resume", "auto", "--resume-override", "lr,grad_clip"]))
    assert c.resume_override == ["lr", "grad_clip"]
    assert load_config(None, {"resume": "auto", "resume_override": ["lr"]}).resume_override == ["lr"]


def test_suspicious_values_warn_in_one_line(caplog):
    with caplog.at_level(logging.WARNING, logger="itop.training.config"):
        load_config(None, {"sparsity": 0.0})
        load_config(None, {"method": "dense"})  # dense forces sparsity 0: nothing to say
        load_config(None, {"epochs": 2, "warmup_epochs": 3})
        load_config(None, {"epochs": 2, "warmup_epochs": 1})
    lines = caplog.text.strip().splitlines()
    assert len(lines) == 2
    assert "sparsity 0 keeps every weight" in lines[0] and "--method dense" in lines[0]
    assert "warmup_epochs 3 is not shorter than training (2 epochs)" in lines[1]


def test_every_setting_says_whether_it_can_change_mid_run():
    """A new setting must decide (in its field's metadata) whether a resume may apply a new value."""
    undecided = [k for k, spec in KEYS.items() if spec.role == SETTING and spec.midrun is None]
    assert undecided == []
    assert KEYS["lr"].fixed_reason() is None and KEYS["grad_clip"].fixed_reason() is None
    assert KEYS["drop_fraction"].fixed_reason() is None and KEYS["threads"].fixed_reason() is None
    assert "initial masks" in KEYS["distribution"].fixed_reason() or "fixed when" in KEYS["distribution"].fixed_reason()
    assert "optimizer" in KEYS["optimizer"].fixed_reason()
    assert KEYS["sparsity"].fixed_reason() == "it defines which run this is"


def test_resume_changes_compares_resolved_values():
    saved = load_config(None, {"method": "rigl", "lr": 0.1})
    same = load_config(None, {"method": "rigl", "lr": 0.1, "drop_fraction": 0.3, "threads": 1})
    assert resume_changes(saved.to_flat(), same) == ({}, {})  # 0.3 is rigl's preset; threads is control
    assert resume_changes(saved.resolved(), same) == ({}, {})
    changed = load_config(None, {"method": "rigl", "lr": 0.5, "distribution": "uniform", "seed": 3})
    identity, settings = resume_changes(saved.resolved(), changed)
    assert identity == {"seed": (0, 3)}
    assert settings == {"lr": (0.1, 0.5), "distribution": ("erk", "uniform")}
    # A preset that changed since the checkpoint was written is a change too.
    old = {**saved.resolved(), "drop_rounding": "ceil"}
    assert resume_changes(old, same)[1] == {"drop_rounding": ("ceil", "floor")}
    # Keys the checkpoint does not know (added later) are not compared.
    assert resume_changes({k: v for k, v in saved.resolved().items() if k != "lr"}, changed)[1] == {
        "distribution": ("erk", "uniform")}


def test_model_and_data_options_are_checked_before_training():
    c = load_config(None, {"model": "wrn-16-2", "model_args": {"dropout": 0.3}})
    assert c.model_args == {"dropout": 0.3}
    with pytest.raises(ConfigError, match="has no option 'dropuot'"):
        load_config(None, {"model": "wrn-16-2", "model_args": {"dropuot": 0.3}})
    with pytest.raises(ConfigError, match="unknown option"):
        load_config(None, {"data_args": {"crop_size": 3}})

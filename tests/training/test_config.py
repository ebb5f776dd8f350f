import pytest

from itop.errors import ConfigError
from itop.training.config import RunConfig, load_config, parse_overrides


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
        "data_dir", "download", "compile", "channels_last", "dist_backend"}


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


def test_model_and_data_options_are_checked_before_training():
    c = load_config(None, {"model": "wrn-16-2", "model_args": {"dropout": 0.3}})
    assert c.model_args == {"dropout": 0.3}
    with pytest.raises(ConfigError, match="has no option 'dropuot'"):
        load_config(None, {"model": "wrn-16-2", "model_args": {"dropuot": 0.3}})
    with pytest.raises(ConfigError, match="unknown option"):
        load_config(None, {"data_args": {"crop_size": 3}})

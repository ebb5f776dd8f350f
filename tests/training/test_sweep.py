"""Sweeps: expansion, validation before any run starts, running, skipping and resuming."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from itop.cli import main as cli_main
from itop.errors import ConfigError
from itop.training.config import NEVER, RunConfig
from itop.training.sweep import SCALES, expand, plan_sweep, run_sweep
from itop.training.sweep.run import _stop

STUDIES = Path(__file__).resolve().parents[2] / "configs" / "studies"


def write(tmp_path, data, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sweep_file(tmp_path, **changes):
    data = {
        "name": "demo",
        "base": {"dataset": "digits", "epochs": 1, "reliable_steps": 5},
        "grid": {"seed": [0, 1], "method": ["rigl", "set"], "update_interval": [10, 40, "never"]},
        "scales": {"smoke": {"grid": {"seed": [0]}, "base": {"epochs": 2}}, "cpu": {}, "paper": {}},
    }
    data.update(changes)
    return write(tmp_path, data)


# -- expansion ---------------------------------------------------------------------------------


def test_expand_product_names_and_scales(tmp_path):
    path = sweep_file(tmp_path)
    runs = expand(path, "cpu", out_dir=tmp_path / "out")
    assert len(runs) == 2 * 2 * 3
    names = [r.name for r in runs]
    assert len(set(names)) == len(names)
    assert names == [r.name for r in expand(path, "cpu", out_dir=tmp_path / "out")]  # deterministic
    assert names[:3] == ["rigl-dt10-seed0", "rigl-dt40-seed0", "rigl-dtnever-seed0"]
    assert all(r.out_dir == tmp_path / "out" / "demo-cpu" for r in runs)
    assert runs[0].run_dir == tmp_path / "out" / "demo-cpu" / "rigl-dt10-seed0"
    never = runs[2].config
    assert never["update_interval"] == NEVER and never["name"] == runs[2].name
    assert never["out_dir"] == str(tmp_path / "out" / "demo-cpu")
    RunConfig.from_flat(never).validate()  # the full mapping is a valid config
    assert set(never) == set(RunConfig.keys())
    assert never["progress"] == "none" and never["tensorboard"] is False

    smoke = expand(path, "smoke", out_dir=tmp_path)
    assert len(smoke) == 6  # one seed: the seed no longer varies and leaves the names
    assert [r.name for r in smoke][:2] == ["rigl-dt10", "rigl-dt40"]
    assert all(r.config["epochs"] == 2 and r.config["seed"] == 0 for r in smoke)


def test_default_out_dir_comes_from_the_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = expand(sweep_file(tmp_path), "paper")
    assert runs[0].out_dir == Path("runs") / "demo-paper"
    path = sweep_file(tmp_path, base={"out_dir": "results", "reliable_steps": 5})
    assert expand(path, "paper")[0].out_dir == Path("results") / "demo-paper"


def test_null_means_the_method_preset_and_identical_configs_run_once(tmp_path):
    path = sweep_file(tmp_path, grid={"method": ["rigl", "set", "dense"], "update_interval": [100, None],
                                      "sparsity": [0.9, 0.95]})
    plan = plan_sweep(path, "cpu", out_dir=tmp_path)
    # rigl/set: null resolves to the preset ΔT 100, the same config as 100; dense ignores both
    # ΔT and sparsity: 2 methods x 2 sparsities + 1 dense run.
    assert [r.name for r in plan.runs] == ["rigl-s0.9-dt100", "rigl-s0.95-dt100", "set-s0.9-dt100",
                                          "set-s0.95-dt100", "dense-s0-dtnever"]
    assert plan.duplicates == 12 - 5
    assert plan.runs[0].config["update_interval"] == 100


def test_runs_extra_rules_and_exclude(tmp_path):
    path = sweep_file(
        tmp_path,
        grid={"seed": [0, 1], "method": ["static", "rigl-itop"], "sparsity": [0.9, 0.98]},
        runs_extra=[{"method": "rigl-itop", "multiplier": 2}, {"method": "imp", "sparsity": 0.9, "seed": 0}],
        rules=[{"when": {"method": "rigl-itop"}, "set": {"update_interval": 7}},
               {"when": {"method": "imp"}, "set": {"rounds": 2}}],
        exclude=[{"method": "static", "sparsity": 0.98}],
    )
    plan = plan_sweep(path, "cpu", out_dir=tmp_path)
    by_name = {r.name: r.config for r in plan.runs}
    # grid 8 - 2 excluded, + rigl-itop x2 crossed with seed and sparsity (4), + one imp run
    assert len(plan.runs) == 6 + 4 + 1 and plan.excluded == 2
    assert "static-s0.98-x1-seed0" not in by_name
    assert by_name["rigl-itop-s0.98-x2-seed1"]["multiplier"] == 2.0
    assert by_name["rigl-itop-s0.98-x2-seed1"]["update_interval"] == 7  # rules apply to extras
    assert by_name["rigl-itop-s0.9-x1-seed0"]["update_interval"] == 7
    assert by_name["imp-s0.9-x1-seed0"]["rounds"] == 2
    assert by_name["static-s0.9-x1-seed0"]["rounds"] is None
    assert plan.varying == ["method", "sparsity", "multiplier", "seed"]  # rule-set keys stay out


def test_scale_lists_replace_the_top_level_ones(tmp_path):
    path = sweep_file(tmp_path, exclude=[{"method": "set"}],
                      scales={"smoke": {"exclude": []}, "cpu": {}, "paper": {}})
    assert len(expand(path, "cpu", tmp_path)) == 6
    assert len(expand(path, "smoke", tmp_path)) == 12


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    ({"grid": {"method": ["rigl", "rigll"]}}, "unknown method 'rigll'; did you mean 'rigl'?"),
    ({"grid": {"method": ["rigl"], "sparsity": [0.9, 1.5]}}, "sparsity must be in [0, 1)"),
    ({"grid": {"updte_interval": [10]}}, "unknown config key 'updte_interval'"),
    ({"grid": {"seed": 3}}, "must be a non-empty list"),
    ({"base": {"batch_sise": 3}}, "did you mean 'batch_size'?"),
    ({"runs_extra": [{"mehtod": "set"}]}, "runs_extra[0]"),
    ({"rules": [{"when": {"method": "set"}}]}, "exactly the keys `when` and `set`"),
    ({"grids": {}}, "unknown key 'grids' at the top of"),
    ({"scales": {"cpu": {"gird": {}}}}, "did you mean 'grid'?"),
    ({"scales": {"laptop": {}}}, "unknown scale 'laptop'"),
    ({"scales": {"smoke": {}}}, "has no scale 'cpu'"),
    ({"base": {"name": "x"}}, "the sweep names every run"),
    ({"base": {"batch_size": "big"}}, "batch_size' expects int"),
    ({"base": {"dataset": "digits"}}, "needs reliable_steps"),
])
def test_invalid_sweeps_fail_before_any_run_starts(tmp_path, changes, message):
    path = sweep_file(tmp_path, **changes)
    with pytest.raises(ConfigError) as e:
        run_sweep(path, "cpu", out_dir=tmp_path / "out", jobs=2)
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_error_names_the_bad_run(tmp_path):
    path = sweep_file(tmp_path, grid={"method": ["rigl", "set"], "drop_schedule": ["cosine", "cosin"]})
    with pytest.raises(ConfigError, match=r"run with method='rigl', drop_schedule='cosin'.*did you mean 'cosine'"):
        expand(path, "cpu")


def test_overrides_apply_to_every_run_but_not_to_varied_keys(tmp_path):
    path = sweep_file(tmp_path)
    runs = expand(path, "cpu", tmp_path, overrides={"data_dir": "/data", "data-dir": "/data"})
    assert {r.config["data_dir"] for r in runs} == {"/data"}
    with pytest.raises(ConfigError, match="cannot override seed"):
        expand(path, "cpu", tmp_path, overrides={"seed": 3})


# -- the packaged studies ----------------------------------------------------------------------


@pytest.mark.parametrize("study", ["itop-rate", "batch-size", "extreme-sparsity", "sparse-init"])
def test_packaged_studies_expand_and_validate_at_every_scale(study):
    path = STUDIES / f"{study}.yaml"
    plans = {scale: plan_sweep(path, scale, out_dir="runs") for scale in SCALES}
    smoke, cpu, paper = (plans[s].runs for s in SCALES)
    assert 1 < len(smoke) <= 8
    assert all(r.config["dataset"] == "digits" and r.config["model"] == "lenet-300-100"
               and r.config["epochs"] == 1 and r.config["seed"] == 0 for r in smoke)
    assert all(r.config["dataset"] == "fashion-mnist" for r in cpu)
    assert {r.config["seed"] for r in cpu} == {0, 1, 2}
    assert all(r.config["dataset"] == "cifar10" and r.config["epochs"] == 250 and r.config["batch_size"]
               in ((128,) if study != "batch-size" else (32, 64, 128, 256, 512)) for r in paper)
    assert {r.config["model"] for r in paper} == {"vgg-c", "resnet-34"}
    assert len(cpu) < len(paper)


def test_itop_rate_study_fixes_reliable_steps_and_sweeps_to_never():
    runs = expand(STUDIES / "itop-rate.yaml", "cpu")
    assert {r.config["reliable_steps"] for r in runs} == {100}
    assert {r.config["update_end"] for r in runs} == {1.0}
    sparse = [r for r in runs if r.config["method"] != "dense"]
    assert NEVER in {r.config["update_interval"] for r in sparse}
    assert {r.config["method"] for r in sparse} == {"rigl", "set"} and len(sparse) == 72
    dense = [r for r in runs if r.config["method"] == "dense"]  # the reference, once per seed
    assert sorted(r.config["seed"] for r in dense) == [0, 1, 2]


def test_extreme_sparsity_study_runs_dense_once_per_model_and_seed():
    runs = expand(STUDIES / "extreme-sparsity.yaml", "cpu")
    dense = [r for r in runs if r.config["method"] == "dense"]
    assert len(dense) == 2 * 3
    lenet5 = [r for r in runs if r.config["model"] == "lenet-5-caffe" and r.config["method"] != "dense"]
    assert {r.config["sparsity"] for r in lenet5} == {0.98, 0.99}
    assert {r.config["rounds"] for r in runs if r.config["method"] == "imp"} == {3}
    assert {r.config["multiplier"] for r in runs if r.config["method"] == "rigl-itop"} == {1.0, 2.0}


# -- running -----------------------------------------------------------------------------------


def test_stop_asks_children_to_stop_then_kills_them():
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn = subprocess.Popen([sys.executable, "-c",
                                 "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                 "signal.signal(signal.SIGINT, signal.SIG_IGN); "
                                 "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    stubborn.stdout.readline()
    start = time.monotonic()
    _stop({polite: None, stubborn: None}, grace=1.0)
    assert time.monotonic() - start < 10
    assert polite.returncode == -signal.SIGTERM and stubborn.returncode == -signal.SIGKILL
    stubborn.stdout.close()


def test_run_skip_and_resume(tmp_path):
    path = write(tmp_path, {
        "name": "tiny",
        "base": {"dataset": "digits", "epochs": 2, "batch_size": 256, "sparsity": 0.9, "update_interval": 2},
        "grid": {"method": ["static", "rigl"]},
        "scales": {"smoke": {}},
    })
    out = tmp_path / "out"
    lines = []
    results = run_sweep(path, "smoke", out_dir=out, jobs=2, progress=lines.append)
    assert [(r.name, r.status) for r in results] == [("static", "done"), ("rigl", "done")]
    for r in results:
        summary = json.loads((r.run_dir / "summary.json").read_text())
        assert summary["completed"] is True and r.summary["completed"] is True
        assert r.log.exists() and (r.run_dir / "sweep-run.yaml").exists()
        assert r.seconds > 0
    assert any("[2/2]" in line and "ETA" in line for line in lines)

    again = run_sweep(path, "smoke", out_dir=out, jobs=2)
    assert [r.status for r in again] == ["skipped", "skipped"]

    # An interrupted run: checkpoint of epoch 1, no summary -> resumed, not restarted.
    rigl = results[1].run_dir
    checkpoints = sorted((rigl / "checkpoints").glob("ckpt-step*.pt"))
    assert len(checkpoints) == 2
    checkpoints[-1].unlink()
    (rigl / "summary.json").unlink()
    resumed = run_sweep(path, "smoke", out_dir=out, jobs=2)
    assert [r.status for r in resumed] == ["skipped", "done"]
    assert "resumed from" in resumed[1].log.read_text()
    epochs = [json.loads(line) for line in (rigl / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in epochs if m.get("type") == "epoch"] == [1, 2]

    # The same folders with a changed config are reported, not reused.
    data = yaml.safe_load(path.read_text())
    data["base"]["epochs"] = 3
    path.write_text(yaml.safe_dump(data))
    changed = run_sweep(path, "smoke", out_dir=out, jobs=2)
    assert [r.status for r in changed] == ["failed", "failed"]
    assert "epochs=2" in changed[0].error and "epochs=3" in changed[0].error


def test_failed_run_is_reported_and_others_go_on(tmp_path):
    path = write(tmp_path, {
        "name": "bad",
        "base": {"dataset": "fashion-mnist", "data_dir": str(tmp_path / "nowhere"), "download": False,
                 "epochs": 1},
        "grid": {"dataset": ["fashion-mnist", "digits"]},  # digits is bundled: no data_dir needed
        "scales": {"smoke": {}},
    })
    lines = []
    results = run_sweep(path, "smoke", out_dir=tmp_path / "out", jobs=2, progress=lines.append)
    assert [r.status for r in results] == ["failed", "done"]
    assert results[0].error.startswith("exit 2: itop: error:")
    assert results[0].log == results[0].run_dir / "sweep.log"
    assert any("failed" in line and f"log: {results[0].log}" in line for line in lines)


def test_main_dry_run_and_errors(tmp_path, capsys):
    path = sweep_file(tmp_path)
    assert cli_main(["sweep", "-c", str(path), "--scale", "smoke", "--out-dir", str(tmp_path / "o"), "--dry-run",
                 "--data-dir", "/data"]) == 0
    out = capsys.readouterr().out
    assert "demo at scale smoke: 6 runs" in out and "varying: method, update_interval" in out
    assert "planned" in out and "rigl-dtnever" in out
    assert not (tmp_path / "o").exists()
    assert cli_main(["sweep", "-c", str(tmp_path / "missing.yaml")]) == 2
    assert "itop: error: cannot read sweep file" in capsys.readouterr().err
    assert cli_main(["sweep", "-c", str(path), "--seed", "4"]) == 2
    assert "cannot override seed" in capsys.readouterr().err


def test_sparse_init_study_pairs_every_run_with_and_without_it():
    from itop.training.config import RunConfig

    def what_runs(spec):  # the resolved config, without where it is written
        resolved = RunConfig.from_flat(spec.config).resolved()
        return tuple(sorted((k, str(v)) for k, v in resolved.items()
                            if k not in ("name", "out_dir", "sparse_init")))

    runs = expand(STUDIES / "sparse-init.yaml", "cpu")
    pairs = {}
    for r in runs:
        pairs.setdefault(what_runs(r), set()).add(r.config["sparse_init"])
    assert len(pairs) == 18 and all(v == {False, True} for v in pairs.values())
    # Its runs without sparse_init are the extreme-sparsity study's LeNet-5 runs, config for config.
    extreme = {what_runs(r) for r in expand(STUDIES / "extreme-sparsity.yaml", "cpu")}
    assert set(pairs) <= extreme


def test_fidelity_study_uses_the_reference_settings():
    """configs/studies/fidelity.yaml runs at the settings of ../shared/reference-results.md."""
    runs = expand(STUDIES / "fidelity.yaml", "cpu")
    by_method: dict[str, list] = {}
    for r in runs:
        by_method.setdefault(r.config["method"], []).append(r.config)
    assert sorted(by_method) == ["dense", "rigl", "set", "static"]
    for cfg in (c for cs in by_method.values() for c in cs):
        assert (cfg["epochs"], cfg["batch_size"], cfg["lr"], cfg["momentum"], cfg["nesterov"],
                cfg["weight_decay"], cfg["lr_milestones"], cfg["lr_gamma"]) == (
                    20, 128, 0.05, 0.9, True, 5e-4, [0.5, 0.75], 0.1)
    for cfg in by_method["rigl"] + by_method["set"]:
        resolved = RunConfig.from_flat(cfg).resolved()
        assert (resolved["sparsity"], resolved["distribution"], resolved["update_interval"],
                resolved["drop_fraction"], resolved["final_drop_fraction"], resolved["drop_schedule"],
                resolved["update_end"]) == (0.98, "erk", 200, 0.5, 0.005, "cosine", 1.0)
    grid = [c for c in by_method["rigl"] + by_method["set"] + by_method["static"]
            if c["keep_regrown"] is not False and c["drop_rounding"] == "ceil"
            and c["val_fraction"] == 0.0 and not c.get("model_args")]
    assert len(grid) == 2 * 3 * 3  # 3 methods x 2 models x 3 seeds
    assert sorted(c["model"] for c in by_method["dense"]) == ["lenet-300-100", "lenet-5-caffe"]
    ablations = [c for c in by_method["rigl"] if c not in grid]
    assert len(ablations) == 4 and {c["model"] for c in ablations} == {"lenet-5-caffe"}


def test_overparam_study_compares_at_equal_parameters_with_enough_updates():
    import itop
    from itop.models import build_model

    runs = expand(STUDIES / "overparam.yaml", "cpu")
    configs = [RunConfig.from_flat(r.config) for r in runs]
    assert {c.seed for c in configs} == {0, 1, 2}
    wide = build_model("mlp-2048x2", in_channels=1, num_classes=10, image_size=28)
    assert sum(p.numel() for n, p in wide.named_parameters() if n.endswith("weight")) >= 5_000_000
    dst = [c for c in configs if c.method in ("static", "set-itop", "rigl-itop")]
    assert {c.sparsity for c in dst} == {0.9, 0.95, 0.98, 0.99}
    assert {c.resolved()["execution"] for c in dst} == {"sparse"}
    steps = 20 * -(-54_000 // 128)  # 20 epochs of 90% of Fashion-MNIST's 60k, batch 128
    for c in dst:
        assert c.epochs >= 20
        if c.method != "static":  # the last step is never an update
            assert (steps - 1) // c.resolved()["update_interval"] >= 50
    assert {c.method for c in configs if c.sparsity in (0.98, 0.99)} >= {"gmp", "snip", "grasp", "synflow"}
    # Each narrow dense MLP holds as many parameters as the sparse network it stands beside (1%).
    narrow = {c.model for c in configs if c.method == "dense" and c.model != "mlp-2048x2"}
    for sparsity, name in zip((0.9, 0.95, 0.98, 0.99), ("mlp-465x2", "mlp-275x2", "mlp-130x2", "mlp-72x2"),
                              strict=True):
        assert name in narrow
        model = build_model("mlp-2048x2", in_channels=1, num_classes=10, image_size=28)
        sp = itop.build("static", model, None, sparsity=sparsity, total_steps=10)
        small = sum(p.numel() for p in build_model(name, in_channels=1, num_classes=10, image_size=28).parameters())
        assert abs(small - sp.num_parameters()) <= 0.01 * sp.num_parameters(), (name, small, sp.num_parameters())


def test_extreme_sparsity_long_study_trains_lenet5_long_enough_at_extreme_sparsity(tmp_path):
    runs = expand(STUDIES / "extreme-sparsity-long.yaml", "cpu")
    configs = [RunConfig.from_flat(r.config) for r in runs]
    assert {c.seed for c in configs} == {0, 1, 2} and {c.model for c in configs} == {"lenet-5-caffe"}
    assert all(c.epochs >= 10 and c.dataset == "fashion-mnist" for c in configs)
    sparse = [c for c in configs if c.method != "dense"]
    assert {c.sparsity for c in sparse} == {0.98, 0.99}
    assert {c.method for c in sparse} >= {"static", "set-itop", "rigl-itop", "gmp", "snip", "synflow", "imp"}
    steps = 10 * -(-54_000 // 128)
    for c in sparse:
        if c.method in ("set-itop", "rigl-itop"):  # the last step is never an update
            assert (steps - 1) // c.resolved()["update_interval"] >= 50
    assert {c.resolved()["rounds"] for c in configs if c.method == "imp"} == {3}
    # sparse_init on and off for the same static and RigL-ITOP runs; run names unchanged by it
    # for every other method.
    pairs = {(c.method, c.sparsity, c.seed) for c in configs if c.resolved()["sparse_init"]}
    assert {(m, s) for m, s, _ in pairs} == {(m, s) for m in ("static", "rigl-itop") for s in (0.98, 0.99)}
    assert len({r.name for r in runs}) == len(runs)
    smoke = expand(STUDIES / "extreme-sparsity-long.yaml", "smoke", out_dir=tmp_path)
    assert 1 < len(smoke) <= 8 and all(r.config["dataset"] == "digits" for r in smoke)


_SLOW_STUDIES = ("itop-rate", "batch-size", "extreme-sparsity", "sparse-init", "fidelity", "overparam")


@pytest.mark.parametrize("study", ["extreme-sparsity-long",
                                   *(pytest.param(s, marks=pytest.mark.slow) for s in _SLOW_STUDIES)])
def test_packaged_study_smoke_scale_trains_every_run(study, tmp_path):
    # Planning is not enough: a smoke scale must also train (e.g. a model that cannot take the
    # smoke data's 8x8 images fails only when it runs).
    path = STUDIES / f"{study}.yaml"
    assert cli_main(["--log-level", "WARNING", "sweep", "-c", str(path), "--scale", "smoke", "--jobs", "2",
                     "--out-dir", str(tmp_path)]) == 0
    planned = expand(path, "smoke", out_dir=tmp_path)
    for run in planned:
        assert json.loads((run.run_dir / "summary.json").read_text())["completed"], run.name

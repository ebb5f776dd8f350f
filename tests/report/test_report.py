import csv
import json
import math
import os
import shutil
import statistics
import sys
from pathlib import Path

import pytest
import torch

from itop import report
from itop.cli import main as cli_main
from itop.errors import ConfigError, DataNotFoundError
from itop.report import Run, aggregate, collect, itop_curve, write_report
from itop.training import Trainer
from itop.training.config import load_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOT_FILES = [spec.filename for spec in report.PLOTS]
BASE = {"epochs": 1, "batch_size": 128, "tensorboard": False, "progress": "none", "model": "lenet-300-100",
        "dataset": "digits", "keep_checkpoints": 1, "threads": 1}
# (method, update_interval, sparsity, seed): 2 methods x 2 ΔT x 2 seeds at 0.8 (one left out
# to keep it fast), plus a second sparsity so that the accuracy-vs-sparsity plot has two points.
GRID = [
    ("set", 3, 0.8, 0), ("set", 3, 0.8, 1), ("set", 6, 0.8, 0), ("set", 6, 0.8, 1),
    ("rigl", 3, 0.8, 0), ("rigl", 3, 0.8, 1), ("rigl", 6, 0.8, 0),
    ("set", 3, 0.9, 0),
]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()  # one thread is much faster for these tiny runs
    for method, dt, sparsity, seed in GRID:
        cfg = load_config(None, {**BASE, "method": method, "update_interval": dt, "sparsity": sparsity,
                                 "seed": seed, "out_dir": str(root / "grid"),
                                 "name": f"{method}-dt{dt}-s{sparsity}-seed{seed}"})
        Trainer(cfg).fit()
    # A run stopped before the end of its first epoch: included, flagged incomplete.
    cfg = load_config(None, {**BASE, "method": "rigl", "update_interval": 3, "sparsity": 0.8,
                             "max_steps": 4, "out_dir": str(root / "partial"), "name": "stopped"})
    Trainer(cfg).fit()
    torch.set_num_threads(threads)
    return root


def _summaries(folder):
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("summary.json"))]


def _is_png(path):
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 5000


def test_collect_finds_runs_and_flags_incomplete(runs_root):
    runs = collect([runs_root])
    assert len(runs) == len(GRID) + 1
    by_name = {r.name: r for r in runs}
    stopped = by_name["stopped"]
    assert not stopped.completed and "stopped at step 4" in stopped.note
    done = [r for r in runs if r is not stopped]
    assert all(r.completed and r.note == "" for r in done)
    assert all(r.epochs and r.updates and r.config["method"] == r.get("method") for r in done)
    # A single run folder, or its summary.json, works too; duplicates are read once.
    one = runs_root / "grid" / "set-dt3-s0.8-seed0"
    assert [r.name for r in collect([one, one / "summary.json"])] == ["set-dt3-s0.8-seed0"]


def test_collect_without_summary_rebuilds_it_from_metrics(runs_root, tmp_path):
    run = tmp_path / "killed"
    shutil.copytree(runs_root / "grid" / "set-dt3-s0.8-seed0", run)
    (run / "summary.json").unlink()
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"type": "update", "st')  # a line cut off by the kill
    (r,) = collect([tmp_path])
    assert not r.completed and "no summary.json" in r.note
    last = r.epochs[-1]
    assert r.get("final_test_acc") == last["test_acc"] and r.get("itop_rate") == last["itop_rate"]
    assert r.get("method") == "set" and r.get("target_sparsity") == 0.8


def test_collect_treats_imp_folder_as_one_run(runs_root, tmp_path):
    imp = tmp_path / "imp"
    src = runs_root / "grid" / "set-dt3-s0.8-seed0"
    for k in range(2):
        shutil.copytree(src, imp / f"round-{k}")
    top = json.loads((src / "summary.json").read_text())
    top.update({"run": "imp", "method": "imp", "rounds": 1, "run_dir": str(imp),
                "round_summaries": [{"round": k, "sparsity": 0.4 * k, "test_acc_selected": 0.5,
                                     "final_test_acc": 0.5, "run_dir": str(imp / f"round-{k}")}
                                    for k in range(2)]})
    (imp / "summary.json").write_text(json.dumps(top))
    (run,) = collect([tmp_path])
    assert run.name == "imp" and len(run.rounds) == 2 and run.completed
    assert len(collect([tmp_path], include_rounds=True)) == 3
    assert [r.path for r in collect([imp / "round-1"])] == [(imp / "round-1").resolve()]
    out = write_report([tmp_path], tmp_path / "rep")
    assert "IMP rounds of imp" in out.read_text()
    # Stopped between rounds (no top summary yet): one incomplete run.
    (imp / "summary.json").unlink()
    (run,) = collect([tmp_path])
    assert not run.completed and "IMP stopped in round 1" in run.note


def test_aggregate_matches_hand_computation(runs_root):
    runs = collect([runs_root / "grid"])
    groups = aggregate(runs)
    # method plus the keys that vary: ΔT and sparsity (model, dataset, batch do not).
    assert all(list(g.key) == ["method", "target_sparsity", "update_interval"] for g in groups)
    assert len(groups) == 5 and sum(g.n for g in groups) == len(GRID)
    summaries = _summaries(runs_root / "grid")
    for g in groups:
        members = [s for s in summaries if s["method"] == g.key["method"]
                   and s["update_interval"] == g.key["update_interval"]
                   and s["target_sparsity"] == g.key["target_sparsity"]]
        assert len(members) == g.n
        for metric in report.METRICS:
            values = [s[metric] for s in members]
            stat = g.stats[metric]
            assert stat.n == len(values)
            assert stat.mean == pytest.approx(statistics.mean(values), rel=1e-12, abs=1e-15)
            if len(values) > 1:
                assert stat.std == pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-12)
            else:
                assert math.isnan(stat.std)
    # Explicit grouping pools the ΔT values of a method.
    pooled = aggregate(runs, by=["method"])
    assert [(g.key["method"], g.n) for g in pooled] == [("rigl", 3), ("set", 5)]
    with pytest.raises(ConfigError, match="did you mean 'update_interval'"):
        aggregate(runs, by=["update_intervall"])


def test_aggregate_skips_none_and_nan(tmp_path):
    runs = [Run(tmp_path / f"r{i}", {"run": f"r{i}", "method": "set", "seed": i, "completed": True,
                                     "test_acc_selected": v, "itop_rate": 0.5})
            for i, v in enumerate([0.5, None, float("nan"), 0.7])]
    (g,) = aggregate(runs)
    assert g.n == 4
    assert g.stats["test_acc_selected"].n == 2
    assert g.stats["test_acc_selected"].mean == pytest.approx(0.6)
    assert g.stats["wall_time_s"].n == 0 and math.isnan(g.stats["wall_time_s"].mean)
    out = write_report(runs, tmp_path / "rep")  # NaN/None everywhere: still a report
    text = out.read_text()
    assert "60.00 ± 14.14 (n=2)" in text and "Plots skipped" in text


def test_itop_curve_is_a_step_function_from_the_initial_density(runs_root):
    for r in collect([runs_root / "grid"]):
        steps, values = itop_curve(r)
        assert steps[0] == 0 and steps[-1] == r.get("steps")
        assert values[0] == pytest.approx(1 - r.get("target_sparsity"), abs=1e-6)
        assert all(a < b for a, b in zip(steps, steps[1:], strict=False))
        assert all(a <= b + 1e-12 for a, b in zip(values, values[1:], strict=False))
        assert values[-1] == pytest.approx(r.get("itop_rate"))
        assert {u["step"] for u in r.updates} <= set(steps)


def test_write_report_markdown(runs_root, tmp_path):
    out = write_report([runs_root], tmp_path / "rep", title="Grid")
    assert out == tmp_path / "rep" / "report.md"
    text = out.read_text()
    for name in PLOT_FILES:
        assert _is_png(tmp_path / "rep" / name), name
        assert f"]({name})" in text
    assert text.startswith("# Grid\n")
    assert f"{len(GRID) + 1} runs in 5 groups, 1 incomplete" in text
    assert "datasets: digits; models: lenet-300-100; methods: rigl, set" in text
    assert "| method | target sparsity | ΔT | n | test acc, selected (%) |" in text
    assert "| rigl | 0.8 | 3 | 3 (1 incomplete) |" in text
    assert " ± " in text and "NO: stopped at step 4" in text and "Plots skipped" not in text
    assert (tmp_path / "rep" / "groups.csv").is_file()
    with open(tmp_path / "rep" / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(GRID) + 1
    for row in rows:  # paths relative to the report folder, as in report.md
        assert not os.path.isabs(row["path"])
        assert ((tmp_path / "rep" / row["path"]) / "config.yaml").is_file()


def test_write_report_html_is_self_contained(runs_root, tmp_path):
    out = write_report([runs_root / "grid"], tmp_path / "rep", fmt="html")
    assert out.name == "report.html"
    text = out.read_text()
    assert text.count('src="data:image/png;base64,') == len(PLOT_FILES)
    assert text.count("src=") == len(PLOT_FILES)
    assert "<link" not in text and "http" not in text and "<table>" in text


def test_unsupported_plot_is_skipped_with_a_note(runs_root, tmp_path):
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "accuracy_vs_sparsity.png").write_bytes(b"stale")
    only_08 = [p for p in (runs_root / "grid").iterdir() if "s0.8" in p.name]
    text = write_report(only_08, rep).read_text()
    assert not (rep / "accuracy_vs_sparsity.png").exists()
    assert "accuracy_vs_sparsity.png" not in text
    assert "Test accuracy vs sparsity: all sparse runs have the same sparsity (0.8)" in text
    for name in set(PLOT_FILES) - {"accuracy_vs_sparsity.png"}:
        assert _is_png(rep / name) and f"]({name})" in text


def test_lifetimes_with_many_distinct_values(tmp_path):
    hist = {str(k): k % 7 + 1 for k in range(1, 400, 3)}
    runs = [Run(tmp_path / "a", {"run": "a", "method": "set", "completed": True, "itop_rate": 0.3,
                                 "lifetime_histogram": hist})]
    path = report.plot_lifetimes(runs, tmp_path / "lifetimes.png")
    assert _is_png(path)


def test_no_runs_gives_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="no runs found in") as info:
        collect([tmp_path / "empty"])
    assert "\n" not in str(info.value)
    assert cli_main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("itop: error: no runs found") and err.count("\n") == 1
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_main_writes_html(runs_root, tmp_path, capsys):
    out = tmp_path / "rep"
    assert cli_main(["report", str(runs_root / "grid"), "--out", str(out), "--format", "html",
                        "--title", "T", "--by", "method"]) == 0
    assert capsys.readouterr().out.strip() == f"report written to {out / 'report.html'}"
    assert "<h1>T</h1>" in (out / "report.html").read_text()


def test_report_without_matplotlib_still_has_tables(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    runs = [Run(tmp_path / "a", {"run": "a", "method": "set", "seed": 0, "completed": True,
                                 "test_acc_selected": 0.5, "itop_rate": 0.3})]
    text = write_report(runs, tmp_path / "rep").read_text()
    assert "| set | 1 | 50.00 |" in text and "matplotlib is not installed" in text
    assert not list((tmp_path / "rep").glob("*.png"))


def test_packaged_study_smoke_sweep_then_report_has_every_table_and_plot(tmp_path):
    """The README's two study commands, end to end at smoke scale (a few seconds per run)."""
    from itop.training.sweep import run_sweep

    study = Path(__file__).resolve().parents[2] / "configs" / "studies" / "itop-rate.yaml"
    results = run_sweep(study, "smoke", out_dir=tmp_path / "runs", jobs=2, threads=1)
    assert [r.status for r in results] == ["done"] * 5
    dense = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("dense*/summary.json")]
    assert len(dense) == 1 and dense[0]["target_sparsity"] == 0.0  # swept at 0.9 and 0.98: ran dense
    out = write_report([tmp_path / "runs"], tmp_path / "rep", title="smoke")
    text = out.read_text()
    assert "5 runs in 5 groups, all complete" in text and "Plots skipped" not in text
    for name in PLOT_FILES:
        assert _is_png(tmp_path / "rep" / name), name
        assert f"]({name})" in text
    # The group table: one row per method and sparsity, dense as its own row.
    for row in ("| dense | 0 | – |", "| rigl | 0.9 |", "| rigl | 0.98 |", "| set | 0.9 |", "| set | 0.98 |"):
        assert row in text, row
    with open(tmp_path / "rep" / "groups.csv", newline="") as f:
        groups = list(csv.DictReader(f))
    assert len(groups) == 5
    for g in groups:  # R_s starts at the density and can only grow; dense has seen everything
        density = 1 - float(g["target_sparsity"])
        assert float(g["itop_rate_mean"]) >= density - 1e-9


def test_target_sparsity_comes_from_the_resolved_config(tmp_path):
    # A dense run swept with `sparsity: 0.9` ran dense: its resolved config says 0.
    run = Run(tmp_path, {"method": "dense", "target_sparsity": 0.9, "test_acc_selected": 0.9},
              config={"method": "dense", "sparsity": 0.0})
    assert run.get("target_sparsity") == 0.0
    assert Run(tmp_path, {"target_sparsity": 0.9}).get("target_sparsity") == 0.9  # no config

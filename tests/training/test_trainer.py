import json
import signal
from pathlib import Path

import pytest
import torch

from itop.errors import CheckpointError, ConfigError, DivergenceError, Interrupted
from itop.training import Trainer, lr_lambda
from itop.training.config import load_config

FAST = {"epochs": 2, "batch_size": 64, "method": "rigl", "update_interval": 5, "tensorboard": False,
        "model": "lenet-300-100", "progress": "none"}


def cfg(tmp_path, **kw):
    return load_config(None, {**FAST, "out_dir": str(tmp_path), "name": "run", **kw})


def metrics(run_dir):
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rec.pop("seconds", None)
        out.append(rec)
    return out


def _same_run(a: Trainer, b: Trainer):
    for (n, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    for k, m in a.sparsifier.masks().items():
        assert torch.equal(m, b.sparsifier.masks()[k])
    assert a.sparsifier.itop_rate() == b.sparsifier.itop_rate()


@pytest.mark.parametrize("checkpoint_every", [0, 7])
def test_resume_after_kill_is_identical(tmp_path, checkpoint_every):
    straight = Trainer(cfg(tmp_path / "a", checkpoint_every_steps=checkpoint_every))
    summary_a = straight.fit()
    spe = straight.steps_per_epoch

    # "Kill" during epoch 2: stop without a final checkpoint, then resume from the last one.
    killed = Trainer(cfg(tmp_path / "b", checkpoint_every_steps=checkpoint_every, max_steps=spe + 10))
    killed.fit()
    assert killed.progress.step == spe + 10
    resumed = Trainer(cfg(tmp_path / "b", checkpoint_every_steps=checkpoint_every, resume="auto"))
    assert resumed.progress.step == 0  # the checkpoint is restored inside fit()
    summary_b = resumed.fit()

    _same_run(straight, resumed)
    assert metrics(tmp_path / "a" / "run") == metrics(tmp_path / "b" / "run")
    for key in ("test_acc_selected", "final_test_acc", "itop_rate", "sparsity", "training_flops",
                "selected_epoch", "steps"):
        assert summary_a[key] == summary_b[key], key
    assert summary_b["completed"] and resumed.sparsifier.step_count == 2 * spe


def test_outputs_and_summary(tmp_path):
    t = Trainer(cfg(tmp_path, keep_checkpoints=1))
    s = t.fit()
    run = tmp_path / "run"
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "best.pt"):
        assert (run / f).is_file(), f
    assert len(list((run / "checkpoints").glob("ckpt-*.pt"))) == 1
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if r["type"] == "epoch"]
    updates = [r for r in recs if r["type"] == "update"]
    assert len(epochs) == 2 and len(updates) == s["updates"] > 0
    assert {"train_loss", "val_acc", "test_acc", "lr", "itop_rate", "reliable_itop_rate",
            "layers", "seconds"} <= set(epochs[0])
    assert {"dropped", "grown", "itop_rate"} <= set(updates[0])
    assert 0.0 < s["training_flops_relative"] < 1.0 and 0.0 < s["inference_flops_relative"] < 1.0
    assert s["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert s["test_acc_selected"] > 0.25  # chance is 0.1; two short epochs at 90% sparsity
    resolved = (run / "config.yaml").read_text()
    assert "update_interval: 5" in resolved and "drop_schedule: cosine" in resolved


def test_existing_results_are_not_overwritten(tmp_path):
    Trainer(cfg(tmp_path, epochs=1)).fit()
    with pytest.raises(ConfigError, match="already has results"):
        Trainer(cfg(tmp_path, epochs=1)).fit()


def test_checkpoint_of_another_run_is_rejected(tmp_path):
    Trainer(cfg(tmp_path, epochs=1)).fit()
    ckpt = next((tmp_path / "run" / "checkpoints").glob("*.pt"))
    with pytest.raises(CheckpointError, match="another run"):
        Trainer(cfg(tmp_path, epochs=1, name="other", model="mlp-cifar", resume=str(ckpt))).fit()


def test_auto_resume_falls_back_from_a_corrupt_checkpoint(tmp_path):
    Trainer(cfg(tmp_path, epochs=2, keep_checkpoints=3)).fit()
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert len(ckpts) == 2
    ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        Trainer(cfg(tmp_path, epochs=2, resume=str(ckpts[-1]))).fit()
    t = Trainer(cfg(tmp_path, epochs=2, keep_checkpoints=3, resume="auto"))
    t.fit()  # resumes from the epoch-1 checkpoint and redoes epoch 2
    assert t.progress.epoch == 2 and t.progress.step == 2 * t.steps_per_epoch


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    t = Trainer(cfg(tmp_path, epochs=2, lr=1e30, method="static"))
    with pytest.raises(DivergenceError, match="lower --lr"):
        t.fit()


def test_lr_schedule_steps_at_half_and_three_quarters():
    c = load_config(None, {"lr_schedule": "step", "warmup_epochs": 1})
    f = lr_lambda(c, total_steps=100, steps_per_epoch=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(49) == 1.0 and f(50) == pytest.approx(0.1) and f(75) == pytest.approx(0.01)
    c = load_config(None, {"lr_schedule": "cosine"})
    g = lr_lambda(c, total_steps=100, steps_per_epoch=10)
    assert g(0) == 1.0 and g(50) == pytest.approx(0.5) and g(100) == pytest.approx(0.0)


def test_multiplier_scales_epochs_and_schedules(tmp_path):
    t = Trainer(cfg(tmp_path, epochs=2, multiplier=2))
    assert t.epochs == 4 and t.total_steps == 4 * t.steps_per_epoch
    assert t.sparsifier.update_schedule.interval == 5  # ΔT is not scaled
    assert t.sparsifier.update_schedule.end == int(0.75 * t.total_steps)


def test_imp_rewinds_survivors_under_the_new_mask(tmp_path):
    from itop.training import train_imp

    c = cfg(tmp_path, method="imp", epochs=1, rounds=2, rewind_step=3, sparsity=0.75)
    seen = []
    original_init = Trainer.__init__

    def spy(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        seen.append((self, kwargs.get("init_state")))

    Trainer.__init__ = spy
    try:
        summary = train_imp(c)
    finally:
        Trainer.__init__ = original_init
    assert len(seen) == 3  # dense round plus two pruning rounds
    rewind = seen[0][0].captured
    assert rewind is not None
    for _trainer, init_state in seen[1:]:
        assert init_state is rewind
    # Round 1's starting weights: the rewound ones, zero where round 0's magnitude prune removed them.
    r1 = seen[1][0]
    ckpt = torch.load(tmp_path / "run" / "round-1" / "best.pt", weights_only=True)
    masks = {n: torch.zeros(ckpt["sparsifier"]["layers"][n]["shape"], dtype=torch.bool).reshape(-1)
             .index_fill_(0, ckpt["sparsifier"]["layers"][n]["active"].long(), True)
             .reshape(ckpt["sparsifier"]["layers"][n]["shape"]) for n in r1.sparsifier.layer_names()}
    sparsities = [r["sparsity"] for r in summary["round_summaries"]]
    assert sparsities[0] == 0.0 and sparsities[1] == pytest.approx(0.5, abs=1e-3)
    assert sparsities[2] == pytest.approx(0.75, abs=1e-3)
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.5 * total)  # global magnitude prune
    params = dict(r1.model.named_parameters())
    start_weights = {n: rewind[n] * masks[n] for n in masks}
    assert all(bool((params[n][~masks[n]] == 0).all()) for n in masks)
    assert any(not torch.equal(params[n], start_weights[n]) for n in masks)  # round 1 trained
    assert summary["itop_rate"] == 1.0 and summary["training_flops_relative"] > 1.0
    assert (tmp_path / "run" / "summary.json").is_file()
    for k in range(3):
        assert (tmp_path / "run" / f"round-{k}" / "summary.json").is_file()


def test_imp_round_start_equals_rewound_weights_times_mask(tmp_path):
    c = cfg(tmp_path, method="static", epochs=1, sparsity=0.5)
    first = Trainer(c, capture_step=0)
    first.fit()
    rewind = first.captured
    masks = {n: torch.rand(p.shape) < 0.3 for n, p in first.model.named_parameters() if n in first.sparsifier.layer_names()}
    nxt = Trainer(cfg(tmp_path, method="static", epochs=1, sparsity=0.5, name="next"), masks=masks, init_state=rewind)
    state = nxt.model.state_dict()
    for n, v in rewind.items():
        expected = v * masks[n] if n in masks else v
        assert torch.equal(state[n], expected), n


@pytest.mark.parametrize("method, rate", [("static", 0.1), ("snip", 0.1), ("grasp", 0.1), ("synflow", 0.1),
                                          ("gmp", 1.0), ("dense", 1.0)])
def test_baselines_report_itop_rate_honestly(tmp_path, method, rate):
    s = Trainer(cfg(tmp_path, method=method, epochs=2, synflow_rounds=5)).fit()
    assert s["itop_rate"] == pytest.approx(rate, abs=2e-3)
    expected_sparsity = 0.0 if method == "dense" else 0.9
    assert s["sparsity"] == pytest.approx(expected_sparsity, abs=2e-3)
    assert s["training_flops_relative"] > 0 and s["test_acc_selected"] > 0.1


def test_bf16_autocast_and_channels_last_run(tmp_path):
    s = Trainer(cfg(tmp_path, epochs=2, amp="bf16", channels_last=True)).fit()
    ref = Trainer(cfg(tmp_path, epochs=2, name="fp32")).fit()
    assert s["completed"] and s["updates"] == ref["updates"] > 0
    assert abs(s["final_test_acc"] - ref["final_test_acc"]) < 0.1  # bf16 trains like fp32


def test_lr_scales_with_the_global_batch(tmp_path):
    t = Trainer(cfg(tmp_path, lr=0.1, lr_reference_batch=256, batch_size=64))
    assert t.optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.1 * 64 / 256)


@pytest.mark.slow
def test_compiled_model_keeps_working_across_topology_updates(tmp_path):
    t = Trainer(cfg(tmp_path, epochs=2, compile=True, update_interval=3))
    s = t.fit()
    assert s["updates"] >= 10 and s["test_acc_selected"] > 0.25
    params = dict(t.model.named_parameters())
    for name, m in t.sparsifier.masks().items():
        assert bool((params[name][~m] == 0).all())
    # Same run uncompiled ends close to it: compile changed the speed, not the training.
    plain = Trainer(cfg(tmp_path, epochs=2, update_interval=3, name="plain"))
    plain.fit()
    for name, m in plain.sparsifier.masks().items():
        assert torch.equal(m, t.sparsifier.masks()[name])


def test_tensorboard_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    Trainer(cfg(tmp_path, epochs=1, tensorboard=True)).fit()
    events = list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100


def test_imp_resumes_after_its_first_round(tmp_path):
    import shutil

    from itop.training import train_imp

    c = cfg(tmp_path, method="imp", epochs=1, rounds=1, rewind_step=2, sparsity=0.8)
    first = train_imp(c)
    assert (tmp_path / "run" / "round-0" / "rewind.pt").is_file()
    # Lose round 1 entirely: round 0 is restored from its last checkpoint (past the rewind
    # step), so the rewind weights must come from rewind.pt.
    shutil.rmtree(tmp_path / "run" / "round-1")
    again = train_imp(cfg(tmp_path, method="imp", epochs=1, rounds=1, rewind_step=2, sparsity=0.8,
                          resume="auto"))
    for key in ("test_acc_selected", "final_test_acc", "sparsity", "itop_rate"):
        assert again[key] == first[key], key


# -- stop signals (issue 14) -----------------------------------------------------------------------


def _signal_at(sig, epoch, batch, times=1):
    import os

    def on_step(info):
        if (info.epoch, info.step) == (epoch, batch):
            for _ in range(times):
                os.kill(os.getpid(), sig)

    return on_step


def test_a_stop_signal_checkpoints_the_current_step_and_the_resume_is_exact(tmp_path):
    sig = signal.SIGTERM  # SIGINT takes the same path (below)
    straight = Trainer(cfg(tmp_path / "a"))
    straight.fit()
    spe = straight.steps_per_epoch
    before = signal.getsignal(sig)

    stopped = Trainer(cfg(tmp_path / "b"), on_step=_signal_at(sig, 1, 4))  # 4 steps into epoch 2
    with pytest.raises(Interrupted) as e:
        stopped.fit()
    assert (e.value.signum, e.value.step, e.value.exit_code) == (sig, spe + 4, 128 + sig)
    assert e.value.checkpoint == str(tmp_path / "b" / "run" / "checkpoints" / f"ckpt-step{spe + 4:09d}.pt")
    assert signal.getsignal(sig) is before  # the handlers are put back
    assert not (tmp_path / "b" / "run" / "summary.json").exists()

    resumed = Trainer(cfg(tmp_path / "b", resume="auto"))
    resumed.fit()
    _same_run(straight, resumed)
    assert metrics(tmp_path / "a" / "run") == metrics(tmp_path / "b" / "run")


def test_sigint_stops_like_sigterm_and_a_second_one_stops_at_once(tmp_path):
    t = Trainer(cfg(tmp_path, name="once"), on_step=_signal_at(signal.SIGINT, 0, 3))
    with pytest.raises(Interrupted) as e:
        t.fit()
    assert (e.value.signum, e.value.step, e.value.exit_code) == (signal.SIGINT, 3, 130)
    assert Path(e.value.checkpoint).name == "ckpt-step000000003.pt"
    t = Trainer(cfg(tmp_path, name="twice"), on_step=_signal_at(signal.SIGINT, 0, 3, times=2))
    with pytest.raises(KeyboardInterrupt) as e:
        t.fit()
    assert not isinstance(e.value, Interrupted) and not (tmp_path / "twice" / "checkpoints").exists()
    t = Trainer(cfg(tmp_path, name="term"), on_step=_signal_at(signal.SIGTERM, 0, 3, times=2))
    with pytest.raises(Interrupted) as e:
        t.fit()
    assert e.value.step == 3 and Path(e.value.checkpoint).is_file()


def test_a_batch_larger_than_the_training_set_warns(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="itop.training.trainer"):
        t = Trainer(cfg(tmp_path, batch_size=100000))
    assert t.steps_per_epoch == 1
    assert "batch_size 100000 is larger than the training set" in caplog.text and "lower --batch-size" in caplog.text

"""Faults injected through the command line: a run never lies about what it did and never loses
what it had (issue 14).

Each test damages a real run folder the way the world does (a flipped bit inside a tensor, a
truncated or empty file, every checkpoint damaged, SIGKILL during a checkpoint write, SIGTERM, a
full disk, changed settings on resume) and checks what ``itop`` says and does. Runs are tiny
(digits, two epochs of 11 steps); the signal tests start a real ``python -m itop`` process.
"""

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from itop.cli import main

# Two epochs of 11 steps; updates every 3 steps; a constant learning rate keeps the arithmetic plain.
BASE = ["--epochs", "2", "--batch-size", "128", "--update-interval", "3", "--method", "rigl",
        "--lr-schedule", "constant", "--keep-checkpoints", "3", "--tensorboard", "false",
        "--progress", "none", "--threads", "1"]
STEPS_PER_EPOCH = 11
LAST = f"ckpt-step{2 * STEPS_PER_EPOCH:09d}.pt"
FIRST = f"ckpt-step{STEPS_PER_EPOCH:09d}.pt"


@pytest.fixture(autouse=True)
def _keep_thread_count():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def train(capsys, out, name, *extra):
    """``itop train`` in this process: (exit status, stdout, stderr)."""
    rc = main(["train", *BASE, "--out-dir", str(out), "--name", name, *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def itop_process(*args, **kwargs):
    """``python -m itop`` as its own process, with this worktree's package."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen([sys.executable, "-m", "itop", "--log-level", "WARNING", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("itop: error:") and "Traceback" not in err, err
    return lines[0]


def outcome(run_dir):
    """What a run reports, without what depends on the clock or the folder."""
    s = json.loads((run_dir / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in ("wall_time_s", "run_dir")}


def records(run_dir):
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rec.pop("seconds", None)
        out.append(rec)
    return out


def fingerprint(folder):
    """Every file of a folder and the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def flip_bit_inside(path, entry):
    """Flip one bit inside the stored bytes of the first sizeable tensor of ``entry`` (torch still
    loads the file without complaint)."""
    state = torch.load(path, weights_only=True)

    def tensors(v):
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, dict):
            for x in v.values():
                yield from tensors(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                yield from tensors(x)

    data = bytearray(path.read_bytes())
    for t in tensors(state[entry]):
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()[:64]
        at = data.find(raw) if len(raw) == 64 else -1
        if at >= 0 and data.find(raw, at + 1) < 0:
            data[at + 7] ^= 0x20
            path.write_bytes(bytes(data))
            torch.load(path, weights_only=True)
            return
    raise AssertionError(f"no tensor of {entry} found in {path}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run: what every repaired run must end up identical to."""
    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    try:
        assert main(["--log-level", "WARNING", "train", *BASE, "--out-dir", str(out), "--name", "ref"]) == 0
    finally:
        torch.set_num_threads(threads)
    run = out / "ref"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [FIRST, LAST]
    return run


def copy_run(reference, tmp_path):
    shutil.copytree(reference, tmp_path / "ref")
    return tmp_path / "ref"


# -- damaged checkpoints -------------------------------------------------------------------------


DAMAGE = {
    "bit flip in the weights": (lambda p: flip_bit_inside(p, "model"), "checksum mismatch in 'model'"),
    "bit flip in the optimizer state": (lambda p: flip_bit_inside(p, "optimizer"), "checksum mismatch in 'optimizer'"),
    "bit flip in the masks": (lambda p: flip_bit_inside(p, "sparsifier"), "checksum mismatch in 'sparsifier'"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated or corrupt"),
    "empty": (lambda p: p.write_bytes(b""), "is empty"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_is_reported_and_auto_resume_falls_back(reference, tmp_path, capsys, damage):
    run = copy_run(reference, tmp_path)
    hurt, words = DAMAGE[damage]
    hurt(run / "checkpoints" / LAST)

    assert main(["eval", str(run / "checkpoints" / LAST)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert words in line and "--resume" not in line  # eval takes no --resume

    rc, out, err = train(capsys, tmp_path, "ref", "--resume", "auto")
    assert rc == 0, err
    assert outcome(run) == outcome(reference)  # epoch 2 redone from the epoch-1 checkpoint
    assert records(run) == records(reference)
    fresh = torch.load(run / "checkpoints" / LAST, weights_only=True)
    good = torch.load(reference / "checkpoints" / LAST, weights_only=True)
    for name, w in good["model"].items():
        assert torch.equal(fresh["model"][name], w), name


def test_every_checkpoint_damaged_refuses_changing_nothing_until_asked_to_restart(reference, tmp_path, capsys):
    run = copy_run(reference, tmp_path)
    flip_bit_inside(run / "checkpoints" / LAST, "model")
    (run / "checkpoints" / FIRST).write_bytes((run / "checkpoints" / FIRST).read_bytes()[:1000])
    before = fingerprint(run)

    rc, out, err = train(capsys, tmp_path, "ref", "--resume", "auto")
    line = one_error_line(err)
    assert rc == 2 and "no checkpoint of" in line and "is usable (2 found" in line and "--resume restart" in line
    assert fingerprint(run) == before  # metrics.jsonl, summary, best.pt, the damaged files: all kept

    rc, out, err = train(capsys, tmp_path, "ref", "--resume", "restart")
    assert rc == 0, err
    assert outcome(run) == outcome(reference) and records(run) == records(reference)


def test_results_without_any_checkpoint_are_not_overwritten(reference, tmp_path, capsys):
    run = copy_run(reference, tmp_path)
    shutil.rmtree(run / "checkpoints")
    before = fingerprint(run)
    rc, out, err = train(capsys, tmp_path, "ref", "--resume", "auto")
    line = one_error_line(err)
    assert rc == 2 and "has results (summary.json, best.pt, metrics.jsonl) but no checkpoint" in line
    assert fingerprint(run) == before
    rc, out, err = train(capsys, tmp_path, "ref")  # a fresh start is refused as before
    assert rc == 2 and "--resume restart" in one_error_line(err)


def test_stale_temporary_files_are_removed_when_a_run_starts(reference, tmp_path, capsys):
    run = copy_run(reference, tmp_path)
    partial = (run / "checkpoints" / LAST).read_bytes()[:4096]  # what a killed write leaves
    stale = [run / "checkpoints" / f".{LAST}.k3j4h5g6.tmp", run / ".best.pt.a1b2c3d4.tmp"]
    for p in stale:
        p.write_bytes(partial)
    rc, out, err = train(capsys, tmp_path, "ref", "--resume", "auto")
    assert rc == 0, err
    assert not any(p.exists() for p in stale)
    assert outcome(run) == outcome(reference)


# -- kills and signals ---------------------------------------------------------------------------


def test_sigkill_during_a_checkpoint_write_loses_nothing(reference, tmp_path, capsys):
    """Checkpoints every step; SIGKILL the process while a temporary checkpoint file exists."""
    run = tmp_path / "ref"
    caught = None
    for _attempt in range(3):
        shutil.rmtree(run, ignore_errors=True)
        proc = itop_process("train", *BASE, "--out-dir", str(tmp_path), "--name", "ref",
                            "--checkpoint-every-steps", "1")
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                names = os.listdir(run / "checkpoints")
            except FileNotFoundError:
                names = []
            if any(n.endswith(".tmp") for n in names) and any(n.endswith(".pt") for n in names):
                proc.send_signal(signal.SIGKILL)
                caught = [n for n in names if n.endswith(".tmp")]
                break
            time.sleep(0.0005)
        proc.communicate(timeout=60)
        if caught:
            break
    assert caught, "never saw a checkpoint write in progress"
    assert proc.returncode == -signal.SIGKILL

    rc, out, err = train(capsys, tmp_path, "ref", "--resume", "auto")
    assert rc == 0, err
    assert not [p for p in run.rglob("*.tmp")]
    assert outcome(run) == outcome(reference)  # checkpoint_every_steps changes nothing computed
    assert records(run) == records(reference)


def test_sigterm_checkpoints_the_current_step_and_says_how_to_resume(tmp_path, capsys):
    """What SLURM and Kubernetes send before killing a job: a checkpoint, one line, exit 143.
    (SIGINT does the same, exit 130; that and the exactness of the resume are tested in process in
    test_trainer.py.)"""
    sig = signal.SIGTERM
    run = tmp_path / "long"
    # 81 steps per epoch and many epochs: the signal lands in the middle of training.
    args = [*BASE, "--epochs", "30", "--batch-size", "16", "--out-dir", str(tmp_path), "--name", "long"]
    proc = itop_process("train", *args)
    deadline = time.monotonic() + 240
    metrics = run / "metrics.jsonl"
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and metrics.read_text().count('"type": "update"') >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"itop: interrupted by {signal.Signals(sig).name} at step ")
    assert "--resume auto" in line and f"exit status {128 + sig}" in line and "Traceback" not in err
    step = int(line.split(" at step ")[1].split(";")[0])
    ckpt = run / "checkpoints" / f"ckpt-step{step:09d}.pt"
    assert f"checkpoint {ckpt} holds it" in line
    state = torch.load(ckpt, weights_only=True)
    assert state["progress"]["step"] == step and state["sparsifier"]["step"] == step
    assert not (run / "summary.json").exists()

    # The same command plus --resume auto continues from exactly that step.
    rc, out, err = train(capsys, tmp_path, "long", "--epochs", "30", "--batch-size", "16",
                         "--resume", "auto", "--max-steps", str(step + 2))
    assert rc == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == step + 2 and not summary["completed"]


def test_a_full_disk_while_writing_best_pt_is_one_line_and_leaves_no_temporary(tmp_path, capsys):
    """Files may not grow beyond 300 kB (RLIMIT_FSIZE): the first best.pt (550 kB) cannot be written."""

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    proc = itop_process("train", *BASE, "--out-dir", str(tmp_path), "--name", "full", preexec_fn=small_disk)
    out, err = proc.communicate(timeout=240)
    line = one_error_line(err)
    assert proc.returncode == 2
    assert "could not write" in line and "best.pt: File too large" in line and "intact" in line
    run = tmp_path / "full"
    assert not list(run.rglob("*.tmp")) and not (run / "best.pt").exists()
    # Space back: the run had no checkpoint yet, so --resume auto starts it from scratch.
    rc, out, err = train(capsys, tmp_path, "full", "--resume", "auto")
    assert rc == 0, err
    assert json.loads((run / "summary.json").read_text())["completed"]


# -- resume is a contract ------------------------------------------------------------------------


def test_changed_settings_are_refused_unless_asked_for_then_applied(tmp_path, capsys):
    rc, out, err = train(capsys, tmp_path, "c", "--max-steps", "14")  # stopped in epoch 2
    assert rc == 0, err
    run = tmp_path / "c"
    before = fingerprint(run)

    rc, out, err = train(capsys, tmp_path, "c", "--resume", "auto", "--lr", "0.5", "--distribution", "uniform",
                         "--grad-clip", "1")
    line = one_error_line(err)
    assert rc == 2 and f"resuming from {run / 'checkpoints' / FIRST} would change" in line
    assert "lr 0.05 -> 0.5, grad_clip None -> 1.0, distribution 'erk' -> 'uniform'" in line
    assert "--resume-override lr,grad_clip,distribution" in line and "step 11" in line
    assert fingerprint(run) == before

    rc, out, err = train(capsys, tmp_path, "c", "--resume", "auto", "--lr", "0.5", "--distribution", "uniform",
                         "--resume-override", "lr,distribution")
    line = one_error_line(err)
    assert rc == 2 and "distribution cannot change during a run: it decides which weights are sparse" in line
    assert fingerprint(run) == before

    # Control keys (where files go, how many checkpoints are kept) may change freely.
    rc, out, err = train(capsys, tmp_path, "c", "--resume", "auto", "--lr", "0.5", "--grad-clip", "1",
                         "--resume-override", "lr,grad_clip", "--keep-checkpoints", "5")
    assert rc == 0, err
    config = (run / "config.yaml").read_text()
    assert "\nlr: 0.5\n" in config and "\ngrad_clip: 1.0\n" in config and "resume_override: []" in config
    recs = records(run)
    resumes = [r for r in recs if r["type"] == "resume"]
    assert resumes == [{"type": "resume", "epoch": 2, "step": STEPS_PER_EPOCH,
                        "checkpoint": str(run / "checkpoints" / FIRST),
                        "changed": {"lr": {"old": 0.05, "new": 0.5}, "grad_clip": {"old": None, "new": 1.0}}}]
    assert recs.index(resumes[0]) == next(i for i, r in enumerate(recs) if r.get("step", 0) > STEPS_PER_EPOCH) - 1
    assert [r["lr"] for r in recs if r["type"] == "epoch"] == [0.05, 0.5]
    final = torch.load(run / "checkpoints" / LAST, weights_only=True)
    groups = final["optimizer"]["param_groups"]
    assert {g["lr"] for g in groups} == {0.5} and {g["initial_lr"] for g in groups} == {0.5}
    assert final["scheduler"]["base_lrs"] == [0.5] * len(groups)
    assert final["config"]["lr"] == 0.5 and final["config"]["grad_clip"] == 1.0

    # The new values were trained with: the same resume without the change ends elsewhere.
    shutil.rmtree(run)
    assert train(capsys, tmp_path, "c", "--max-steps", "14")[0] == 0
    assert train(capsys, tmp_path, "c", "--resume", "auto")[0] == 0
    plain = torch.load(run / "checkpoints" / LAST, weights_only=True)
    assert any(not torch.equal(plain["model"][k], v) for k, v in final["model"].items())


def test_the_nan_loss_advice_works_when_followed(tmp_path, capsys):
    """At half of training the learning rate jumps x1e5 and the loss becomes NaN; lowering --lr and
    resuming as the message says finishes the run."""
    jump = ["--epochs", "4", "--lr-schedule", "step", "--lr-milestones", "[0.5]", "--lr-gamma", "100000"]
    rc, out, err = train(capsys, tmp_path, "nan", *jump)
    line = one_error_line(err)
    good = tmp_path / "nan" / "checkpoints" / LAST
    assert rc == 2 and "loss became nan at epoch 3" in line
    assert f"the last good checkpoint is {good}" in line
    assert "lower --lr (or set --grad-clip) and continue from it with --resume auto --resume-override lr" in line

    rc, out, err = train(capsys, tmp_path, "nan", *jump, "--lr", "5e-7", "--resume", "auto",
                         "--resume-override", "lr")
    assert rc == 0, err
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["completed"] and summary["steps"] == 4 * STEPS_PER_EPOCH
    assert summary["test_acc_selected"] > 0.3  # chance is 0.1
    recs = records(tmp_path / "nan")
    assert [r["changed"] for r in recs if r["type"] == "resume"] == [{"lr": {"old": 0.05, "new": 5e-7}}]
    lrs = [r["lr"] for r in recs if r["type"] == "epoch"]
    # An epoch's record shows the rate of the step after it: x1e5 from step 22 on, then 5e-7 x 1e5.
    assert lrs[:2] == [0.05, 5000.0] and lrs[2:] == pytest.approx([0.05, 0.05])


def test_a_nan_before_any_checkpoint_says_to_start_over(tmp_path, capsys):
    rc, out, err = train(capsys, tmp_path, "early", "--lr", "1e30", "--method", "static")
    line = one_error_line(err)
    assert rc == 2 and "no checkpoint was written yet" in line and "--resume restart" in line
    rc, out, err = train(capsys, tmp_path, "early", "--resume", "restart")
    assert rc == 0, err


@pytest.mark.slow
def test_sigterm_to_a_sweep_stops_its_runs_with_checkpoints(tmp_path):
    """SLURM signals the sweep; the sweep passes SIGTERM on; each run checkpoints its current step."""
    import yaml

    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "tiny",
        "base": {"dataset": "digits", "epochs": 30, "batch_size": 16, "sparsity": 0.9, "update_interval": 3,
                 "method": "rigl", "tensorboard": False},
        "grid": {"seed": [0]},
        "scales": {"smoke": {}},
    }))
    proc = itop_process("sweep", "-c", str(sweep), "--scale", "smoke", "--out-dir", str(tmp_path / "out"),
                        "--threads", "1")
    deadline = time.monotonic() + 300
    found = []
    while proc.poll() is None and time.monotonic() < deadline:
        found = [m for m in (tmp_path / "out").rglob("metrics.jsonl") if m.read_text().count('"update"') >= 3]
        if found:
            break
        time.sleep(0.05)
    assert found, "the sweep's run never started training"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "sweep interrupted" in err
    run = found[0].parent
    log = (run / "sweep.log").read_text()
    assert "itop: interrupted by SIGTERM at step " in log and "(exit status 143)" in log
    step = int(log.split("itop: interrupted by SIGTERM at step ")[1].split(";")[0])
    assert (run / "checkpoints" / f"ckpt-step{step:09d}.pt").is_file()


def test_a_sparsifier_setting_is_applied_from_the_resume_step(tmp_path, capsys):
    assert train(capsys, tmp_path, "s", "--max-steps", "14")[0] == 0
    rc, out, err = train(capsys, tmp_path, "s", "--resume", "auto", "--drop-fraction", "0.1",
                         "--drop-schedule", "constant", "--resume-override", "drop_fraction,drop_schedule")
    assert rc == 0, err
    updates = [(r["step"], r["drop_fraction"]) for r in records(tmp_path / "s") if r["type"] == "update"]
    before = [f for s, f in updates if s <= STEPS_PER_EPOCH]
    after = [f for s, f in updates if s > STEPS_PER_EPOCH]
    assert before == sorted(before, reverse=True) and 0.1 not in before and before[0] < 0.3  # RigL's cosine
    assert after and all(f == 0.1 for f in after)

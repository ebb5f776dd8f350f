"""Progress within an epoch: the bar, the plain lines and the mode choice, on a fake clock."""

import io

import pytest

from itop.cli import main
from itop.errors import ConfigError
from itop.training.config import load_config
from itop.training.progress import (
    ProgressBar,
    ProgressLines,
    StepInfo,
    format_duration,
    make_progress,
)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def info(step, steps=100, *, seconds, epoch=0, done=None, loss=0.5, epochs=3):
    done = step if done is None else done
    return StepInfo(epoch=epoch, epochs=epochs, step=step, steps=steps, global_step=epoch * steps + step,
                    total_steps=epochs * steps, loss=loss, seconds=seconds, done=done)


def test_step_info_rate_and_eta():
    i = info(20, seconds=10.0)
    assert i.rate == 2.0 and i.eta(80) == 40.0
    assert info(0, seconds=0.0).eta(10) is None
    assert [format_duration(s) for s in (None, 0, 59.4, 61, 3600 + 125)] == ["?", "0:00", "0:59", "1:01", "1:02:05"]


def test_bar_redraws_in_place_at_most_every_refresh():
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar(out, clock=clock, refresh_s=0.2)
    bar(info(1, seconds=0.5, loss=2.25))
    first = out.getvalue()
    assert first.startswith("\r") and "\n" not in first
    assert "epoch 1/3" in first and "1/100" in first and "2.0 it/s" in first and "ETA 0:50" in first
    assert "loss 2.2500" in first
    clock.now += 0.1
    bar(info(2, seconds=0.6))
    assert out.getvalue() == first  # too soon: not redrawn
    clock.now += 0.2
    bar(info(50, seconds=25.0))
    assert out.getvalue().count("\r") == 2 and "50/100" in out.getvalue()
    assert "#" * 15 + "." * 15 in out.getvalue()  # half the bar
    drawn = len(out.getvalue().rsplit("\r", 1)[1])
    bar(info(100, seconds=50.0))  # end of the epoch: the line is cleared for the epoch's log line
    assert out.getvalue().endswith("\r" + " " * drawn + "\r") and "\n" not in out.getvalue()


def test_lines_keep_a_steady_pace_and_short_epochs_quiet():
    clock, out = FakeClock(), io.StringIO()
    lines = ProgressLines(out, clock=clock, every_s=60.0, every_fraction=0.1, min_gap_s=10.0)
    # A short epoch (100 steps in 5 s): no line at all.
    for step in range(1, 101):
        clock.now += 0.05
        lines(info(step, seconds=step * 0.05))
    assert out.getvalue() == ""
    # A long epoch: 1 step per second, 1000 steps. 10% = 100 s, so the 60 s rule rules.
    for step in range(1, 1001):
        clock.now += 1.0
        lines(info(step, steps=1000, seconds=float(step), epoch=1))
    text = out.getvalue().splitlines()
    assert len(text) == 16  # at 60, 120, ..., 960 s; never at the last step
    assert text[0].startswith("epoch 2/3  step 60/1000 (6%)  1.00 it/s  epoch ETA 15:40  run ETA")
    assert "loss 0.5000" in text[0]


def test_lines_every_tenth_of_an_epoch_once_min_gap_passed():
    clock, out = FakeClock(), io.StringIO()
    lines = ProgressLines(out, clock=clock, every_s=60.0, every_fraction=0.1, min_gap_s=10.0)
    for step in range(1, 201):  # 200 steps, 0.25 s each: 10% = 20 steps = 5 s < min_gap
        clock.now += 0.25
        lines(info(step, steps=200, seconds=step * 0.25))
    steps = [int(line.split("step ")[1].split("/")[0]) for line in out.getvalue().splitlines()]
    assert steps == [40, 80, 120, 160]  # every 10 s (40 steps), past the 10% mark each time


def test_lines_after_a_resume_measure_from_the_resume():
    clock, out = FakeClock(), io.StringIO()
    lines = ProgressLines(out, clock=clock, every_s=60.0)
    clock.now += 61.0
    lines(info(501, steps=1000, seconds=61.0, done=1))  # resumed at step 500: 1 step in 61 s
    assert "step 501/1000" in out.getvalue() and "0.02 it/s" in out.getvalue()


def test_modes():
    bar, log = io.StringIO(), io.StringIO()
    pick = lambda mode, interactive: make_progress(mode, bar_stream=bar, line_stream=log,  # noqa: E731
                                                   interactive=interactive)
    assert isinstance(pick("auto", True), ProgressBar) and pick("auto", True).stream is bar
    assert isinstance(pick("auto", False), ProgressLines) and pick("auto", False).stream is log
    assert isinstance(pick("bar", False), ProgressBar)
    assert isinstance(pick("lines", True), ProgressLines)
    assert pick("none", True) is None
    with pytest.raises(ConfigError, match="did you mean 'lines'"):
        load_config(None, {"progress": "line"})


SMOKE = ["--epochs", "1", "--threads", "1", "--tensorboard", "false", "--method", "static"]


def test_cli_draws_a_bar_on_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert main(["train", *SMOKE, "--out-dir", str(tmp_path), "--progress", "auto"]) == 0
    err = capsys.readouterr().err
    assert "\r" in err and "epoch 1/1 [" in err and "it/s" in err and "loss" in err


def test_cli_writes_lines_when_not_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    # every_s of 0: a line after every step but the epoch's last
    original = ProgressLines.__init__

    def eager(self, stream, **kw):
        original(self, stream, **{**kw, "every_s": 0.0})

    monkeypatch.setattr(ProgressLines, "__init__", eager)
    assert main(["train", *SMOKE, "--out-dir", str(tmp_path), "--progress", "auto"]) == 0
    captured = capsys.readouterr()
    steps = [line for line in captured.out.splitlines() if line.startswith("epoch 1/1  step ")]
    assert steps and "\r" not in captured.out and "\r" not in captured.err
    assert steps[0].startswith("epoch 1/1  step 1/") and "it/s" in steps[0] and "run ETA" in steps[0]

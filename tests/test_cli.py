import json
import subprocess
import sys

import pytest

from itop.cli import main

SMOKE = ["--epochs", "1", "--batch-size", "64", "--update-interval", "5", "--tensorboard", "false",
         "--progress", "none"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "itop", *args], capture_output=True, text=True, timeout=300)


def test_train_smoke_prints_results_and_writes_outputs(tmp_path, capsys):
    assert main(["train", *SMOKE, "--out-dir", str(tmp_path), "--name", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy:" in out and "ITOP rate R_s:" in out and str(tmp_path / "smoke") in out
    assert "method: rigl-itop" in out  # the resolved config is printed
    summary = json.loads((tmp_path / "smoke" / "summary.json").read_text())
    assert summary["method"] == "rigl-itop" and summary["completed"]

    assert main(["eval", str(tmp_path / "smoke" / "best.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["test_acc"] == pytest.approx(summary["test_acc_selected"])
    assert result["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert result["zero_weights_fraction"] >= result["sparsity"]
    assert result["itop_rate"] == pytest.approx(summary["itop_rate"])

    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").is_file()
    assert main(["report", str(tmp_path / "report")]) == 2  # no runs there: one-line error
    assert capsys.readouterr().err.strip().startswith("itop: error:")


def test_list_shows_everything(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("rigl-itop", "set-itop", "snfs", "lenet-5-caffe", "resnet-50", "wrn-", "digits",
                 "fashion-mnist", "cifar100", "imagenet"):
        assert name in out, name


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "lenet-301"], "did you mean"),
        (["--dataset", "cifar11"], "did you mean 'cifar10'"),
        (["--method", "rigll"], "did you mean 'rigl'"),
        (["--sparsity", "1.2"], "sparsity must be in [0, 1)"),
        (["--sparsty", "0.9"], "did you mean 'sparsity'"),
        (["--dataset", "fashion-mnist", "--data-dir", "EMPTY", "--download", "false"],
         "train-images-idx3-ubyte.gz"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args, message, tmp_path, capsys):
    args = [str(tmp_path) if a == "EMPTY" else a for a in args]
    assert main(["train", *SMOKE, "--out-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("itop: error:") and message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_corrupt_checkpoint_through_the_real_entry_point(tmp_path):
    bad = tmp_path / "ckpt-step000000001.pt"
    bad.write_bytes(b"not a checkpoint")
    r = run_cli("eval", str(bad))
    assert r.returncode == 2 and "is not a PyTorch checkpoint (it starts with b'not ')" in r.stderr
    assert "Traceback" not in r.stderr and "--resume" not in r.stderr
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 100)  # a damaged zip
    r = run_cli("train", *SMOKE, "--out-dir", str(tmp_path), "--resume", str(bad))
    assert r.returncode == 2 and "truncated or corrupt" in r.stderr and "Traceback" not in r.stderr
    assert "--resume auto to take the newest good one" in r.stderr


class Evil:
    pass


def _one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("itop: error:") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grad-clip", "-1"], "grad_clip is the largest gradient norm let through and must be positive"),
        (["--lr", "nan"], "lr must be a finite number, got nan"),
        (["--lr", ".nan"], "lr must be a finite number, got nan"),
        (["--sparsity", "null"], "cannot be null"),
        (["--momentum", "-1"], "momentum must be in [0, 1)"),
        (["--name", "../x"], "must be a folder name inside out_dir"),
        (["--out-dir", "FILE/x"], "is a file, not a folder; choose another --out-dir"),
        (["--resume-override", "lr"], "add --resume auto"),
    ],
)
def test_values_that_used_to_pass_or_crash_are_one_line(args, message, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    args = [a.replace("FILE", str(tmp_path / "file")) for a in args]
    assert main(["train", *SMOKE, "--out-dir", str(tmp_path), *args]) == 2
    assert message in _one_line(capsys.readouterr().err)
    assert not (tmp_path.parent / "x").exists()


def test_messages_name_the_real_problem(tmp_path, capsys):
    assert main(["train", *SMOKE, "--out-dir", str(tmp_path), "--name", "run"]) == 0
    run = tmp_path / "run"
    capsys.readouterr()
    # A folder where a checkpoint file belongs: say so (not "does not exist"), and show a file.
    assert main(["train", *SMOKE, "--out-dir", str(tmp_path), "--name", "run", "--resume", str(run)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"--resume {run} is a folder" in line and "ckpt-step" in line and "does not exist" not in line
    assert main(["eval", str(run)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "is a folder, not a checkpoint file" in line and f"{run / 'best.pt'}" in line
    # eval's advice never mentions --resume, which eval does not take.
    assert main(["eval", str(tmp_path / "missing.pt")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "does not exist" in line and "--resume" not in line and "best.pt" in line
    # A pickled object: what it is and why it is refused, whole words.
    import torch

    torch.save({"obj": Evil()}, tmp_path / "evil.pt")
    assert main(["eval", str(tmp_path / "evil.pt")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "holds a pickled test_cli.Evil object, which a safe weights-only load refuses" in line
    # itop report --out onto a file: one line, nothing written.
    (tmp_path / "afile").write_text("x")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "afile")]) == 2
    assert "is a file, not a folder" in _one_line(capsys.readouterr().err)
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "afile" / "sub")]) == 2
    assert "cannot be created" in _one_line(capsys.readouterr().err)


def test_exit_codes_are_documented():
    import signal

    from itop.cli import EXIT_CODES

    assert set(EXIT_CODES) == {0, 1, 2, 128 + signal.SIGINT, 128 + signal.SIGTERM} == {0, 1, 2, 130, 143}


def test_nan_loss_is_one_line(tmp_path, capsys):
    assert main(["train", *SMOKE, "--out-dir", str(tmp_path), "--lr", "1e30", "--method", "static"]) == 2
    err = capsys.readouterr().err
    assert "lower --lr" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_default_demo_run(tmp_path):
    r = subprocess.run([sys.executable, "-m", "itop", "train", "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    summary = json.loads(next(tmp_path.glob("*/summary.json")).read_text())
    assert summary["test_acc_selected"] > 0.9 and summary["itop_rate"] > 0.2


def test_sweep_and_report_get_their_arguments_in_order(capsys):
    import pathlib

    study = pathlib.Path(__file__).parent.parent / "configs" / "studies" / "batch-size.yaml"
    assert main(["--log-level", "WARNING", "sweep", "-c", str(study), "--scale", "smoke", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "batch-size at scale smoke: 4 runs" in out and "planned" in out

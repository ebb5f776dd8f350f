"""The scripts in examples/ run end to end (slow: each starts a framework)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600, check=True)


@pytest.mark.slow
def test_hf_trainer_example(tmp_path):
    pytest.importorskip("transformers")
    out = _run([str(REPO / "examples" / "hf_trainer_gpt2.py"), "--data-file", str(REPO / "README.md"),
                "--steps", "6", "--out", str(tmp_path / "run")], tmp_path)
    assert "transformer.h.0.attn.c_attn.weight" in out.stdout
    assert (tmp_path / "run" / "checkpoint-6" / "itop_sparsifier.pt").is_file()


@pytest.mark.slow
def test_lightning_example(tmp_path):
    pytest.importorskip("lightning")
    _run([str(REPO / "examples" / "lightning_vit.py"), "--epochs", "1"], tmp_path)
    assert list((tmp_path / "runs" / "lightning-vit").rglob("*.ckpt"))

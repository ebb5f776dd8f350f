"""itop.integrations.lightning against the real lightning.Trainer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

lightning = pytest.importorskip("lightning")

from itop.errors import ConfigError  # noqa: E402
from itop.integrations.lightning import ItopCallback  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine it is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Module(lightning.LightningModule):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 4))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def loader():
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=8, shuffle=False)


def dst(method="rigl"):
    return ItopCallback(method, sparsity=0.8, update_interval=2, update_end=1.0, seed=3)


def make_trainer(tmp_path, cb, *, max_epochs=2):
    checkpoints = lightning.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path, filename="{epoch}", every_n_epochs=1, save_top_k=-1, save_on_train_epoch_end=True)
    return lightning.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, accumulate_grad_batches=2,
        logger=lightning.pytorch.loggers.CSVLogger(tmp_path, name="logs"), log_every_n_steps=1,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[cb, checkpoints], num_sanity_val_steps=0,
    )


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_fit_logs_and_resume_continues_exactly(tmp_path, method):
    cb = dst(method)
    full_module = Module()
    trainer = make_trainer(tmp_path / "full", cb)
    trainer.fit(full_module, loader())
    sp = cb.sparsifier
    # 8 batches per epoch, accumulation 2: 4 optimizer steps per epoch
    assert trainer.global_step == sp.step_count == 8
    assert [r["step"] for r in sp.history] == [2, 4, 6]  # no update on the last step
    assert trainer.callback_metrics["itop/itop_rate"].item() == pytest.approx(sp.itop_rate())
    assert trainer.callback_metrics["itop/sparsity"].item() == pytest.approx(0.8, abs=1e-3)
    params = dict(full_module.named_parameters())
    for name, mask in sp.masks().items():
        assert torch.all(params[name][~mask] == 0), name
    import csv

    (log_file,) = (tmp_path / "full" / "logs").rglob("metrics.csv")
    rows = [r for r in csv.DictReader(log_file.open()) if r.get("itop/itop_rate")]
    assert [int(r["step"]) for r in rows] == list(range(8))  # logged at every optimizer step
    assert float(rows[-1]["itop/itop_rate"]) == pytest.approx(sp.itop_rate())
    ckpt = torch.load(tmp_path / "full" / "epoch=0.ckpt", weights_only=False)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ItopCallback")]
    assert state["step"] == 4

    resumed_cb = dst(method)
    resumed = Module(seed=1)  # another init: the checkpoint must win
    make_trainer(tmp_path / "resumed", resumed_cb).fit(resumed, loader(), ckpt_path=tmp_path / "full" / "epoch=0.ckpt")
    assert resumed_cb.sparsifier.step_count == 8
    for name, mask in sp.masks().items():
        assert torch.equal(mask, resumed_cb.sparsifier.masks()[name]), name
    for (name, p), q in zip(full_module.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert resumed_cb.sparsifier.itop_rate() == sp.itop_rate()


def test_errors():
    cb = dst()
    with pytest.raises(ConfigError, match="call trainer.fit\\(\\) first"):
        cb.sparsifier  # noqa: B018

    class NoOptimizer(Module):
        def configure_optimizers(self):
            return None

    trainer = lightning.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                enable_checkpointing=False, callbacks=[cb])
    with pytest.raises(ConfigError, match="configure_optimizers returned none"):
        trainer.fit(NoOptimizer(), loader())


@pytest.mark.slow  # two fresh processes importing torch and lightning: 15-40 s on 2 shared cores
def test_ddp_two_cpu_processes_agree_on_masks(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(HERE / "lightning_ddp_run.py"), str(tmp_path)], env=env,
                   check=True, timeout=300, capture_output=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2
    assert r0["steps"] == r1["steps"] == 8 and r0["updates"] == r1["updates"] == 3
    assert r0["rate"] == r1["rate"] > 0.2
    for name, mask in r0["masks"].items():
        assert torch.equal(mask, r1["masks"][name]), name

"""itop.integrations.hf against the real transformers.Trainer (tiny GPT-2 from a config)."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from itop.errors import CheckpointError, ConfigError  # noqa: E402
from itop.integrations.hf import STATE_FILE, ItopCallback  # noqa: E402
from itop.targets import TargetSelector  # noqa: E402

VOCAB, LENGTH = 48, 16


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine it is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=LENGTH,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(config)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=64):
        g = torch.Generator().manual_seed(3)
        self.ids = torch.randint(0, VOCAB, (n, LENGTH), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def make_trainer(out_dir, callback, *, max_steps=8, accumulation=2, seed=0, init_seed=0):
    args = transformers.TrainingArguments(
        output_dir=str(out_dir), max_steps=max_steps, per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulation, learning_rate=3e-3, weight_decay=0.01,
        logging_steps=2, save_strategy="steps", save_steps=4, report_to=[], use_cpu=True,
        seed=seed, data_seed=seed, disable_tqdm=True, dataloader_num_workers=0,
        lr_scheduler_type="constant",
    )
    return transformers.Trainer(model=tiny_gpt2(init_seed), args=args, train_dataset=Tokens(),
                                callbacks=[callback])


def dst(method="rigl"):
    return ItopCallback(method, sparsity=0.8, update_interval=2, update_end=1.0, seed=7)


@pytest.fixture(scope="module")
def full_runs(tmp_path_factory):
    """One uninterrupted 8-step run per method: (trainer, callback, output folder, log lines)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = {}
    for method in ("rigl", "set"):
        out = tmp_path_factory.mktemp(f"full-{method}")
        cb = dst(method)
        trainer = make_trainer(out, cb)
        records = []
        handler = logging.Handler()
        handler.emit = lambda record, records=records: records.append(record.getMessage())
        logging.getLogger("itop.sparsifier").addHandler(handler)
        level = logging.getLogger("itop.sparsifier").level
        logging.getLogger("itop.sparsifier").setLevel(logging.INFO)
        try:
            trainer.train()
        finally:
            logging.getLogger("itop.sparsifier").removeHandler(handler)
            logging.getLogger("itop.sparsifier").setLevel(level)
        runs[method] = (trainer, cb, out, records)
    torch.set_num_threads(threads)
    return runs


def test_trains_sparse_logs_rs_and_saves_state(full_runs):
    trainer, cb, tmp_path, records = full_runs["rigl"]
    sp = cb.sparsifier
    # one sparsifier step per optimizer step (accumulation 2: 16 micro-batches, 8 steps)
    assert sp.step_count == trainer.state.global_step == 8
    assert [r["step"] for r in sp.history] == [2, 4, 6]  # no update on the last step
    assert "transformer.h.0.attn.c_attn.weight" in sp.layer_names()
    assert "transformer.wte.weight" not in sp.layer_names()  # tied to lm_head: dense
    assert sp.actual_sparsity() == pytest.approx(0.8, abs=1e-3)
    params = dict(trainer.model.named_parameters())
    for name, mask in sp.masks().items():
        assert torch.all(params[name][~mask] == 0), name
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logged] == [2, 4, 6, 8]
    rates = [h["itop/itop_rate"] for h in logged]
    assert rates == sorted(rates) and rates[0] > 0.2 and rates[-1] == sp.itop_rate()
    assert all(h["itop/sparsity"] == pytest.approx(0.8, abs=1e-3) for h in logged)
    saved = torch.load(tmp_path / "checkpoint-4" / STATE_FILE, weights_only=True)
    assert saved["step"] == 4
    assert (tmp_path / "checkpoint-8" / STATE_FILE).is_file()
    assert any("which weights are sparse" in r for r in records)


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_resume_from_checkpoint_continues_exactly(tmp_path, full_runs, method):
    full, full_cb, full_dir, _ = full_runs[method]
    # The checkpoint an interrupted run leaves at step 4, resumed by a fresh Trainer
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(full_dir / "checkpoint-4", resumed_dir / "checkpoint-4")
    cb = dst(method)
    resumed = make_trainer(resumed_dir, cb, init_seed=1)  # another init: the checkpoint must win
    resumed.train(resume_from_checkpoint=True)
    assert cb.sparsifier.step_count == 8
    assert cb.sparsifier.history == [
        {**r, "seconds": s["seconds"]} for r, s in zip(full_cb.sparsifier.history, cb.sparsifier.history, strict=True)
    ]
    for name, mask in full_cb.sparsifier.masks().items():
        assert torch.equal(mask, cb.sparsifier.masks()[name]), name
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert cb.sparsifier.itop_rate() == full_cb.sparsifier.itop_rate()


def test_resume_without_sparsifier_state_is_one_clear_error(tmp_path, full_runs):
    _, _, full_dir, _ = full_runs["rigl"]
    shutil.copytree(full_dir / "checkpoint-4", tmp_path / "checkpoint-4")
    (tmp_path / "checkpoint-4" / STATE_FILE).unlink()
    trainer = make_trainer(tmp_path, dst())
    with pytest.raises(CheckpointError, match="resumed at step 4 but no itop sparsifier state"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    cb = dst()
    trainer = make_trainer(tmp_path, cb)
    shutil.copy(full_dir / "checkpoint-8" / STATE_FILE, tmp_path / "checkpoint-4" / STATE_FILE)
    with pytest.raises(CheckpointError, match="is at step 8 but the Trainer resumed at step 4"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))


def test_before_training_and_without_optimizer():
    cb = dst()
    with pytest.raises(ConfigError, match="call trainer.train\\(\\) first"):
        cb.sparsifier  # noqa: B018
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    with pytest.raises(ConfigError, match="found no optimizer on the Trainer"):
        cb.on_train_begin(None, state, control, model=tiny_gpt2(), optimizer=None)
    with pytest.raises(ConfigError, match="prunes at initialisation"):
        ItopCallback("snip", sparsity=0.9)


def test_attach_puts_the_callback_first_and_patterns_sparsify_the_tied_embedding(tmp_path):
    cb = ItopCallback("set", sparsity=0.5, update_interval=4,
                      targets=TargetSelector(patterns=("transformer.wte.weight",)))
    trainer = make_trainer(tmp_path, cb, max_steps=2, accumulation=1)
    assert cb.attach(trainer) is cb and trainer.callback_handler.callbacks[0] is cb
    assert trainer.callback_handler.callbacks.count(cb) == 1
    trainer.train()
    assert "transformer.wte.weight" in cb.sparsifier.layer_names()
    model = trainer.model
    assert model.lm_head.weight is model.transformer.wte.weight
    assert int((model.lm_head.weight != 0).sum()) == int(cb.sparsifier.masks()["transformer.wte.weight"].sum())

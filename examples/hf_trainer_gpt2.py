"""Dynamic sparse training of a small GPT-2 with the Hugging Face Trainer.

The model is built from a config (no download), the data is any local UTF-8 text file read by
itop's character-level ``text`` dataset, and one callback adds RigL with ITOP tracking::

    pip install 'itop[hf]'
    python examples/hf_trainer_gpt2.py --data-file README.md --steps 200
    python examples/hf_trainer_gpt2.py --data-file README.md --steps 400 --resume   # continue

R_s and the sparsity appear in the Trainer's logs (``itop/itop_rate``, ``itop/sparsity``);
the sparsifier state is saved in every checkpoint and restored on resume.
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

from itop.data import load_dataset  # noqa: E402
from itop.integrations.hf import ItopCallback  # noqa: E402


class Windows(torch.utils.data.Dataset):
    """itop text windows as the dicts a causal LM takes (labels are shifted by the model)."""

    def __init__(self, text):
        self.text = text

    def __len__(self):
        return len(self.text)

    def __getitem__(self, i):
        x, y = self.text[i]
        ids = torch.cat([x, y[-1:]])
        return {"input_ids": ids, "labels": ids}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-file", required=True, help="a UTF-8 text file")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--out", default="runs/hf-gpt2")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    args = parser.parse_args()

    splits = load_dataset("text", data_file=args.data_file, block_size=63, val_fraction=0.0)
    config = transformers.GPT2Config(vocab_size=splits.vocab_size, n_positions=64, n_embd=64,
                                     n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(config)
    training = transformers.TrainingArguments(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=16,
        gradient_accumulation_steps=2, learning_rate=3e-3, logging_steps=20, save_steps=100,
        report_to=[], use_cpu=not torch.cuda.is_available(),
    )
    callback = ItopCallback("rigl", sparsity=args.sparsity, update_interval=20, update_end=0.75)
    trainer = transformers.Trainer(model=model, args=training, train_dataset=Windows(splits.train))
    callback.attach(trainer)  # first among the callbacks, so every logger sees R_s
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    print(callback.sparsifier.describe())  # noqa: T201


if __name__ == "__main__":
    main()

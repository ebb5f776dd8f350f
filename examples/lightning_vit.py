"""Dynamic sparse training of a small vision transformer with PyTorch Lightning.

``vit-tiny`` from itop's model zoo on Fashion-MNIST (or scikit-learn's digits when no data
folder is given), SET with ITOP tracking added by one callback::

    pip install 'itop[lightning]'
    python examples/lightning_vit.py --epochs 2
    python examples/lightning_vit.py --dataset fashion-mnist --data-dir /path/to/fashion-mnist
    python examples/lightning_vit.py --devices 2          # DDP on two CPU processes

R_s and the sparsity are logged with ``self.log`` at every optimizer step; the sparsifier state
is part of every Lightning checkpoint (resume with ``--ckpt PATH``).
"""

import argparse

import lightning
import torch
from torch import nn

from itop.data import load_dataset
from itop.integrations.lightning import ItopCallback
from itop.models import build_model


class Classifier(lightning.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self.model(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.05)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--ckpt", default=None, help="a Lightning checkpoint to resume from")
    args = parser.parse_args()

    splits = load_dataset(args.dataset, data_dir=args.data_dir, download=False)
    patch = 4 if splits.image_size % 4 == 0 else 2
    model = build_model("vit-tiny", **splits.model_shape(), patch_size=patch)
    train = torch.utils.data.DataLoader(splits.train, batch_size=64, shuffle=True)
    val = torch.utils.data.DataLoader(splits.val, batch_size=256)
    trainer = lightning.Trainer(
        accelerator="cpu", devices=args.devices, max_epochs=args.epochs,
        default_root_dir="runs/lightning-vit",
        callbacks=[ItopCallback("set", sparsity=args.sparsity, update_interval=10, prog_bar=True)],
    )
    trainer.fit(Classifier(model), train, val, ckpt_path=args.ckpt)


if __name__ == "__main__":
    main()

"""Two-process DDP run for tests/test_integrations_lightning.py (not collected by pytest).

Run as ``python tests/lightning_ddp_run.py OUT_DIR``; Lightning's DDP launcher starts the second
rank by running this script again. Each rank writes its final masks and R_s to OUT_DIR.
"""

import os
import sys

import lightning
import torch
from torch import nn

from itop.integrations.lightning import ItopCallback


class Module(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class SaveMasks(lightning.Callback):
    def __init__(self, dst, out):
        self.dst, self.out = dst, out

    def on_train_end(self, trainer, pl_module):
        sp = self.dst.sparsifier
        masks = {k: v.to(torch.uint8) for k, v in sp.masks().items()}
        torch.save({"masks": masks, "rate": sp.itop_rate(), "steps": sp.step_count,
                    "updates": len(sp.history), "world": trainer.world_size},
                   os.path.join(self.out, f"rank{trainer.global_rank}.pt"))


def main(out):
    torch.set_num_threads(1)
    # each rank draws different data, so only the engine's broadcasts can keep masks equal
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    g = torch.Generator().manual_seed(100 + rank)
    data = torch.utils.data.TensorDataset(torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g))
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=False)
    dst = ItopCallback("set", sparsity=0.8, update_interval=2, update_end=1.0, seed=rank)
    trainer = lightning.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        use_distributed_sampler=False, callbacks=[dst, SaveMasks(dst, out)],
    )
    torch.manual_seed(rank)  # different initial weights per rank too (DDP syncs them)
    trainer.fit(Module(), loader)


if __name__ == "__main__":
    main(sys.argv[1])

"""A callback for tests/test_ddp.py, imported by each DDP rank (PYTHONPATH=tests): every rank writes its own
copy of the trainable weights and EMA at the end of training, so the test can compare the ranks."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch


class SaveRankWeights(pl.Callback):
    def __init__(self, folder: str):
        self.folder = folder

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        os.makedirs(self.folder, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()
                 if k.startswith(("denoiser.neus.", "denoiser.control_branch.", "ema."))}
        torch.save({"state": state, "world_size": trainer.world_size, "global_step": trainer.global_step},
                   os.path.join(self.folder, f"rank{trainer.global_rank}.pt"))

"""``MultiviewDataModule``: the LightningDataModule that ``tunemv fit`` configures through its init arguments."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from tunemv.data.batch import collate_multiview
from tunemv.data.dataset import EpochSampler, MultiviewDataset, ViewSelection
from tunemv.data.format import list_objects
from tunemv.errors import DatasetError


class MultiviewDataModule(pl.LightningDataModule):
    """Train on ``ROOT/train.txt`` (or every object) and validate on ``ROOT/val.txt`` (or on ``val_root``).

    Args:
        root: dataset root in the tunemv format.
        num_views: input views per object (V).
        num_supervision_views: further views per object that only supervise the NeuS field (S).
        resolution: images are resized to ``resolution`` x ``resolution`` and ``K`` rescaled; None keeps the
            stored size.
        view_selection: ``"random"`` views, or ``"uniform"`` azimuth spacing from a random start.
        batch_size: objects per batch.
        num_workers: DataLoader worker processes.
        val_root: a separate validation root (all of its objects); default: ``root``'s val split.
        val_batch_size: default: ``batch_size``.
        skip_invalid: skip and count broken objects instead of raising.
        seed: seeds the shuffling and the per-item view choice.
    """

    def __init__(self, root: str, num_views: int = 8, num_supervision_views: int = 8, resolution: int | None = None,
                 view_selection: ViewSelection = "random", batch_size: int = 4, num_workers: int = 0,
                 val_root: str | None = None, val_batch_size: int | None = None, skip_invalid: bool = False,
                 seed: int = 0, pin_memory: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.train_set: MultiviewDataset | None = None
        self.val_set: MultiviewDataset | None = None

    def _dataset(self, root: str | Path, split: str, training: bool) -> MultiviewDataset:
        h = self.hparams
        return MultiviewDataset(root, split, h.num_views, h.num_supervision_views, h.resolution,
                                h.view_selection if training else "uniform", random_caption=training,
                                skip_invalid=h.skip_invalid, seed=h.seed)

    def setup(self, stage: str | None = None) -> None:
        root = Path(self.hparams.root)
        if not root.is_dir():
            raise DatasetError(root, "data root does not exist; create one with `tunemv data procedural --out ...`")
        if stage in ("fit", None) and self.train_set is None:
            self.train_set = self._dataset(root, "train", training=True)
        if stage in ("fit", "validate", None) and self.val_set is None:
            if self.hparams.val_root:
                self.val_set = self._dataset(self.hparams.val_root, "all", training=False)
            elif list_objects(root, "val"):
                self.val_set = self._dataset(root, "val", training=False)

    def _loader(self, dataset: MultiviewDataset, batch_size: int, shuffle: bool) -> DataLoader:
        h = self.hparams
        return ResumableDataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(len(dataset), h.seed, shuffle),
                          num_workers=h.num_workers, collate_fn=collate_multiview, pin_memory=h.pin_memory,
                          drop_last=shuffle and len(dataset) >= batch_size, persistent_workers=h.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            self.setup("validate")
        if self.val_set is None:
            return []  # no val split: Lightning skips validation
        return self._loader(self.val_set, self.hparams.val_batch_size or self.hparams.batch_size, shuffle=False)


class ResumableDataLoader(DataLoader):
    """A DataLoader whose place in the epoch goes into Lightning checkpoints (Lightning's ``state_dict`` /
    ``load_state_dict`` protocol), so a run killed mid-epoch resumes with exactly the batches it had not
    trained on, in the same order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches_served, self._resume_at = 0, None  # (epoch, batches) saved mid-epoch

    def __iter__(self):
        resume, self._resume_at = self._resume_at, None
        # Only the epoch that was cut short skips: a run saved at an epoch's end starts the next one whole.
        skip = resume[1] if resume is not None and resume[0] == self.sampler.epoch else 0
        self.sampler.skip = skip * self.batch_size
        self.batches_served = skip
        for batch in super().__iter__():
            self.batches_served += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches_served": self.batches_served}

    def load_state_dict(self, state: dict) -> None:
        self._resume_at = (state["epoch"], state["batches_served"])

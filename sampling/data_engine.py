"""The distributed data engine: ``tunemv sample --devices N`` (VFusion3D §3's use of a multiview generator).

A prompt list is split across processes by Lightning's own ``Trainer.predict`` (DDP, any accelerator, any
number of nodes); every process writes its objects into one dataset-format root. Object i goes to rank
i mod world size (no padding: each object is sampled and written exactly once) and is seeded ``seed + i``, as
``tunemv sample --batch-size 1`` seeds it, so the union of the ranks' outputs is a single-process run's, byte
for byte. Each object folder is renamed into place whole (``write_object_folders``). The command line runs
what comes after (the ``--filter`` pass) on rank 0.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, Sampler

from tunemv.sampling.object_folders import ObjectFolderOptions, write_object_folders
from tunemv.sampling.pipeline_source import PipelineSource


class PromptList(Dataset):
    def __init__(self, prompts: Sequence[str], done: set[int]):
        self.items = [(index, prompt) for index, prompt in enumerate(prompts) if index not in done]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> tuple[int, str]:
        return self.items[position]


class StridedSampler(Sampler[int]):
    """Positions rank, rank + world, ...: a disjoint cover with no padding (DistributedSampler pads, which
    would sample and write some objects twice)."""

    def __init__(self, length: int, rank: int, world: int):
        self.positions = list(range(rank, length, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.positions)

    def __len__(self) -> int:
        return len(self.positions)


class SamplingModule(pl.LightningModule):
    """``predict_step`` samples one prompt and writes its object folder."""

    def __init__(self, source: PipelineSource, prompts: Sequence[str], out: str, seed: int,
                 call: dict[str, Any], settings: dict[str, Any], writing: ObjectFolderOptions,
                 done: set[int] = frozenset()):
        super().__init__()
        self.source, self.prompts, self.out, self.seed = source, list(prompts), out, seed
        self.call, self.settings, self.writing, self.done = call, dict(settings), writing, set(done)
        self.pipe = None

    def setup(self, stage: str) -> None:
        if self.pipe is None:  # in each process, on its own device
            self.pipe = self.source.load().to(self.device)
            self.settings["backbone"] = self.pipe.backbone.name_or_path  # as one process says it

    def predict_dataloader(self) -> DataLoader:
        dataset = PromptList(self.prompts, self.done)
        trainer = self.trainer
        sampler = StridedSampler(len(dataset), trainer.global_rank, trainer.world_size)
        return DataLoader(dataset, batch_size=None, sampler=sampler)

    def predict_step(self, item: tuple[int, str], batch_index: int) -> int:
        index, prompt = item
        index = int(index)
        output = self.pipe(prompt, seed=self.seed + index, output_type="pt", **self.call)
        write_object_folders(output, self.out, start_index=index, settings=self.settings, options=self.writing)
        return index


def sample_dataset(source: PipelineSource, prompts: Sequence[str], out: str | Path, seed: int,
                   call: dict[str, Any], settings: dict[str, Any], writing: ObjectFolderOptions,
                   devices: int | str = 1, accelerator: str = "auto", strategy: str = "ddp", num_nodes: int = 1,
                   done: set[int] = frozenset(), progress: bool = True) -> bool:
    """Sample every prompt not in ``done`` across ``devices`` processes into ``out`` (``call``: the pipeline's
    keyword arguments; ``settings``: what sampling.json records); returns whether this process is rank 0
    (after a barrier: every object is written)."""
    module = SamplingModule(source, prompts, str(out), seed, call, settings, writing, set(done))
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, strategy=strategy if devices != 1 else "auto",
                         num_nodes=num_nodes, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=progress, use_distributed_sampler=False)
    trainer.predict(module, return_predictions=False)
    trainer.strategy.barrier()
    return trainer.is_global_zero

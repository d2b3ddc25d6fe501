"""Where a pipeline loads from, as data: what ``tunemv sample`` names on its command line and what each process
of the data engine loads on its own device."""

from __future__ import annotations

from dataclasses import dataclass

from tunemv.errors import TunemvError


@dataclass(frozen=True)
class PipelineSource:
    """An adapter or generator folder (local or a hub id), or a ``tunemv fit``/``distill`` checkpoint; the
    backbone it names unless ``backbone`` overrides it. ``ema``: a checkpoint's EMA weights (None: them when
    the run kept an EMA)."""

    adapter: str | None = None
    checkpoint: str | None = None
    backbone: str | None = None
    ema: bool | None = None
    torch_dtype: str | None = None

    def __post_init__(self):
        if (self.adapter is None) == (self.checkpoint is None):
            raise TunemvError("tunemv sample needs exactly one of --adapter DIR or --ckpt CKPT")

    def declared_sampling(self) -> dict | None:
        """What the folder or checkpoint declares about how it samples (None: as an adapter), read without
        loading any weights; None too when it cannot be read yet (loading reports that, with its reason)."""
        from tunemv.adapters.formats import (
            AdapterError,
            CheckpointError,
            checkpoint_sampling,
            read_adapter_info,
            read_checkpoint,
        )
        from tunemv.adapters.hub import resolve_folder

        try:
            if self.adapter is not None:
                return read_adapter_info(resolve_folder(self.adapter)).get("sampling")
            return checkpoint_sampling(read_checkpoint(self.checkpoint))
        except (AdapterError, CheckpointError, OSError):
            return None

    def load(self):
        from tunemv.sampling.pipeline import MultiviewPipeline

        if self.adapter is not None:
            return MultiviewPipeline.from_pretrained(self.adapter, backbone=self.backbone, torch_dtype=self.torch_dtype)
        return MultiviewPipeline.from_checkpoint(self.checkpoint, backbone=self.backbone, ema=self.ema,
                                                 torch_dtype=self.torch_dtype)

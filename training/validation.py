"""Validation samples during training: a few fixed prompts, few steps of the family's own step rule, logged as image grids."""

from __future__ import annotations

from pathlib import Path

import torch

from tunemv.sampling.object_folders import grid_image
from tunemv.sampling.pipeline import MultiviewPipeline


@torch.no_grad()
def log_validation_samples(system, prompts: list[str]) -> Path:
    """Sample ``prompts`` with the system's live modules; returns the PNG written under ``<log dir>/samples``.

    The image holds, per prompt, a row of generated views and below it a row of NeuS renders of the field
    fused from them, so consistency shows as rows that agree. Randomness is forked: training's RNG stream
    (and so exact resume) is untouched.
    """
    s = system.settings
    pipe = MultiviewPipeline(system.backbone, system.denoiser.neus, system.denoiser.control_branch,
                             view_chunk=s.view_chunk)
    v = s.validation
    with torch.random.fork_rng(devices=[]):
        out = pipe(prompts, num_views=v.views, sampler=v.sampler, scheduler="auto", steps=v.steps,
                   guidance_scale=v.guidance_scale, seed=s.seed, progress=False)
        renders = out.field.render(out.field.cameras)
    rows = torch.stack([out.pixels, renders], dim=1).flatten(0, 1)  # (2B, V, 3, H, W): views, then renders
    image = grid_image(rows)
    folder = Path(system.trainer.log_dir or system.trainer.default_root_dir) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{system.global_step:07d}.png"
    image.save(path)
    logger = system.logger
    if logger is not None and hasattr(logger, "log_image"):  # wandb (offline by default)
        logger.log_image(key="val/samples", images=[image], step=system.global_step,
                         caption=[" | ".join(prompts) + " (views; NeuS renders)"])
    return path


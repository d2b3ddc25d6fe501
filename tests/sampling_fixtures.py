"""Tiny saved backbones and adapters for the sampling tests (built once per session, loaded by path)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from test_denoiser import tiny_neus, wake
from tiny_pipelines import tiny_if, tiny_sd

from tunemv.adapters.backbones import Backbone
from tunemv.adapters.control_branch import ControlBranch
from tunemv.adapters.formats import write_adapter_folder
from tunemv.sampling.pipeline import MultiviewPipeline

PROMPT = "a red chair"


def save_backbones(root: Path) -> dict[str, Path]:
    folders = {"sd": root / "sd", "sd_other": root / "sd_other", "sd_v": root / "sd_v", "if": root / "if"}
    for name, pipeline in (("sd", tiny_sd()), ("sd_other", tiny_sd(seed=5)), ("sd_v", tiny_sd("v_prediction")),
                           ("if", tiny_if())):
        pipeline.save_pretrained(folders[name])
    return folders


def adapter_pipeline(backbone_folder: Path, awake: bool = False) -> MultiviewPipeline:
    """A MultiviewPipeline with a zero-initialised (or, ``awake``, randomly woken) adapter."""
    backbone = Backbone.from_pretrained(backbone_folder)
    torch.manual_seed(1)
    channels = backbone.in_channels
    branch = ControlBranch.from_unet(backbone.unet, condition_channels=channels, cross_view_blocks=(1,),
                                     cross_view_points=4)
    neus = tiny_neus(channels)
    pipe = MultiviewPipeline(backbone, neus, branch)
    if awake:
        wake(pipe.denoiser)
    return pipe


def save_adapter(pipe: MultiviewPipeline, folder: Path) -> Path:
    """The folder layout `tunemv export` writes, through its own writer."""
    return write_adapter_folder(folder, pipe.denoiser.neus, pipe.denoiser.control_branch,
                                {"backbone": pipe.backbone.name_or_path}, overwrite=True)


def clone(pipe: MultiviewPipeline) -> MultiviewPipeline:
    return copy.deepcopy(pipe)

"""``tunemv export``: turn a training checkpoint into an adapter folder that needs neither Lightning nor the
checkpoint's optimizer state.

OUT_DIR/neus/            LatentSparseNeuS.save_pretrained
OUT_DIR/control_branch/  ControlBranch.save_pretrained
OUT_DIR/adapter.json     {"backbone": hub id or folder, "tunemv_version", "ema", "global_step", "checkpoint"}

The backbone is not needed: the checkpoint stores both modules' configs next to their weights.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from tunemv.adapters.control_branch import ControlBranch
from tunemv.errors import TunemvError
from tunemv.neus.latent_sparseneus import LatentSparseNeuS

# state_dict prefixes of the two trainable modules; EMA weights live in an AveragedModel over ModuleList([neus, branch])
UNET_PREFIX = "backbone.unet."  # only in checkpoints of the train_backbone_unet baseline
PREFIXES = {False: ("denoiser.neus.", "denoiser.control_branch."), True: ("ema.module.0.", "ema.module.1.")}


class CheckpointError(TunemvError):
    """A checkpoint that is unreadable, not from ``tunemv fit``, or lacks the requested weights."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        # weights_only=False: Lightning checkpoints hold plain Python objects (hparams, loop state); only load
        # checkpoints you trust.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises pickle, zip and runtime errors alike for a bad file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''})") from error
    if not isinstance(checkpoint, dict) or "tunemv" not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a tunemv checkpoint (no 'tunemv' and 'state_dict' entries); "
                              "export checkpoints written by `tunemv fit`")
    return checkpoint


def submodule_state(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _clean(config: dict[str, Any]) -> dict[str, Any]:
    # diffusers records positionally passed arguments in "_use_default_values" and from_config then drops
    # them as if they had been defaults; checkpoints written before from_unet passed them by name have this.
    return {key: value for key, value in config.items() if key != "_use_default_values"}


def has_ema(checkpoint: dict[str, Any]) -> bool:
    """Whether the checkpoint's weights to sample from are an EMA (a full checkpoint or an EMA snapshot)."""
    if checkpoint["tunemv"].get("weights") == "ema":
        return True
    return any(key.startswith(PREFIXES[True]) for key in checkpoint["state_dict"])


def load_adapter_modules(checkpoint: dict[str, Any], ema: bool | None = None, source: str = "checkpoint"
                         ) -> tuple[LatentSparseNeuS, ControlBranch]:
    """Rebuild NeuS and the control branch from a ``tunemv fit`` checkpoint dict.

    ``ema``: True for the EMA weights, False for the live ones, None for the EMA when the run kept one.
    A weights-only snapshot of an EMA run holds only the EMA, under the live names.
    """
    meta, state_dict = checkpoint["tunemv"], checkpoint["state_dict"]
    if ema is None:
        ema = has_ema(checkpoint)
    snapshot_of_ema = meta.get("weights") == "ema"
    if snapshot_of_ema and not ema:
        raise CheckpointError(f"{source}: a weights-only snapshot that holds only the EMA weights; drop --no-ema, "
                              "or use last.ckpt for the live weights")
    modules = (LatentSparseNeuS.from_config(_clean(meta["neus_config"])),
               ControlBranch.from_config(_clean(meta["control_branch_config"])))
    prefixes = PREFIXES[ema and not snapshot_of_ema]
    for module, prefix, name in zip(modules, prefixes, ("neus", "control_branch"), strict=True):
        weights = submodule_state(state_dict, prefix)
        if not weights:
            hint = " (the run had no EMA: set model.ema_decay, or export without --ema)" if ema else ""
            raise CheckpointError(f"{source}: no '{prefix}*' weights{hint}")
        try:
            module.load_state_dict(weights, strict=True)
        except RuntimeError as error:
            raise CheckpointError(f"{source}: {name} weights do not fit its config "
                                  f"({str(error).splitlines()[0]})") from error
        module.eval()
    return modules


def export_adapter(checkpoint_path: str | Path, out_dir: str | Path, ema: bool | None = None,
                   overwrite: bool = False) -> Path:
    """Write OUT_DIR (see the module docstring) atomically: a temporary sibling folder renamed into place."""
    from tunemv import __version__

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise CheckpointError(f"{out_dir}: already exists; pass --overwrite to replace it")
    checkpoint = read_checkpoint(checkpoint_path)
    if any(key.startswith(UNET_PREFIX) for key in checkpoint["state_dict"]):
        raise CheckpointError(f"{checkpoint_path}: this run fine-tuned the backbone's UNet (train_backbone_unet), "
                              "which an adapter folder cannot carry; sample it with tunemv sample --ckpt")
    ema = has_ema(checkpoint) if ema is None else ema
    neus, branch = load_adapter_modules(checkpoint, ema=ema, source=str(checkpoint_path))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        neus.save_pretrained(staging / "neus")
        branch.save_pretrained(staging / "control_branch")
        info = {"backbone": checkpoint["tunemv"]["backbone"], "tunemv_version": __version__, "ema": ema,
                "global_step": checkpoint.get("global_step"), "checkpoint": str(Path(checkpoint_path).resolve())}
        (staging / "adapter.json").write_text(json.dumps(info, indent=2) + "\n")
        if out_dir.exists():  # --overwrite: move the old folder aside first, so a failure never loses both
            trash = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".old"))
            out_dir.rename(trash / out_dir.name)
            staging.rename(out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir

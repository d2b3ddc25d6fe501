"""The adapter's two on-disk formats, each with its writer and its reader in one place.

An **adapter folder** (``tunemv export`` writes it, ``MultiviewPipeline.from_pretrained`` reads it)::

    FOLDER/neus/            LatentSparseNeuS.save_pretrained
    FOLDER/control_branch/  ControlBranch.save_pretrained
    FOLDER/adapter.json     {"backbone": hub id or folder, "tunemv_version", "ema", "global_step", "checkpoint"}

A **pretrained NeuS folder** (stage 1, ``tunemv export`` of a ``configs/neus_pretrain.yaml`` run; what
``model.init_from`` and ``models/tiny-neus`` are)::

    FOLDER/config.json, FOLDER/diffusion_pytorch_model.safetensors   LatentSparseNeuS.save_pretrained
    FOLDER/neus.json        {"backbone", "tunemv_version", "global_step", "checkpoint"}

A **training checkpoint** (``tunemv fit``'s Lightning ``.ckpt``) keeps only the trainable weights, under the
``state_dict`` prefixes below, and a ``"tunemv"`` entry with both modules' configs and the backbone's name,
so neither reading it nor exporting it needs the backbone. A stage-1 checkpoint keeps ``neus.*`` only and
says ``"kind": "neus"``.

This lives in ``adapters/`` (not in ``training/``) because sampling reads both formats and may not import
training.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tunemv.adapters.backbones import first_line, looks_local
from tunemv.adapters.control_branch import ControlBranch
from tunemv.atomic import apply_umask, make_temporary_dir
from tunemv.errors import TunemvError
from tunemv.neus.latent_sparseneus import LatentSparseNeuS

ADAPTER_FILE = "adapter.json"
NEUS_FOLDER, BRANCH_FOLDER = "neus", "control_branch"

# state_dict prefixes of the two trainable modules; EMA weights live in an AveragedModel over ModuleList([neus, branch])
PREFIXES = {False: ("denoiser.neus.", "denoiser.control_branch."), True: ("ema.module.0.", "ema.module.1.")}
TRAINABLE = ("denoiser.neus.", "denoiser.control_branch.", "ema.")  # the only weights a checkpoint keeps
UNET_PREFIX = "backbone.unet."  # only in checkpoints of the train_backbone_unet baseline
NEUS_PREFIX = "neus."  # the only weights a stage-1 (NeuS pretraining) checkpoint keeps
NEUS_INFO_FILE = "neus.json"  # beside a pretrained NeuS folder's config.json: its backbone and training run


class AdapterError(TunemvError, ValueError):
    """An adapter folder that is missing or incomplete."""


class CheckpointError(TunemvError):
    """A checkpoint that is unreadable, not from ``tunemv fit``, or lacks the requested weights."""


# ------------------------------------------------------------------------------------------ adapter folder
def write_adapter_folder(out_dir: str | Path, neus: LatentSparseNeuS, control_branch: ControlBranch,
                         info: dict[str, Any], overwrite: bool = False, extra_files: dict[str, str] | None = None
                         ) -> Path:
    """Write an adapter folder atomically: a temporary sibling folder renamed into place.

    ``info`` must name the ``backbone``; the tunemv version is added. ``extra_files`` (name -> text, e.g. the
    model card's README.md) are written into the folder too. With ``overwrite`` the old folder is moved aside
    first, so a failure never loses both.
    """
    from tunemv import __version__

    out_dir = Path(out_dir)
    if not info.get("backbone"):
        raise AdapterError(f"{out_dir}: an adapter folder must name its backbone")
    info = {**info, "backbone": portable_backbone(info["backbone"], out_dir)}
    with _staged_folder(out_dir, overwrite) as staging:
        neus.save_pretrained(staging / NEUS_FOLDER)
        control_branch.save_pretrained(staging / BRANCH_FOLDER)
        (staging / ADAPTER_FILE).write_text(json.dumps({**info, "tunemv_version": __version__}, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
    return out_dir


@contextmanager
def _staged_folder(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary sibling folder to write into, renamed to ``out_dir`` when the block succeeds and removed
    when it fails. An old ``out_dir`` is moved aside first, so a failure never loses both."""
    if out_dir.exists() and not overwrite:
        raise AdapterError(f"{out_dir}: already exists; pass --overwrite to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = make_temporary_dir(out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp")
    try:
        yield staging
        apply_umask(staging)
        if out_dir.exists():
            trash = make_temporary_dir(out_dir.parent, prefix=f".{out_dir.name}.", suffix=".old")
            out_dir.rename(trash / out_dir.name)
            staging.rename(out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def read_adapter_info(adapter_dir: str | Path) -> dict[str, Any]:
    """``adapter.json`` of a complete adapter folder; a missing part or bad JSON is an ``AdapterError``."""
    adapter_dir = Path(adapter_dir)
    info_path = adapter_dir / ADAPTER_FILE
    if not info_path.is_file():
        raise AdapterError(f"{info_path}: missing; an adapter folder is what `tunemv export` writes")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as error:
        raise AdapterError(f"{info_path}: not valid JSON ({error})") from error
    for part in (NEUS_FOLDER, BRANCH_FOLDER):
        if not (adapter_dir / part).is_dir():
            raise AdapterError(f"{adapter_dir / part}: missing; an adapter folder is what `tunemv export` writes")
    if isinstance(info.get("backbone"), str):
        info["backbone"] = resolve_backbone(info["backbone"], adapter_dir)
    return info


def portable_backbone(backbone: str, folder: Path) -> str:
    """How a folder names its backbone so that it loads from any working directory: a hub id as it is, a local
    folder relative to ``folder`` ("../tiny-if"; "./" or "../" keeps it from reading as a hub id)."""
    if not looks_local(backbone) or not Path(backbone).expanduser().is_dir():
        return backbone
    relative = os.path.relpath(Path(backbone).expanduser().resolve(), Path(folder).resolve())
    return relative if relative.startswith("..") else f"./{relative}"


def resolve_backbone(backbone: str, folder: Path) -> str:
    """The backbone a folder names, as a path that loads from here: a relative local path is read against the
    folder (as ``portable_backbone`` writes it); folders written before that named it relative to the working
    directory of the fit, which is what is left when nothing is found beside the folder."""
    if not looks_local(backbone) or os.path.isabs(os.path.expanduser(backbone)):
        return backbone
    beside = os.path.normpath(Path(folder) / backbone)
    return beside if os.path.isdir(beside) else backbone


def read_adapter_folder(adapter_dir: str | Path) -> tuple[LatentSparseNeuS, ControlBranch, dict[str, Any]]:
    """(NeuS, control branch, adapter.json) of an adapter folder, the modules in eval mode."""
    adapter_dir = Path(adapter_dir)
    info = read_adapter_info(adapter_dir)
    modules = []
    for module, folder in ((LatentSparseNeuS, NEUS_FOLDER), (ControlBranch, BRANCH_FOLDER)):
        try:
            modules.append(module.from_pretrained(adapter_dir / folder).eval())
        except (OSError, ValueError, RuntimeError) as error:  # a truncated or zeroed safetensors, a bad config
            raise AdapterError(f"{adapter_dir / folder}: cannot load its {module.__name__} weights "
                               f"({first_line(error)}); export the adapter again") from error
    neus, branch = modules
    return neus, branch, info


# -------------------------------------------------------------------------------------------- checkpoints
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


def checkpoint_metadata(backbone: str, neus: LatentSparseNeuS, control_branch: ControlBranch,
                        weights: str, **extra) -> dict[str, Any]:
    """The checkpoint's ``"tunemv"`` entry, which ``load_adapter_modules`` reads back."""
    return {"backbone": backbone, "neus_config": module_config(neus),
            "control_branch_config": module_config(control_branch), "weights": weights, **extra}


def module_config(module) -> dict[str, Any]:
    """A module's diffusers config for a checkpoint, without ``_name_or_path``: a module loaded from a folder
    records it as a ``Path``, which ``torch.load(weights_only=True)`` (Lightning's resume) refuses to unpickle."""
    return {key: value for key, value in dict(module.config).items() if key != "_name_or_path"}


def checkpoint_metadata_neus(backbone: str, neus: LatentSparseNeuS, **extra) -> dict[str, Any]:
    """The ``"tunemv"`` entry of a stage-1 checkpoint: a NeuS alone, no control branch."""
    return {"kind": "neus", "backbone": backbone, "neus_config": module_config(neus), "weights": "live", **extra}


def is_neus_checkpoint(checkpoint: dict[str, Any]) -> bool:
    return checkpoint["tunemv"].get("kind") == "neus"


def load_neus_checkpoint(checkpoint: dict[str, Any], source: str = "checkpoint") -> LatentSparseNeuS:
    """The NeuS of a stage-1 checkpoint, in eval mode."""
    neus = LatentSparseNeuS.from_config(_clean(checkpoint["tunemv"]["neus_config"]))
    try:
        neus.load_state_dict(submodule_state(checkpoint["state_dict"], NEUS_PREFIX), strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{source}: neus weights do not fit its config ({str(error).splitlines()[0]})") from error
    return neus.eval()


# -------------------------------------------------------------------------------- pretrained NeuS folder
def write_neus_folder(out_dir: str | Path, neus: LatentSparseNeuS, info: dict[str, Any],
                      overwrite: bool = False) -> Path:
    """A pretrained NeuS folder (stage 1): ``save_pretrained``'s files plus ``neus.json``, written atomically."""
    from tunemv import __version__

    out_dir = Path(out_dir)
    if info.get("backbone"):
        info = {**info, "backbone": portable_backbone(info["backbone"], out_dir)}
    with _staged_folder(out_dir, overwrite) as staging:
        neus.save_pretrained(staging)
        (staging / NEUS_INFO_FILE).write_text(json.dumps({**info, "tunemv_version": __version__}, indent=2) + "\n")
    return out_dir


def folder_backbone(path: str | Path) -> str | None:
    """The backbone an adapter folder (``adapter.json``) or a pretrained NeuS folder (``neus.json``) names,
    resolved to load from the working directory (``resolve_backbone``)."""
    path = Path(path)
    for name in (ADAPTER_FILE, NEUS_INFO_FILE):
        if (path / name).is_file():
            try:
                backbone = json.loads((path / name).read_text()).get("backbone")
            except json.JSONDecodeError as error:
                raise AdapterError(f"{path / name}: not valid JSON ({error})") from error
            return resolve_backbone(backbone, path) if isinstance(backbone, str) else None
    return None


def read_pretrained_neus(path: str | Path) -> LatentSparseNeuS:
    """The NeuS of a pretrained NeuS folder (``neus.json``) or of an adapter folder (``adapter.json``)."""
    path = Path(path)
    if (path / ADAPTER_FILE).is_file():
        read_adapter_info(path)
        path = path / NEUS_FOLDER
    elif not (path / NEUS_INFO_FILE).is_file():
        raise AdapterError(f"{path}: neither a pretrained NeuS folder ({NEUS_INFO_FILE}) nor an adapter folder "
                           f"({ADAPTER_FILE}); stage 1 writes the first, `tunemv export` both")
    try:
        return LatentSparseNeuS.from_pretrained(path)
    except (OSError, ValueError, RuntimeError) as error:
        raise AdapterError(f"{path}: not a readable LatentSparseNeuS folder ({str(error).splitlines()[0]})") from error


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


def carries_unet(checkpoint: dict[str, Any]) -> bool:
    """Whether the run fine-tuned the backbone's UNet (the train_backbone_unet baseline)."""
    return any(key.startswith(UNET_PREFIX) for key in checkpoint["state_dict"])


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


def generator_sampling(meta: dict[str, Any]) -> dict[str, Any] | None:
    """How a distilled generator samples (``adapter.json``'s "sampling"), from its checkpoint's "tunemv" entry;
    None for an adapter's checkpoint."""
    generator = meta.get("generator")
    if generator is None:
        return None
    return {"sampler": "one-step", "sampler_options": {"timestep": generator["timestep"]}, "guidance_scale": 1.0}

"""``tunemv fit`` / ``tunemv validate``: Lightning's own LightningCLI over MultiviewAdapterSystem and
MultiviewDataModule, with tunemv's defaults (atomic checkpoints, a resumable ``last.ckpt``, offline wandb, and
one key for where a run writes: ``trainer.default_root_dir``).

A config's ``model:`` is the adapter system's arguments, unless it names another LightningModule by
``class_path`` (``configs/neus_pretrain.yaml`` names the stage-1 ``NeuSPretrainSystem``).

Lightning does the loops, checkpoints, loggers and DDP; this file only picks defaults. Heavy imports stay
here so that ``tunemv --help`` and ``tunemv data ...`` do not pay for Lightning.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any
from unittest import mock

import lightning.pytorch as pl
import torch
import yaml
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tunemv.atomic import atomic_path
from tunemv.data.datamodule import MultiviewDataModule
from tunemv.errors import TunemvError
from tunemv.training.config import moved_key
from tunemv.training.progress import step_progress_bar
from tunemv.training.system import MultiviewAdapterSystem

SUBCOMMANDS = ("fit", "validate")
# Training steps between checkpoints when a config names no ModelCheckpoint: the resumable last.ckpt is
# rewritten often; weights-only snapshots (a quarter of its size with EMA) are kept less often.
DEFAULT_LAST_EVERY, DEFAULT_SNAPSHOT_EVERY = 250, 1000


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in its own folder, fsync it, then ``os.replace`` it.

    A crash or a full disk mid-save leaves the previous ``last.ckpt`` intact and no partial file behind.
    (Lightning's default stages the bytes in the system temp folder and moves them, which is a copy, not an
    atomic rename, when that folder is on another filesystem.)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote: fsspec's transaction
        with atomic_path(path, fsync=True) as temporary:
            torch.save(checkpoint, temporary)


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger, offline unless ``WANDB_MODE`` says otherwise: runs need no account or network.

    Sync an offline run later with ``wandb sync <save_dir>/wandb/offline-run-*``. Without ``save_dir``,
    ``tunemv fit`` gives it ``trainer.default_root_dir`` (elsewhere it is Lightning's ``"."``).
    """

    def __init__(self, *args: Any, save_dir: str | os.PathLike | None = None, offline: bool | None = None,
                 **kwargs: Any):
        if offline is None:
            offline = os.environ.get("WANDB_MODE", "offline") in ("offline", "dryrun")
        if save_dir is not None:
            kwargs["save_dir"] = save_dir
        super().__init__(*args, offline=offline, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # wandb >= 0.19 warns that the setting does nothing
            self._wandb_init.pop("anonymous", None)
        if self._save_dir:  # wandb looks for a git root there before creating it, and warns
            os.makedirs(self._save_dir, exist_ok=True)


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSVLogger whose ``save_dir`` may be left out: ``tunemv fit`` then gives it
    ``trainer.default_root_dir`` (elsewhere it is ``"."``). Lightning's own requires one."""

    def __init__(self, save_dir: str | os.PathLike | None = None, **kwargs: Any):
        super().__init__("." if save_dir is None else save_dir, **kwargs)


def follow_default_root_dir(trainer: Any) -> None:
    """Make the paths a config leaves out follow ``trainer.default_root_dir`` (a parsed ``trainer`` section).

    - A logger's ``save_dir`` that is not given (None: tunemv's ``WandbLogger`` and ``CSVLogger``, and any
      logger whose own default is None) becomes ``default_root_dir``.
    - A ``ModelCheckpoint`` without ``dirpath`` writes to ``<default_root_dir>/checkpoints``, as the default
      checkpoints do, so that ``--ckpt_path last`` finds its ``last.ckpt`` (Lightning would put it in a
      folder per logger version, and only decide which once the run has started).

    So a config spells its output folder once, and ``--trainer.default_root_dir X`` moves logs and
    checkpoints to X. A path the config does give is kept.
    """
    root = trainer.get("default_root_dir") or "outputs"
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = getattr(logger, "init_args", None)
        if init_args is not None and "save_dir" in init_args and init_args.save_dir is None:
            init_args.save_dir = root
    for callback in trainer.get("callbacks") or []:
        init_args = getattr(callback, "init_args", None)
        if init_args is not None and init_args.get("dirpath") is None \
                and issubclass(_class_of(callback.class_path), ModelCheckpoint):
            init_args.dirpath = os.path.join(root, "checkpoints")


def _class_of(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class CheckpointRepair(pl.Callback):
    """What a run killed mid-save leaves behind, repaired when it resumes (or starts again).

    - Stale temporaries of ``AtomicCheckpointIO`` (``.<name>.*.tmp.ckpt``) in every checkpoint folder are
      removed at start-up.
    - A kept snapshot whose step the resumed state has already passed is written again: ``last.ckpt`` is saved
      before the snapshot at a shared step, so a kill during the snapshot resumes past it, and Lightning would
      never write that snapshot.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            for callback in trainer.checkpoint_callbacks:
                if isinstance(callback, ModelCheckpoint) and callback.dirpath and os.path.isdir(callback.dirpath):
                    for name in os.listdir(callback.dirpath):
                        if name.startswith(".") and name.endswith(".ckpt") and ".tmp" in name:
                            os.remove(os.path.join(callback.dirpath, name))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        for callback in trainer.checkpoint_callbacks:
            every = getattr(callback, "_every_n_train_steps", 0)
            if not (isinstance(callback, ModelCheckpoint) and every and callback.save_top_k == -1 and step
                    and step % every == 0 and callback.dirpath):
                continue
            # By step: the epoch in the name may differ after a resume at an epoch's end.
            taken = [name for name in os.listdir(callback.dirpath) if not name.startswith(".")
                     and re.search(rf"step={step}(\D|$)", name) and name.endswith(callback.FILE_EXTENSION)
                     and not name.startswith(callback.CHECKPOINT_NAME_LAST)]
            if not taken:
                path = callback.format_checkpoint_name({"epoch": trainer.current_epoch, "step": step})
                trainer.save_checkpoint(path, weights_only=callback.save_weights_only)


class TunemvCLI(LightningCLI):
    """LightningCLI with only the subcommands tunemv supports, and CPU runs flushing denormals."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in SUBCOMMANDS}

    def instantiate_trainer(self, **kwargs: Any):
        """Add a resumable ``last.ckpt`` and weights-only snapshots when the config names no ``ModelCheckpoint``,
        a progress bar of steps out of ``max_steps`` when it names no progress bar (``training/progress.py``),
        and ``CheckpointRepair`` always.

        (LightningCLI appends ``trainer_defaults["callbacks"]`` to a config's own list, which would give two.)
        """
        config = self._get(self.config_init, "trainer", default={})
        callbacks = list(config.get("callbacks") or [])
        if config.get("enable_checkpointing") is not False and not any(
                isinstance(callback, ModelCheckpoint) for callback in callbacks):
            root = config.get("default_root_dir") or "outputs"
            dirpath = os.path.join(root, "checkpoints")
            callbacks += [ModelCheckpoint(dirpath=dirpath, save_last=True, save_top_k=0,
                                          every_n_train_steps=DEFAULT_LAST_EVERY),
                          ModelCheckpoint(dirpath=dirpath, save_weights_only=True, save_top_k=-1,
                                          every_n_train_steps=DEFAULT_SNAPSHOT_EVERY)]
        if config.get("enable_progress_bar") is not False and not any(
                isinstance(callback, ProgressBar) for callback in callbacks):
            callbacks.append(step_progress_bar())
        # (kwargs["callbacks"] replaces the config's list, so it carries the config's callbacks too.)
        kwargs["callbacks"] = [*callbacks, *kwargs.get("callbacks", []), CheckpointRepair()]
        return super().instantiate_trainer(**kwargs)

    def before_instantiate_classes(self) -> None:
        follow_default_root_dir(self._get(self.config, "trainer"))

    def _flush_denormals_on_cpu(self) -> None:
        # Denormal floats in the NeuS MLPs made CPU steps 2x slower; flushing them to zero is harmless here.
        if isinstance(self.trainer.accelerator, CPUAccelerator):
            torch.set_flush_denormal(True)

    def before_fit(self) -> None:
        self._flush_denormals_on_cpu()

    def after_fit(self) -> None:
        """Make ``last.ckpt`` the final state.

        Lightning writes it on its step interval only, so a run ending between intervals (``max_time``, or
        ``max_steps`` off the interval) would leave an older ``last.ckpt`` behind, and resuming or exporting
        it would silently lose the last steps.
        """
        trainer = self.trainer
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath \
                    and callback._last_global_step_saved != trainer.global_step:
                trainer.save_checkpoint(callback.format_checkpoint_name({}, callback.CHECKPOINT_NAME_LAST))

    def before_validate(self) -> None:
        self._flush_denormals_on_cpu()


def trainer_defaults() -> dict[str, Any]:
    """Defaults under every config (the default checkpoint callback is added in ``instantiate_trainer``)."""
    # A class_path dict rather than an instance, so that --print_config can write it out.
    return {"default_root_dir": "outputs", "plugins": [{"class_path": f"{__name__}.AtomicCheckpointIO"}]}


def option_value(args: list[str], index: int, name: str) -> str | None:
    """The value of ``--name`` at ``args[index]``, written ``--name=V`` or ``--name V``; else None."""
    arg = args[index]
    if arg.startswith(f"{name}="):
        return arg.split("=", 1)[1]
    return args[index + 1] if arg == name and index + 1 < len(args) else None


def names_model_class(args: Sequence[str]) -> bool:
    """Whether the command line or one of its ``--config`` files gives ``model`` a ``class_path``."""
    args = list(args)
    for index, arg in enumerate(args):
        if arg.startswith(("--model.class_path", "--model=")) or (arg == "--model" and index + 1 < len(args)):
            return True
        path = option_value(args, index, "--config")
        if path and os.path.isfile(path):
            try:
                with open(path) as file:
                    config = yaml.safe_load(file) or {}
            except yaml.YAMLError as error:  # LightningCLI would name it "<unicode string>"
                mark = getattr(error, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                raise TunemvError(f"{path}: not valid YAML{where} ({getattr(error, 'problem', None) or error})") from error
            if isinstance(config, dict) and isinstance(config.get("model"), dict) and "class_path" in config["model"]:
                return True
    return False


def check_moved_keys(args: Sequence[str], distillation: bool, subclass_mode: bool) -> None:
    """A former flat ``model`` key (``learning_rate``, ``high_noise_weight``, ...) on the command line or in a
    ``--config`` file is one line naming where it lives now, not LightningCLI's "unrecognized arguments"."""
    if subclass_mode:  # another model class (NeuS pretraining): its own flat arguments
        return
    args = list(args)
    for index, arg in enumerate(args):
        key = arg[len("--model."):].split("=", 1)[0] if arg.startswith("--model.") else None
        if key is not None and moved_key(key, distillation):
            raise TunemvError(f"--model.{key}: is --model.{moved_key(key, distillation)} now (the model's options "
                              "are grouped; see docs/configs.md)")
        path = option_value(args, index, "--config")
        if path and os.path.isfile(path):
            with open(path) as file:
                config = yaml.safe_load(file) or {}
            model = config.get("model") if isinstance(config, dict) else None
            for key in model if isinstance(model, dict) else ():
                if moved_key(key, distillation):
                    raise TunemvError(f"{path}: model.{key} is model.{moved_key(key, distillation)} now (the model's "
                                      "options are grouped; see docs/configs.md)")


def parser_kwargs() -> dict[str, Any]:
    """Raise instead of printing usage, so that the CLI prints one line and exits 2; and take keys only
    as spelled: argparse's prefix matching silently read ``--model.learning_rat`` as ``learning_rate``."""
    strict = {"exit_on_error": False, "allow_abbrev": False}
    return {"prog": "tunemv", **strict, **{name: dict(strict) for name in SUBCOMMANDS}}


def check_checkpoint_path(args: Sequence[str]) -> None:
    """A ``--ckpt_path`` file that is not a torch checkpoint (truncated, zeroed, another format), or whose pickle
    would call anything but what torch's weights-only loader builds, is one line naming it, before any model
    loads; torch's own error is a page of unpickling advice. (Lightning's resume reads it with weights_only=True
    and tunemv's allow-list does not reach it, hence ``allowed=()``.)"""
    import zipfile

    from tunemv.adapters.formats import code_in_checkpoint, refused

    args = list(args)
    for index in range(len(args)):
        path = option_value(args, index, "--ckpt_path")
        if not path or not os.path.isfile(path):
            continue  # "last", "best", or a missing file: Lightning's own message
        if not zipfile.is_zipfile(path):
            raise TunemvError(f"{path}: not a readable checkpoint (truncated, or not written by torch.save)")
        try:
            names = code_in_checkpoint(path, allowed=())  # the pickle's opcodes, read without running them
        except Exception as error:  # a zip torch cannot read: a damaged file
            detail = " ".join(str(error).split())
            raise TunemvError(f"{path}: not a readable checkpoint ({type(error).__name__}: {detail})") from error
        if names:
            raise refused(path, names)


def run_lightning(args: Sequence[str], run: bool = True, system: str = "adapter") -> TunemvCLI:
    """``fit``/``validate`` with LightningCLI; ``args`` is the command line after ``tunemv``.

    ``system="distill"``: the one-step distillation system and its data (``tunemv distill``). With
    ``run=False`` there is no subcommand in ``args``: the classes are only instantiated (for tests).
    """
    check_checkpoint_path(args)
    subclass_mode = names_model_class(args)
    check_moved_keys(args, system == "distill", subclass_mode)
    if system == "distill":
        from tunemv.training.distillation import OneStepDistillationSystem
        from tunemv.training.pseudo_ground_truth import DistillationDataModule

        model_class, data_class = OneStepDistillationSystem, DistillationDataModule
    else:
        model_class, data_class = MultiviewAdapterSystem, MultiviewDataModule
    # LightningCLI reads sys.argv itself (given both, it warns), so hand it the command line that way.
    with mock.patch.object(sys, "argv", ["tunemv", *args]):
        return TunemvCLI(
            pl.LightningModule if subclass_mode else model_class, data_class,
            subclass_mode_model=subclass_mode,
            # `data:` takes class_path + init_args (configs/data/*.yaml are whole `data:` sections), so a
            # project can plug in its own LightningDataModule subclass.
            subclass_mode_data=True,
            trainer_defaults=trainer_defaults(),
            seed_everything_default=0,
            # Resuming into the same folder rewrites config.yaml rather than refusing to start.
            save_config_kwargs={"overwrite": True},
            # The systems build their own optimizers and schedules (EMA, per-part learning rates); Lightning's
            # --optimizer/--lr_scheduler would replace configure_optimizers and break training_step.
            auto_configure_optimizers=False,
            parser_kwargs=parser_kwargs(),
            run=run,
        )

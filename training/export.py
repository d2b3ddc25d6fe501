"""``tunemv export``: turn a training checkpoint into an adapter folder that needs neither Lightning nor the
checkpoint's optimizer state. Both formats are ``adapters.formats``'; this only picks the weights.
"""

from __future__ import annotations

from pathlib import Path

from tunemv.adapters.formats import (
    CheckpointError,
    carries_unet,
    checkpoint_sampling,
    has_ema,
    is_neus_checkpoint,
    load_adapter_modules,
    load_neus_checkpoint,
    portable_backbone,
    read_checkpoint,
    write_adapter_folder,
    write_neus_folder,
)
from tunemv.adapters.hub import CARD_FILE, model_card


def export_adapter(checkpoint_path: str | Path, out_dir: str | Path, ema: bool | None = None,
                   overwrite: bool = False, figures: dict | None = None) -> Path:
    """Write the adapter folder of ``checkpoint_path`` (its EMA weights when the run kept one, or as ``ema``
    says) to ``out_dir``, atomically: for a stage-1 run the pretrained NeuS folder, and for ``tunemv distill``
    a generator folder, an adapter folder whose ``adapter.json`` also says how it samples ("one-step")."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:  # before reading a checkpoint of gigabytes
        raise CheckpointError(f"{out_dir}: already exists; pass --overwrite to replace it")
    checkpoint = read_checkpoint(checkpoint_path)
    if is_neus_checkpoint(checkpoint):  # stage 1: a NeuS alone
        info = {"backbone": checkpoint["tunemv"]["backbone"], "global_step": checkpoint.get("global_step"),
                "checkpoint": Path(checkpoint_path).name}
        return write_neus_folder(out_dir, load_neus_checkpoint(checkpoint, str(checkpoint_path)), info,
                                 overwrite=overwrite)
    if carries_unet(checkpoint):
        raise CheckpointError(f"{checkpoint_path}: this run fine-tuned the backbone's UNet (train_backbone_unet), "
                              "which an adapter folder cannot carry; sample it with tunemv sample --ckpt")
    ema = has_ema(checkpoint) if ema is None else ema
    neus, branch = load_adapter_modules(checkpoint, ema=ema, source=str(checkpoint_path))
    # Meant to be shared (the Hub, another machine): no absolute path but a backbone far from the folder's.
    info = {"backbone": checkpoint["tunemv"]["backbone"], "ema": ema, "global_step": checkpoint.get("global_step"),
            "checkpoint": Path(checkpoint_path).name, "camera_conditioning": branch.camera_conditioning}
    data = (checkpoint.get("datamodule_hyper_parameters") or {}).get("root")
    if data:  # as the config named it; an absolute path (this machine's) is cut to the folder's name
        info["data"] = Path(data).name if Path(data).is_absolute() else str(data)
    generator = checkpoint["tunemv"].get("generator")
    if generator is not None:  # a distilled one-step generator: its folder says how it samples
        info["sampling"] = checkpoint_sampling(checkpoint)
        info["generator"] = {key: generator[key] for key in ("teacher", "vsd_steps")}
        # The weights after step n have seen steps 0..n−1: stage I's alone while n <= vsd_steps.
        info["generator"]["stage"] = 1 if (checkpoint.get("global_step") or 0) <= generator["vsd_steps"] else 2
        info["generator"]["teacher"] = portable_backbone(str(generator["teacher"]), Path(out_dir))  # beside it
    # The card's base_model is the backbone as adapter.json stores it (relative to the folder when local).
    card = model_card({**info, "backbone": portable_backbone(str(info["backbone"]), out_dir)}, figures)
    return write_adapter_folder(out_dir, neus, branch, info, overwrite=overwrite, extra_files={CARD_FILE: card})

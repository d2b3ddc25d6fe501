"""Checkpoints of format 1: the "tunemv" entry that ``tunemv fit``, ``tunemv distill`` and stage-1 NeuS
pretraining wrote before it declared its own layout (up to commit 2055f6b).

Such an entry names no ``prefixes`` and no ``sampling``; this module states, once and frozen, what those
writers did, so that ``formats.check_checkpoint`` can turn a format-1 entry into a declared one and every
reader sees one format. Nothing here changes when training changes: a new layout is declared by its writer
(``formats.CHECKPOINT_FORMAT``). tests/fixtures/format1-*.ckpt are checkpoints those writers saved.
"""

from __future__ import annotations

from typing import Any

# Format 1's state_dict layout: MultiviewAdapterSystem and OneStepDistillationSystem kept the adapter as
# self.denoiser.{neus, control_branch}, its EMA as an AveragedModel over ModuleList([neus, control_branch]),
# and a fine-tuned UNet (the train_backbone_unet baseline) as self.backbone.unet; NeuSPretrainSystem kept
# self.neus.
LIVE = {"neus": "denoiser.neus.", "control_branch": "denoiser.control_branch."}
EMA = {"neus": "ema.module.0.", "control_branch": "ema.module.1."}
UNET = "backbone.unet."
STAGE_1_NEUS = "neus."
# A format-1 distillation checkpoint ("generator" entry) sampled as its exported folder said: one step at the
# generator's timestep, unguided.
GENERATOR_SAMPLER = "one-step"


def declared(meta: dict[str, Any], state_dict: dict[str, Any]) -> dict[str, Any]:
    """The format-2 entry equivalent to format-1 ``meta`` over ``state_dict``."""
    if meta.get("kind") == "neus":
        prefixes: dict[str, Any] = {"live": {"neus": STAGE_1_NEUS}}
    else:
        prefixes = {"live": dict(LIVE)}
        if any(key.startswith(tuple(EMA.values())) for key in state_dict):
            prefixes["ema"] = dict(EMA)
        if any(key.startswith(UNET) for key in state_dict):
            prefixes["unet"] = UNET
    upgraded = {**meta, "format": 2, "prefixes": prefixes}
    generator = meta.get("generator")
    if isinstance(generator, dict) and "timestep" in generator:
        upgraded["sampling"] = {"sampler": GENERATOR_SAMPLER, "sampler_options": {"timestep": generator["timestep"]},
                                "guidance_scale": 1.0}
    return upgraded

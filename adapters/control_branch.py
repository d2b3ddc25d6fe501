"""O in TuneMV3D: a ControlNet-style trainable copy of the frozen UNet's encoder, for any diffusers UNet.

It copies ``conv_in``, the time/class/added embeddings, ``encoder_hid_proj``, every down block and the mid
block (whatever their type: diffusers' own ``ControlNetModel`` rejects IF's SimpleCrossAttn blocks). It adds
a condition embedding at the UNet's input resolution and a zero-initialised 1x1 conv per skip connection
and for the mid block, so at init its residuals are exactly zero and the frozen UNet is unchanged. With
``camera_conditioning`` each view also reads its own camera (``camera_conditioning.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from tunemv.adapters.camera_conditioning import (
    CAMERA_CONDITIONINGS,
    PLUCKER_CHANNELS,
    CameraEmbedding,
    plucker_rays,
    pose_features,
    uses_embedding,
    uses_rays,
)
from tunemv.adapters.cross_view_attention import (
    WEIGHT_GRADIENTS,
    CrossViewAttention,
    CrossViewInputs,
    zero_module,
)
from tunemv.adapters.unet_halves import Embeddings, embed, run_block
from tunemv.geometry.cameras import Cameras
from tunemv.neus.latent_sparseneus import ConfigError, check_bool, check_choice, check_int

# Why these ranges: the shipped branches (models/) and every config in configs/ use 3-4 condition channels,
# (16, 32) embedding widths, 4 heads, 4-8 points and patch size 1; the ranges only turn a corrupt or
# hand-edited config.json into one line naming the key before the branch is built.
BRANCH_INTEGERS = {"condition_channels": (1, 16), "cross_view_heads": (1, 64), "cross_view_points": (1, 256),
                   "cross_view_patch_size": (1, 15)}


def check_branch_config(config: dict[str, Any]) -> None:
    """Raise a ``ConfigError`` naming the first key of a ``ControlBranch`` config of the wrong type or range."""
    unet_config = config["unet_config"]
    if not isinstance(unet_config, dict) or not isinstance(unet_config.get("block_out_channels"), (list, tuple)):
        raise ConfigError("unet_config must be a UNet config with block_out_channels, got "
                          f"{type(unet_config).__name__}")
    for key, (low, high) in BRANCH_INTEGERS.items():
        check_int(key, config[key], low, high)
    for key, low, high, most in (("condition_embedding_channels", 1, 4096, 8), ("cross_view_blocks", 0, 15, 16)):
        values = config[key]
        if not isinstance(values, (list, tuple)) or len(values) > most:
            raise ConfigError(f"{key} must be a list of at most {most} integers, got {values!r}")
        for value in values:
            check_int(key, value, low, high)
    check_choice("cross_view_weight_gradient", config["cross_view_weight_gradient"], tuple(WEIGHT_GRADIENTS))
    check_choice("camera_conditioning", config["camera_conditioning"], CAMERA_CONDITIONINGS)
    check_bool("independent_camera", config["independent_camera"])


@dataclass
class ControlResiduals:
    down: tuple[torch.Tensor, ...]  # one per skip connection of the frozen UNet
    mid: torch.Tensor


def skip_channels(unet_config: dict[str, Any]) -> list[int]:
    """Channels of every skip connection, in the order the UNet's down path emits them."""
    widths = list(unet_config["block_out_channels"])
    layers = unet_config["layers_per_block"]
    layers = [layers] * len(widths) if isinstance(layers, int) else list(layers)
    channels = [widths[0]]  # conv_in
    for index, (width, count) in enumerate(zip(widths, layers, strict=True)):
        channels += [width] * count
        if index < len(widths) - 1:
            channels.append(width)  # the downsampler's output
    return channels


class ConditionEmbedding(nn.Module):
    """The condition (g_i, already at latent or pixel resolution) -> ``conv_in`` channels; no downsampling."""

    def __init__(self, condition_channels: int, out_channels: int, hidden: Sequence[int] = (16, 32)):
        super().__init__()
        layers: list[nn.Module] = []
        previous = condition_channels
        for width in hidden:
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.SiLU()]
            previous = width
        layers.append(zero_module(nn.Conv2d(previous, out_channels, 3, padding=1)))
        self.layers = nn.Sequential(*layers)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return self.layers(condition)


class ControlBranch(ModelMixin, ConfigMixin):
    """Use ``ControlBranch.from_unet(unet, condition_channels)``; the constructor builds a fresh copy from a config."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, unet_config: dict[str, Any], condition_channels: int,
                 condition_embedding_channels: Sequence[int] = (16, 32), cross_view_blocks: Sequence[int] = (),
                 cross_view_heads: int = 4, cross_view_points: int = 8, cross_view_patch_size: int = 1,
                 cross_view_weight_gradient: str = "detached", camera_conditioning: str = "none",
                 independent_camera: bool = True):
        check_branch_config({name: value for name, value in locals().items() if name not in ("self", "__class__")})
        super().__init__()
        encoder = UNet2DConditionModel.from_config(unet_config)
        # Only the encoder half is trained; drop the decoder so it costs neither memory nor parameters.
        encoder.up_blocks, encoder.conv_norm_out, encoder.conv_act, encoder.conv_out = None, None, None, None
        self.encoder = encoder
        widths = list(unet_config["block_out_channels"])
        self.condition_embedding = ConditionEmbedding(condition_channels, widths[0], condition_embedding_channels)
        # Absent for "none", so folders saved before camera conditioning load with their exact state dicts.
        self.ray_encoder = ConditionEmbedding(PLUCKER_CHANNELS, widths[0],
                                                                   condition_embedding_channels) \
            if uses_rays(camera_conditioning) else None
        if uses_embedding(camera_conditioning) and unet_config.get("class_embeddings_concat"):
            raise ValueError("camera_conditioning 'embedding' adds to the time embedding, which this UNet "
                             "concatenates with its class embedding; use 'plucker'")
        self.camera_embedding = CameraEmbedding(encoder.time_embedding.linear_2.out_features) \
            if uses_embedding(camera_conditioning) else None
        self.skip_projections = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in skip_channels(unet_config))
        self.mid_projection = zero_module(nn.Conv2d(widths[-1], widths[-1], 1))
        for index in cross_view_blocks:
            if not 0 <= index < len(widths):
                raise ValueError(f"cross_view_blocks: no down block {index}; the UNet has {len(widths)}")
        self.cross_view = nn.ModuleDict({
            str(index): CrossViewAttention(widths[index], cross_view_heads, cross_view_points, cross_view_patch_size,
                                           weight_gradient=cross_view_weight_gradient)
            for index in cross_view_blocks})

    @property
    def camera_conditioning(self) -> str:
        return self.config.get("camera_conditioning", "none")

    @property
    def independent_camera(self) -> bool:
        """Whether mode "independent" was trained with each view's camera (read by ``MultiviewDenoiser``)."""
        return bool(self.config.get("independent_camera", True))

    # Its camera encoders' state-dict prefixes: a run may add them to an adapter trained without them.
    CAMERA_MODULES = ("ray_encoder.", "camera_embedding.")

    def camera_parameters(self) -> list[nn.Parameter]:
        """The camera encoders' weights (a run may give them their own learning rate, as Wonder3D does)."""
        return [p for module in (self.ray_encoder, self.camera_embedding) if module is not None
                for p in module.parameters()]

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, condition_channels: int | None = None, **kwargs) -> ControlBranch:
        """A branch initialised from ``unet``'s own encoder weights (ControlNet's recipe)."""
        config = {key: value for key, value in unet.config.items() if not key.startswith("_")}
        branch = cls(unet_config=config, condition_channels=condition_channels or unet.config.in_channels, **kwargs)
        missing, _ = branch.encoder.load_state_dict(unet.state_dict(), strict=False)
        if missing:
            raise ValueError(f"the UNet lacks encoder weights the branch needs: {missing[:3]}...")
        return branch.to(device=unet.device)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                condition: torch.Tensor, added_cond_kwargs: dict[str, Any] | None = None,
                class_labels: torch.Tensor | None = None, cross_view: CrossViewInputs | None = None,
                cameras: Cameras | None = None) -> ControlResiduals:
        """(N, C, h, w) x_t with its condition (N, Cc, h, w) -> residuals for the frozen UNet's decoder.

        ``cross_view`` (cameras [B, V] with N = B*V, optional NeuS samples) switches the cross-view attention
        on after the configured down blocks; without it the views are processed independently. ``cameras``
        ``[N]`` feed the camera conditioning; a branch with one needs them, and ``None`` drops the signal
        (the ablation of the camera at sampling time).
        """
        encoder = self.encoder
        if encoder.config.center_input_sample:
            sample = 2 * sample - 1.0
        embeddings = embed(encoder, sample, timesteps, encoder_hidden_states, added_cond_kwargs, class_labels)
        hidden = encoder.conv_in(sample) + self.condition_embedding(condition)
        if cameras is not None and len(cameras) != len(sample):
            raise ValueError(f"the control branch got {len(cameras)} cameras for {len(sample)} views")
        if cameras is not None and self.ray_encoder is not None:
            rays = plucker_rays(cameras.to(sample.device), *sample.shape[-2:]).to(hidden.dtype)
            hidden = hidden + self.ray_encoder(rays)
        if cameras is not None and self.camera_embedding is not None:
            pose = pose_features(cameras.to(sample.device)).to(embeddings.emb.dtype)
            embeddings = Embeddings(embeddings.emb + self.camera_embedding(pose), embeddings.context)
        skips: tuple[torch.Tensor, ...] = (hidden,)
        for index, block in enumerate(encoder.down_blocks):
            hidden, res_samples = run_block(block, hidden, embeddings)
            if cross_view is not None and str(index) in self.cross_view:
                # A block's last skip is its output; replace it so the attended features reach the decoder too.
                attend = self.cross_view[str(index)]
                if torch.is_grad_enabled() and attend.gradient_checkpointing:
                    hidden = attend._gradient_checkpointing_func(attend, hidden, cross_view)
                else:
                    hidden = attend(hidden, cross_view)
                res_samples = (*res_samples[:-1], hidden)
            skips += res_samples
        hidden = run_block(encoder.mid_block, hidden, embeddings)
        down = tuple(project(skip) for project, skip in zip(self.skip_projections, skips, strict=True))
        return ControlResiduals(down, self.mid_projection(hidden))

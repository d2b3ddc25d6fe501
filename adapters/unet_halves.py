"""A diffusers ``UNet2DConditionModel`` forward, split into its encoder half and its decoder half.

ControlNet-style residuals enter only the decoder half (the skip connections and the mid-block output), so
one encoder pass can serve every guidance mode; only the decoder runs once per mode. The steps mirror
``UNet2DConditionModel.forward`` (diffusers 0.3x–0.4x) and reuse its own embedding helpers, so SD-, SDXL-
and IF-shaped UNets all work. A test checks ``decode(encode(...))`` against ``unet(...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DConditionModel


@dataclass
class Embeddings:
    emb: torch.Tensor  # (N, D) timestep (+ class, + added) embedding, after ``time_embed_act``
    context: torch.Tensor | None  # (N, L, D) processed text embeddings for cross-attention


@dataclass
class EncoderState:
    embeddings: Embeddings
    skips: tuple[torch.Tensor, ...]  # the down path's outputs, one per skip connection
    mid: torch.Tensor  # the mid block's output
    input_size: tuple[int, int]

    def rows(self, index: slice) -> EncoderState:
        """The state of a contiguous run of the batch's images."""
        context = self.embeddings.context
        return EncoderState(Embeddings(self.embeddings.emb[index], None if context is None else context[index]),
                            tuple(skip[index] for skip in self.skips), self.mid[index], self.input_size)


def in_unet_dtype(unet: UNet2DConditionModel, sample: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                  added_cond_kwargs: dict[str, Any] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any] | None]:
    """The frozen UNet's inputs in its own dtype.

    A bf16/fp16 backbone sits next to fp32 trainable parts; without autocast (``32-true``), or in the norms
    autocast leaves alone, fp32 inputs would meet half-precision weights ("mat1 and mat2 must have the same
    dtype", "mixed dtype (CPU)"). The casts are differentiable, so gradients still reach the branch."""
    dtype = unet.dtype
    cast = lambda x: x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() else x  # noqa: E731
    added = None if added_cond_kwargs is None else {key: cast(value) for key, value in added_cond_kwargs.items()}
    return cast(sample), cast(encoder_hidden_states), added


def embed(unet: UNet2DConditionModel, sample: torch.Tensor, timesteps: torch.Tensor,
          encoder_hidden_states: torch.Tensor | None, added_cond_kwargs: dict[str, Any] | None = None,
          class_labels: torch.Tensor | None = None) -> Embeddings:
    """Time, class and added embeddings and the processed text context, as the UNet computes them."""
    added_cond_kwargs = added_cond_kwargs or {}
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timesteps), None)
    class_emb = unet.get_class_embed(sample=sample, class_labels=class_labels)
    if class_emb is not None:
        emb = torch.cat([emb, class_emb], -1) if unet.config.class_embeddings_concat else emb + class_emb
    aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                 added_cond_kwargs=added_cond_kwargs)
    if aug_emb is not None:
        emb = emb + aug_emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    context = unet.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states,
                                                 added_cond_kwargs=added_cond_kwargs)
    return Embeddings(emb, context)


def run_block(block: torch.nn.Module, sample: torch.Tensor, embeddings: Embeddings, **kwargs):
    """Call a down or mid block with the arguments its kind takes."""
    if getattr(block, "has_cross_attention", False):
        return block(sample, embeddings.emb, encoder_hidden_states=embeddings.context, **kwargs)
    return block(sample, embeddings.emb, **kwargs)


def encode(unet: UNet2DConditionModel, sample: torch.Tensor, timesteps: torch.Tensor,
           encoder_hidden_states: torch.Tensor | None, added_cond_kwargs: dict[str, Any] | None = None,
           class_labels: torch.Tensor | None = None) -> EncoderState:
    """The frozen UNet's encoder half: embeddings, ``conv_in``, the down blocks and the mid block."""
    sample, encoder_hidden_states, added_cond_kwargs = in_unet_dtype(unet, sample, encoder_hidden_states,
                                                                     added_cond_kwargs)
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    embeddings = embed(unet, sample, timesteps, encoder_hidden_states, added_cond_kwargs, class_labels)
    input_size = tuple(sample.shape[-2:])
    sample = unet.conv_in(sample)
    skips: tuple[torch.Tensor, ...] = (sample,)
    for block in unet.down_blocks:
        sample, res_samples = run_block(block, sample, embeddings)
        skips += res_samples
    if unet.mid_block is not None:
        sample = run_block(unet.mid_block, sample, embeddings)
    return EncoderState(embeddings, skips, sample, input_size)


def decode(unet: UNet2DConditionModel, state: EncoderState,
           down_residuals: tuple[torch.Tensor, ...] | None = None,
           mid_residual: torch.Tensor | None = None) -> torch.Tensor:
    """The decoder half, with optional ControlNet residuals added to the skips and the mid output."""
    skips, sample = state.skips, state.mid
    if down_residuals is not None:
        if len(down_residuals) != len(skips):
            raise ValueError(f"expected {len(skips)} down residuals, got {len(down_residuals)}")
        skips = tuple(skip + residual.to(skip.dtype) for skip, residual in zip(skips, down_residuals, strict=True))
    if mid_residual is not None:
        sample = sample + mid_residual.to(sample.dtype)
    factor = 2**unet.num_upsamplers
    forward_upsample_size = any(size % factor for size in state.input_size)
    embeddings = state.embeddings
    for index, block in enumerate(unet.up_blocks):
        res_samples, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
        upsample_size = skips[-1].shape[2:] if forward_upsample_size and index < len(unet.up_blocks) - 1 else None
        if getattr(block, "has_cross_attention", False):
            sample = block(hidden_states=sample, temb=embeddings.emb, res_hidden_states_tuple=res_samples,
                           encoder_hidden_states=embeddings.context, upsample_size=upsample_size)
        else:
            sample = block(hidden_states=sample, temb=embeddings.emb, res_hidden_states_tuple=res_samples,
                           upsample_size=upsample_size)
    if unet.conv_norm_out is not None:
        sample = unet.conv_act(unet.conv_norm_out(sample))
    return unet.conv_out(sample)

"""The tiny backbone's parts: an IF stage I-shaped pixel UNet, a small T5 encoder, the tokenizer and schedule.

The UNet uses IF's block types (ResNet down/up-sampling blocks, ``SimpleCrossAttn`` blocks that attend to the
image tokens and the text tokens together, a ``text_proj`` from the T5 width, and pooled text added to the time
embedding), so every code path that serves DeepFloyd-IF serves this model too. Attention sits only at the low
resolutions: at 16x16 it was the most expensive op of a CPU training step.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

from tunemv.tinyif.tokenizer import build_tokenizer

MAX_TEXT_TOKENS = 77  # what Backbone (and IFPipeline) pad prompts to


@dataclass
class TinyIFConfig:
    """Sizes of the UNet and the text encoder; the defaults are the shipped model's."""

    resolution: int = 32
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128])
    attention_blocks: list[bool] = field(default_factory=lambda: [False, False, True, True])
    layers_per_block: int = 1
    attention_head_dim: int = 32
    norm_num_groups: int = 16
    text_width: int = 64  # T5 d_model
    text_layers: int = 2
    text_heads: int = 4
    text_ff: int = 128

    def __post_init__(self):
        if len(self.block_out_channels) != len(self.attention_blocks):
            raise ValueError("block_out_channels and attention_blocks need one entry per resolution")
        if any(width % self.norm_num_groups for width in self.block_out_channels):
            raise ValueError(f"every block_out_channels entry must be divisible by norm_num_groups={self.norm_num_groups}")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} must be divisible by text_heads {self.text_heads}")


def build_unet(config: TinyIFConfig) -> UNet2DConditionModel:
    """A pixel-space ε-predicting UNet (3 channels in and out: fixed variance, no learned half)."""
    down = tuple("SimpleCrossAttnDownBlock2D" if attend else "ResnetDownsampleBlock2D" for attend in config.attention_blocks)
    up = tuple("SimpleCrossAttnUpBlock2D" if attend else "ResnetUpsampleBlock2D" for attend in config.attention_blocks[::-1])
    return UNet2DConditionModel(
        sample_size=config.resolution, in_channels=3, out_channels=3, layers_per_block=config.layers_per_block,
        block_out_channels=tuple(config.block_out_channels), down_block_types=down, up_block_types=up,
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=config.block_out_channels[-1],
        attention_head_dim=config.attention_head_dim, norm_num_groups=config.norm_num_groups,
        encoder_hid_dim=config.text_width, encoder_hid_dim_type="text_proj", addition_embed_type="text",
        addition_embed_type_num_heads=max(1, config.text_width // 32), resnet_time_scale_shift="scale_shift",
        time_embedding_act_fn="gelu",
    )


def build_text_encoder(config: TinyIFConfig, vocab_size: int) -> T5EncoderModel:
    t5 = T5Config(vocab_size=vocab_size, d_model=config.text_width, d_kv=config.text_width // config.text_heads,
                  d_ff=config.text_ff, num_layers=config.text_layers, num_heads=config.text_heads,
                  relative_attention_num_buckets=16, dropout_rate=0.0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(t5)


def build_scheduler() -> DDPMScheduler:
    """IF's noise schedule: 1000-step cosine DDPM, ε prediction; fixed-small variance (no learned half)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                         variance_type="fixed_small", clip_sample=True, clip_sample_range=1.0)


def build_parts(config: TinyIFConfig, seed: int = 0):
    """Fresh (unet, text_encoder, tokenizer, scheduler), seeded."""
    tokenizer = build_tokenizer(model_max_length=MAX_TEXT_TOKENS)
    torch.manual_seed(seed)
    unet = build_unet(config)
    text_encoder = build_text_encoder(config, len(tokenizer))
    return unet, text_encoder, tokenizer, build_scheduler()


def tokenize(tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (N, 77), exactly as ``Backbone.encode_prompt`` tokenizes for IF."""
    prompts = [prompt.lower().strip() for prompt in prompts]
    tokens = tokenizer(prompts, padding="max_length", max_length=MAX_TEXT_TOKENS, truncation=True, return_tensors="pt")
    return tokens.input_ids, tokens.attention_mask


def encode_tokens(text_encoder: T5EncoderModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, 77) tokens -> (N, 77, D) last hidden state, with gradients (``Backbone.encode_prompt`` has none)."""
    return text_encoder(input_ids, attention_mask=attention_mask)[0]


def save_pipeline(folder: str | Path, unet, text_encoder, tokenizer, scheduler) -> Path:
    """Write an ``IFPipeline`` folder (model_index.json, unet/, text_encoder/, tokenizer/, scheduler/)."""
    from diffusers import IFPipeline  # imports transformers' image processors; only needed to save

    pipeline = IFPipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler,
                          safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    pipeline.save_pretrained(str(folder), safe_serialization=True)
    make_tokenizer_portable(Path(folder) / "tokenizer")
    return Path(folder)


def make_tokenizer_portable(folder: Path) -> None:
    """Name the tokenizer class both transformers 4 and 5 know.

    transformers 5 saves ``"tokenizer_class": "TokenizersBackend"``, which 4.x cannot load; the same
    ``tokenizer.json`` loads in both as ``PreTrainedTokenizerFast`` (the ids are identical)."""
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("backend", None)  # a 5.x-only key
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def count_parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())

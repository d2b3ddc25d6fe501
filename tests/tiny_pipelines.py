"""Tiny random diffusers pipelines of each family, saved in the standard layout (no weights can be downloaded).

Each builder returns the pipeline object; ``pipeline.save_pretrained(folder)`` writes ``model_index.json`` and
the ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/`` subfolders a hub checkout has.
Tokenizers are built from a tiny vocabulary written here: CLIP's from vocab.json + merges.txt, T5's as a
``tokenizers`` word-level model (T5's real one is a SentencePiece model that cannot be made offline).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    IFPipeline,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tiny_unets import IF_SHAPED, SD_SHAPED, TEXT_DIM, tiny_unet
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

WORDS = ("a", "photo", "of", "red", "blue", "chair", "table", "mug", "white", "background")
SDXL_PROJECTION_DIM = 16
SDXL_SHAPED = dict(  # SDXL: two CLIP encoders (24 + 24 wide), pooled text + 6 time ids as added embeddings
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=2 * TEXT_DIM, attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + SDXL_PROJECTION_DIM, norm_num_groups=8,
)
TINY_VAE = dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, sample_size=32)


def clip_tokenizer() -> CLIPTokenizer:
    """A byte-level BPE over single characters plus whole ``WORDS`` (each merged character by character)."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    merges = []
    for character in sorted(set("".join(WORDS))):
        vocab.setdefault(character, len(vocab))
        vocab.setdefault(character + "</w>", len(vocab))
    for word in WORDS:
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab))
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def t5_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with T5's special tokens (pad 0, eos 1, unk 2) that appends ``</s>``.

    No ``model_max_length``: it is saved as int(1e30), as some hub tokenizers are; the backbone caps it.
    """
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{word: index + 3 for index, word in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def clip_config(tokenizer: CLIPTokenizer, hidden_size: int = TEXT_DIM, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1, **extra)


def tiny_vae(seed: int = 0, **overrides) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(**{**TINY_VAE, **overrides}).eval()


def tiny_sd(prediction_type: str = "epsilon", text_dim: int = TEXT_DIM, seed: int = 0) -> StableDiffusionPipeline:
    """SD 1.x-like (PNDM, ε) or SD 2.x-like (DDIM, v) pipeline; ``text_dim`` != 24 makes it inconsistent."""
    tokenizer = clip_tokenizer()
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(clip_config(tokenizer, text_dim)).eval()
    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=prediction_type,
                  steps_offset=1)
    scheduler = (PNDMScheduler(skip_prk_steps=True, **common) if prediction_type == "epsilon"
                 else DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **common))
    return StableDiffusionPipeline(vae=tiny_vae(seed), text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=tiny_unet(SD_SHAPED, seed), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def tiny_if(seed: int = 0) -> IFPipeline:
    """DeepFloyd-IF stage I-like: pixel UNet with a learned-variance half, T5 encoder, cosine DDPM schedule."""
    tokenizer = t5_tokenizer()
    torch.manual_seed(seed + 1)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=6, d_ff=2 * TEXT_DIM,
                                           num_layers=2, num_heads=4, relative_attention_num_buckets=8)).eval()
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                              prediction_type="epsilon", thresholding=True, sample_max_value=1.0)
    return IFPipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=tiny_unet(IF_SHAPED, seed),
                      scheduler=scheduler, safety_checker=None, feature_extractor=None, watermarker=None,
                      requires_safety_checker=False)


def tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    tokenizer = clip_tokenizer()
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(clip_config(tokenizer)).eval()
    text_encoder_2 = CLIPTextModelWithProjection(clip_config(tokenizer, projection_dim=SDXL_PROJECTION_DIM)).eval()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SDXL_SHAPED).eval()
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    return StableDiffusionXLPipeline(vae=tiny_vae(seed, scaling_factor=0.13025), text_encoder=text_encoder,
                                     text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer,
                                     unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
                                     add_watermarker=False)

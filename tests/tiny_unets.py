"""Tiny random UNets shaped like each supported family, for tests (no weights can be downloaded here)."""

import torch
from diffusers import UNet2DConditionModel

SD_SHAPED = dict(  # SD 1.x/2.x: latents, CrossAttn blocks, ε or v
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=24, attention_head_dim=8, norm_num_groups=8,
)
IF_SHAPED = dict(  # DeepFloyd-IF stage I: pixels, SimpleCrossAttn blocks, T5 projection, learned variance
    sample_size=16, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=32, attention_head_dim=8,
    encoder_hid_dim=24, encoder_hid_dim_type="text_proj", addition_embed_type="text",
    addition_embed_type_num_heads=2, resnet_time_scale_shift="scale_shift", time_embedding_act_fn="gelu",
    norm_num_groups=8,
)
TEXT_DIM = 24  # both families take 24-dim text embeddings here (CLIP width / T5 width)


def tiny_unet(config: dict, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**config).eval()

"""Stable Diffusion 1.5's exact architecture, for a random-init pipeline of the real size (`sd15-random`).

The configurations of stable-diffusion-v1-5's unet/, vae/ and text_encoder/ config.json files (UNet
859,520,964 parameters, text encoder 123,060,480, VAE 83,653,863): what memory, speed and every switch
cost at the size the paper-scale study runs, measurable without the weights. Its images are noise.
"""

from __future__ import annotations

from dreamstudy.models.tiny import EXTRA_SCHEDULER_CONFIG, SCHEDULER_CONFIG, VOCAB_SIZE
from dreamstudy.models.tokenizer import MODEL_MAX_LENGTH

TEXT_WIDTH = 768  # CLIP ViT-L/14's text transformer

UNET_CONFIG = dict(
    sample_size=64,  # latent side; x8 = 512 px
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=TEXT_WIDTH,
    attention_head_dim=8,  # diffusers' SD 1.x naming: this is the number of heads
    norm_num_groups=32,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=512,
)
TEXT_ENCODER_CONFIG = dict(
    vocab_size=VOCAB_SIZE,
    max_position_embeddings=MODEL_MAX_LENGTH,
    hidden_size=TEXT_WIDTH,
    intermediate_size=4 * TEXT_WIDTH,
    num_hidden_layers=12,
    num_attention_heads=12,
    projection_dim=TEXT_WIDTH,
    hidden_act="quick_gelu",
    # the tokenizer's real ids (SD 1.5's file keeps CLIP's legacy 0/2, which only the pooled output reads)
    bos_token_id=VOCAB_SIZE - 2,
    eos_token_id=VOCAB_SIZE - 1,
    pad_token_id=VOCAB_SIZE - 1,
)
ARCHITECTURE = {"unet": UNET_CONFIG, "vae": VAE_CONFIG, "text_encoder": TEXT_ENCODER_CONFIG,
                "scheduler": SCHEDULER_CONFIG | EXTRA_SCHEDULER_CONFIG}
# ControlNet's conditioning encoder for SD 1.x (lllyasviel/sd-controlnet-canny's config)
CONDITIONING_CHANNELS = (16, 32, 96, 256)

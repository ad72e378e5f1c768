"""The refam-shapes architecture: FLUX's component classes at a size that trains on a CPU."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from refam.aggregators.magnets import PAPER_MAGNETS
from refam.aggregators.stopwords import PAPER_STOP_WORDS
from refam.shapes.scenes import COLOURS, SHAPES, SIZES
from refam.text.wordlevel import word_level_tokenizers

CLIP_POSITIONS = 192
EXTRA_WORDS = """object objects shape shapes thing left right top bottom middle centre center corner big large small
little image picture scene background of one two three four""".split()


def shapes_vocabulary() -> list[str]:
    words = set(COLOURS) | set(SHAPES) | set(SIZES) | set(EXTRA_WORDS) | set(PAPER_STOP_WORDS) | set(PAPER_MAGNETS)
    return sorted(words - {"_", ";", ".", "-"})


@dataclass
class ShapesModelConfig:
    width: int = 128
    heads: int = 4
    double_blocks: int = 2
    single_blocks: int = 2
    text_width: int = 64
    text_layers: int = 2
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (16, 32, 32)  # 3 blocks: spatial factor 4, then FLUX's 2x2 packing
    # head dims on FLUX's first RoPE axis, which never rotates for image tokens (their id there is 0):
    # the rest is split between rows and columns; more unrotated dims leave more of each head to content
    rope_fixed_dims: int = 8

    def to_dict(self) -> dict:
        return asdict(self)


def shapes_t5(tokenizer, width: int, layers: int):
    """The embedded models' T5 encoder over a word-level vocabulary: four heads, no dropout."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=width, d_kv=width // 4, d_ff=2 * width, num_layers=layers, num_heads=4,
        relative_attention_num_buckets=16, dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    ))


def build_components(config: ShapesModelConfig, seed: int = 0) -> dict:
    """Untrained FluxPipeline components (same classes as FLUX.1) for the shapes vocabulary."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    # character-level CLIP: long enough for a four-object caption with positions
    clip_tok, t5_tok = word_level_tokenizers(shapes_vocabulary(), clip_max_length=CLIP_POSITIONS)
    head_dim = config.width // config.heads
    spatial = (head_dim - config.rope_fixed_dims) // 2
    if config.rope_fixed_dims % 2 or spatial % 2 or spatial <= 0:
        raise ValueError(f"rope_fixed_dims={config.rope_fixed_dims} must be even and leave an even, positive "
                         f"number of dims per spatial axis of the {head_dim}-dim heads")
    rope = (head_dim - 2 * spatial, spatial, spatial)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        t5 = shapes_t5(t5_tok, config.text_width, config.text_layers)
        clip = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(clip_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=CLIP_POSITIONS, projection_dim=32, bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id,
        ))
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4 * config.latent_channels, num_layers=config.double_blocks,
            num_single_layers=config.single_blocks, attention_head_dim=head_dim, num_attention_heads=config.heads,
            joint_attention_dim=config.text_width, pooled_projection_dim=32, guidance_embeds=False, axes_dims_rope=rope,
        )
        blocks = len(config.vae_channels)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=config.vae_channels, layers_per_block=1,
            latent_channels=config.latent_channels, norm_num_groups=8, scaling_factor=1.0, shift_factor=0.0,
            use_quant_conv=False, use_post_quant_conv=False,
        )
    # FLUX.1-schnell's scheduler (no resolution shift): the model is trained on uniform-logit-normal t
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    return {"scheduler": scheduler, "vae": vae, "text_encoder": clip, "tokenizer": clip_tok,
            "text_encoder_2": t5, "tokenizer_2": t5_tok, "transformer": transformer}

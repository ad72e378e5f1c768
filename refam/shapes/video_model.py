"""The refam-shapes-video architecture: Mochi 1's component classes at a size that trains on a CPU.

MochiTransformer3DModel (joint attention over video and text tokens, RoPE over time, rows and
columns), AutoencoderKLMochi (8x in space, 6x in time with Mochi's (1, 2, 3) temporal expansions,
causal), a T5EncoderModel over the word-level shapes-and-motion vocabulary, and Mochi's scheduler:
the folder loads with `MochiPipeline.from_pretrained` and is read by the unchanged `MochiExtractor`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from refam.shapes.model import shapes_t5, shapes_vocabulary
from refam.shapes.motion import MOTION_WORDS
from refam.text.wordlevel import word_level_tokenizers

FRAME = (192, 192)  # (height, width) the extractor resizes every frame to: 12 x 12 tokens per latent frame
CLIP_FRAMES = 13  # one window of Mochi's 6 k + 1: latent frames [frame 0 | 1-6 | 7-12]
TEMPORAL = 6  # AutoencoderKLMochi's temporal compression
ROPE_STEP = 16.0  # MochiRoPE's position units between two neighbouring tokens of a 12 x 12 grid at FRAME


def video_vocabulary() -> list[str]:
    return sorted(set(shapes_vocabulary()) | set(MOTION_WORDS))


@dataclass
class VideoModelConfig:
    heads: int = 4
    head_dim: int = 32
    layers: int = 4
    text_width: int = 64  # T5's width (Mochi's `text_embed_dim`); a multiple of 8 (the caption pooler's heads)
    text_stream: int = 96  # the blocks' text stream (Mochi's `pooled_projection_dim`), unlike the video's
    text_layers: int = 1
    latent_channels: int = 12  # as Mochi 1
    # Mochi's GroupNorm has 32 groups, normalised per frame: at 32 channels each group is one channel,
    # a flat region of a frame has zero variance there, and every such norm multiplies the gradient by
    # 1/sqrt(eps) ~ 316 (measured: 1e8-1e24 at the input layer), so the autoencoder never learned.
    # Two channels a group and more (as Mochi 1's 128-768) keep it finite.
    vae_encoder_channels: tuple[int, ...] = (64, 64, 64, 128)
    vae_decoder_channels: tuple[int, ...] = (64, 64, 64, 64)
    # each head's first dims that RoPE never rotates (their frequencies stay zero in training): an
    # image query matches an expression key there by content alone, wherever the shape is
    rope_fixed_dims: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


def draw_rope_frequencies(frequencies: torch.Tensor, fixed_dims: int) -> None:
    """Mochi's learned RoPE frequencies [3 (time, rows, columns), heads, head_dim / 2], drawn in place.

    diffusers builds them at zero (no rotation: no position at all). Drawn so that one step rotates a
    pair by about half a radian: a latent frame is one step in time, but a token is `ROPE_STEP`
    position units in space (MochiRoPE spreads the grid over the 192-pixel base frame), so rows and
    columns are drawn that much smaller; drawn as large as time's, every token's query came out
    turned at random and no expression key matched a shape's looks wherever it stood (the grounding
    term did not fall on 64 clips in 160 steps; with these draws it fell from the first steps).
    The first `fixed_dims` of each head are left unrotated."""
    if fixed_dims % 2 or not 0 <= fixed_dims < 2 * frequencies.shape[-1]:
        raise ValueError(f"rope_fixed_dims={fixed_dims} must be even and below the head's {2 * frequencies.shape[-1]} dims")
    frequencies.normal_(0.0, 0.5)
    frequencies[1:] /= ROPE_STEP
    frequencies.mul_(fixed_rope_mask(fixed_dims, frequencies))


def fixed_rope_mask(fixed_dims: int, frequencies: torch.Tensor) -> torch.Tensor:
    """1 where a RoPE frequency turns (and trains), 0 on each head's first `fixed_dims` (unrotated)."""
    mask = torch.ones_like(frequencies)
    mask[:, :, : fixed_dims // 2] = 0.0
    return mask


def build_video_components(config: VideoModelConfig, seed: int = 0) -> dict:
    """Untrained MochiPipeline components (the classes of genmo/mochi-1-preview)."""
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiTransformer3DModel

    _, t5_tok = word_level_tokenizers(video_vocabulary())
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        t5 = shapes_t5(t5_tok, config.text_width, config.text_layers)
        transformer = MochiTransformer3DModel(
            patch_size=2, num_attention_heads=config.heads, attention_head_dim=config.head_dim,
            num_layers=config.layers, pooled_projection_dim=config.text_stream, in_channels=config.latent_channels,
            text_embed_dim=config.text_width, time_embed_dim=64, max_sequence_length=256,
        )
        draw_rope_frequencies(transformer.pos_frequencies.data, config.rope_fixed_dims)
        vae = AutoencoderKLMochi(
            in_channels=15, out_channels=3, encoder_block_out_channels=tuple(config.vae_encoder_channels),
            decoder_block_out_channels=tuple(config.vae_decoder_channels),
            latent_channels=config.latent_channels, layers_per_block=(1, 1, 1, 1, 1),
            temporal_expansions=(1, 2, 3), spatial_expansions=(2, 2, 2),
            add_attention_block=(False, False, False, False, False), scaling_factor=1.0,
        )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, invert_sigmas=True)
    return {"scheduler": scheduler, "vae": vae, "text_encoder": t5, "tokenizer": t5_tok, "transformer": transformer}

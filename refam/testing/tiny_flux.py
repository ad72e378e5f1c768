"""A FLUX-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as FLUX.1 (FluxTransformer2DModel, CLIPTextModel, T5EncoderModel, AutoencoderKL,
FlowMatchEulerDiscreteScheduler); a word-level T5 vocabulary and a character-level CLIP vocabulary
stand in for the real ones, so the folder loads through `FluxPipeline.from_pretrained` offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from refam.aggregators.magnets import PAPER_MAGNETS
from refam.aggregators.stopwords import PAPER_STOP_WORDS
from refam.text.wordlevel import word_level_tokenizers

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

DOMAIN_WORDS = """
man woman person people boy girl child dog cat horse cow sheep bird elephant zebra giraffe bear car bus truck
bike motorcycle train boat plane chair couch bed table tv laptop cup bottle bowl pizza cake banana apple orange
umbrella bag ball kite surfboard skateboard tree grass sky road street building wall window door picture
red green blue yellow pink purple orange white black brown gray grey
left right middle center top bottom front back near far big small large little tall short
first second third last one two three shirt hat jacket sitting standing holding wearing
box circle square triangle shape object photo image rectangle round thing oval bar pointing corner coloured colored
""".split()


def tiny_vocabulary() -> list[str]:
    # symbols stay single characters, as in T5, where "_" becomes a bare "▁" then "_"
    return sorted((set(DOMAIN_WORDS) | set(PAPER_STOP_WORDS) | set(PAPER_MAGNETS)) - {"_", ";", ".", "-"})


def build_tokenizers(words: list[str] | None = None, clip_max_length: int = 77):
    """`word_level_tokenizers` over `words` (default: the tiny vocabulary)."""
    return word_level_tokenizers(words if words is not None else tiny_vocabulary(), clip_max_length)


def tiny_t5(tokenizer, **overrides):
    """A two-layer T5 encoder over `tokenizer`'s vocabulary, drawn from torch's current random state;
    `overrides` replace `T5Config` fields (SD3.5's T5 v1.1: feed_forward_proj="gated-gelu")."""
    from transformers import T5Config, T5EncoderModel

    config = dict(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(T5Config(**{**config, **overrides}))


def tiny_clip(tokenizer, width: int = 32):
    """A two-layer CLIPTextModel over `tokenizer`'s vocabulary (its pooled output FLUX's and HunyuanVideo's
    pooled vector), drawn from torch's current random state."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def tiny_flux_vae():
    """FLUX.1's AutoencoderKL at CPU size (16 latent channels, 8x, its scaling and shift factors), drawn
    from torch's current random state."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        latent_channels=16, norm_num_groups=4, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False,
    )


def flux_scheduler():
    """black-forest-labs/FLUX.1-dev's scheduler: flow matching with the dynamic shift, mu 0.5..1.15 over 256..4096 tokens."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )


def build_tiny_flux(seed: int = 0, width: int = 32, heads: int = 2, double_blocks: int = 2, single_blocks: int = 2):
    """A randomly initialised FluxPipeline with the real component classes, deterministic by seed."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    clip_tok, t5_tok = build_tokenizers()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        t5 = tiny_t5(t5_tok)
        clip = tiny_clip(clip_tok)
        head_dim = width // heads
        rope = (head_dim - 2 * (head_dim * 3 // 8), head_dim * 3 // 8, head_dim * 3 // 8)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=double_blocks, num_single_layers=single_blocks,
            attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=32,
            pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=rope,
        )
        vae = tiny_flux_vae()
    return FluxPipeline(
        scheduler=flux_scheduler(), vae=vae, text_encoder=clip, tokenizer=clip_tok,
        text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer,
    )


QK_NORMS = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")


def randomize_qk_norms(model: torch.nn.Module, seed: int) -> None:
    """Draw the affine scales (and shifts) of every attention's QK norms of `model` at random, from a
    generator of their own seeded by `seed` (the global random state, and so every other component's
    draw, stays as it was). Fresh norms scale by exactly 1 and shift by 0, so a processor applying
    the image stream's norm to text keys (or none at all, where the input is near unit RMS) would
    give the stock answer; with these it does not."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        module, _, kind = name.rpartition(".")
        if module.rpartition(".")[2] in QK_NORMS:
            with torch.no_grad():
                center = 1.0 if kind == "weight" else 0.0
                parameter.copy_(center + 0.3 * torch.randn(parameter.shape, generator=generator))


def save_pipeline_folder(pipeline: DiffusionPipeline, folder: str | Path) -> Path:
    """`pipeline` written to `folder` in the diffusers layout with safetensors weights, the form
    `from_pretrained` loads offline; every tiny builder's `save_tiny_*` writes through here."""
    folder = Path(folder)
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_flux(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_flux(**kwargs), folder)

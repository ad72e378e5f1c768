"""Stable Diffusion 3 / 3.5 (diffusers `StableDiffusion3Pipeline`) on the template: joint attention, T5 expressions.

Sigma convention: the transformer is told timestep 1000 sigma, unscaled, as the pipeline passes the
scheduler's timesteps (in float32: bfloat16 would make 750 into 752), and predicts eps - x0, as
FLUX. The scheduler's shift is static (3.0: sigma -> 3 sigma / (1 + 2 sigma)), for `shift=True`.

The joint sequence is [image | caption | expressions]: the stock processor puts the image first,
so the main stream is a prefix view. Text tokens have no position in the MMDiT (image tokens get a
sin-cos table at patch embedding). The caption is 77 CLIP rows (CLIP-L and CLIP-G side by side,
zero-padded to T5's width) then T5 rows, unmasked. The branch reads expressions with T5 only:
word-aligned, full width, FLUX's reader; CLIP would add a second, causal tokenization of each word.
SD3.5-medium's dual-attention blocks add an image-only `attn2` that never sees text: the branch
rides in `attn`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import JointAttnProcessor2_0

from refam.errors import ConfigError
from refam.extractors.branch import BranchProcessor, install, joint_branch, sdpa, stream_qkv
from refam.extractors.latents import Latent, patched_latent, vae_latent
from refam.extractors.template import ImageDiTExtractor


class SD3BranchProcessor(BranchProcessor):
    """`JointAttnProcessor2_0` in a block's `attn` with the branch after the caption."""

    stock_class = JointAttnProcessor2_0

    def with_branch(self, capture, attn, hidden_states, encoder_hidden_states, attention_mask, **_):
        image, text = stream_qkv(attn, hidden_states), stream_qkv(attn, encoder_hidden_states, added=True)
        query, key, value = (torch.cat(pair, dim=1) for pair in zip(image, text))  # [image | caption | branch]
        # the stock call is SDPA with no mask (SD3 has none)
        out = joint_branch(capture, self.block_index, query, key, value, ("image", "caption", "branch"), sdpa)
        out = out.flatten(2, 3).to(query.dtype)
        num_image = hidden_states.shape[1]
        image_out = attn.to_out[1](attn.to_out[0](out[:, :num_image]))
        text_out = out[:, num_image:]  # the last block (context_pre_only) drops it unprojected, as the stock one
        return image_out, text_out if attn.context_pre_only else attn.to_add_out(text_out)


@dataclass
class SD3Caption:
    embeds: torch.Tensor  # [1, 77 + caption_max_tokens, D]: CLIP rows (zero-padded to T5's width), then T5 rows
    pooled: torch.Tensor  # [1, P]: CLIP-L's and CLIP-G's pooled vectors


class SD3Extractor(ImageDiTExtractor):
    """Cross-attention maps of referring expressions from an SD3 / SD3.5 MMDiT (timestep 1000 sigma).

    Args (besides `ImageDiTExtractor`'s; SD3.5-large has 38 blocks, SD3.5-medium 24, blocks 0-12 with dual attention):
        resolution: the image is resized to resolution x resolution, or to about resolution^2 pixels
            at its aspect ratio with `keep_aspect` (at most `pos_embed_max_size` x 16 pixels a side).
        caption_max_tokens: T5 length of the denoising prompt (the pipeline's default 256). The
            padding is attended, so this changes the velocity itself.
    """

    pipeline = "StableDiffusion3Pipeline"
    branch_first = False
    checkpoint_layout = (
        "the folder of a Stable Diffusion 3 checkpoint in the diffusers layout (model_index.json, transformer/, vae/, "
        "text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/, text_encoder_3/, tokenizer_3/, scheduler/) "
        "or a hub id such as stabilityai/stable-diffusion-3.5-large"
    )
    reader_components = ("tokenizer_3", "text_encoder_3")  # T5

    def __init__(self, pretrained: str, caption_max_tokens: int = 256, **settings) -> None:
        super().__init__(pretrained, caption_max_tokens=caption_max_tokens, **settings)
        if caption_max_tokens > 512:  # the pipeline's limit
            raise ConfigError(f"must be in 1..512, got {caption_max_tokens}", field="caption_max_tokens")

    def install_branch(self, pipe) -> list[SD3BranchProcessor]:
        return install(list(pipe.transformer.transformer_blocks), SD3BranchProcessor, attribute="attn")

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> SD3Caption:
        embeds, _, pooled, _ = self.prompt(prompt=caption, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False,
                                           max_sequence_length=self.caption_max_tokens)
        return SD3Caption(embeds.to(self.device, self.dtype), pooled.to(self.device, self.dtype))

    @torch.inference_mode()
    def encode_image(self, image) -> Latent:
        return patched_latent(vae_latent(self.pipe, self.pixels(image)), self.dtype, self.pipe.patch_size)

    def timestep(self, sigma: float) -> float:
        return 1000.0 * sigma

    def denoise(self, x_t, sigma, grid, condition: SD3Caption, expressions):
        return self.pipe.transformer(
            hidden_states=x_t, encoder_hidden_states=self.join_text(condition.embeds, expressions),
            pooled_projections=condition.pooled, timestep=self.timestep_tensor(sigma), return_dict=False,
        )[0]

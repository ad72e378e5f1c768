"""CogView4 (diffusers `CogView4Pipeline`) on the template: joint attention with one set of projections, GLM-4
expressions.

Sigma convention: the pipeline schedules timesteps t = linspace(1000, 1) (integers), noises the latent to
the level its dynamic time shift takes t / 1000 to (mu = sqrt(image tokens / 256) 0.75 + 0.25, "linear"),
and tells the transformer the unshifted t; the model predicts eps - x0. So the timestep for noise level sigma
is 1000 times the level the shift takes to sigma, at the image's token count; `shift: true` reads sigma on
the unshifted schedule (sigma 0.75: the pipeline's t = 750).

Text: GLM-4 reads the prompt after its "[gMASK]<sop>" prefix, left-padded with its pad token to a multiple
of 16 tokens and run with no mask (the prompt attends to the padding), second-to-last hidden layer; every
row enters the transformer's `text_proj`, unmasked. Expressions are read alike, each padded to its own
multiple of 16 (`PromptTemplate.pad_multiple`): the padding and the prefix ride with it as template tokens.
Every block projects [text | image] with one set of projections and a QK LayerNorm, RoPE on image tokens
only: [branch | caption | image], no mask.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.transformers.transformer_cogview4 import CogView4AttnProcessor

from refam.extractors.branch import BranchProcessor, install, joint_branch, sdpa, video_text_qkv
from refam.extractors.latents import Latent, patched_latent, vae_latent
from refam.extractors.template import ImageDiTExtractor
from refam.extractors.trajectory import Shift, time_shift
from refam.text.decoder import DecoderReader, PromptTemplate


class CogView4BranchProcessor(BranchProcessor):
    """`CogView4AttnProcessor` with the branch first in the text stream: [branch | caption | image]."""

    stock_class = CogView4AttnProcessor

    def with_branch(self, capture, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb):
        query, key, value = video_text_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb,
                                           video_first=False, unbind_dim=-2)
        out = joint_branch(capture, self.block_index, query, key, value, ("branch", "caption", "image"), sdpa)
        out = attn.to_out[1](attn.to_out[0](out.flatten(2, 3).type_as(query)))
        text_len = encoder_hidden_states.shape[1]
        return out[:, text_len:], out[:, :text_len]


def unshifted(shift: Shift, sigma: float) -> float:
    """The level the (increasing) `shift` takes to sigma, by bisection in float64."""
    low, high = 0.0, 1.0
    for _ in range(64):
        middle = (low + high) / 2
        low, high = (middle, high) if shift(middle) < sigma else (low, middle)
    return (low + high) / 2


class CogView4Extractor(ImageDiTExtractor):
    """Cross-attention maps of referring expressions from CogView4's transformer (28 blocks).

    `ImageDiTExtractor`'s settings; caption_max_tokens is GLM's longest prompt (the pipeline's 1024; a caption
    is padded to a multiple of 16 only, not to this).
    """

    pipeline = "CogView4Pipeline"
    checkpoint_layout = (
        "the folder of a CogView4 checkpoint in the diffusers layout (model_index.json, transformer/, vae/, "
        "text_encoder/, tokenizer/, scheduler/) or a hub id such as THUDM/CogView4-6B")

    def __init__(self, pretrained: str, caption_max_tokens: int = 1024, **settings) -> None:
        super().__init__(pretrained, caption_max_tokens=caption_max_tokens, **settings)

    def install_branch(self, pipe) -> list[CogView4BranchProcessor]:
        return install(list(pipe.transformer.transformer_blocks), CogView4BranchProcessor, attribute="attn1")

    def expression_reader(self) -> DecoderReader:
        template = PromptTemplate("{}", hidden_layers=(-2,), pad_multiple=16)  # CogView4Pipeline._get_glm_embeds
        return DecoderReader(self.pipe.tokenizer, self.pipe.text_encoder, template, self.expression_max_tokens)

    @torch.inference_mode()
    def encode_image(self, image) -> Latent:
        """As CogView4ControlPipeline encodes its control image (its contiguous pixels), the VAE's mode times
        scaling_factor, no shift (the pipeline's decoding divides by scaling_factor only); 2 x 2 cells a token."""
        return patched_latent(vae_latent(self.pipe, self.pixels(image, contiguous=True), shifted=False), self.dtype, 2)

    def noise_shift(self, num_image_tokens: int) -> Shift:
        from diffusers.pipelines.cogview4.pipeline_cogview4 import calculate_shift

        config = self.pipe.scheduler.config
        mu = calculate_shift(num_image_tokens, config.get("base_image_seq_len", 256), config.get("base_shift", 0.25),
                             config.get("max_shift", 0.75))
        return time_shift(self.pipe.scheduler, mu)

    def timestep(self, sigma: float, num_image_tokens: int | None = None) -> float:
        """1000 times the unshifted level of noise level sigma, at this many image tokens (by default a
        resolution x resolution image's; `denoise` tells the one of the image's own count)."""
        tokens = num_image_tokens or (self.resolution // (self.pipe.vae_scale_factor * self.patch_size)) ** 2
        return 1000.0 * unshifted(self.noise_shift(tokens), sigma)

    def denoise(self, x_t, sigma, grid, condition: torch.Tensor, expressions):
        # CogView4Pipeline.__call__: the schedule's float32 timestep, the sizes of the image (height, width) as
        # original and target size, crop (0, 0), in the text's dtype
        size = torch.tensor([[n * self.pipe.vae_scale_factor * self.patch_size for n in grid[1:]]], dtype=self.dtype,
                            device=self.device)
        return self.pipe.transformer(
            hidden_states=x_t, encoder_hidden_states=self.join_text(condition, expressions),
            timestep=torch.full((1,), self.timestep(sigma, math.prod(grid)), device=self.device), original_size=size,
            target_size=size, crop_coords=torch.zeros_like(size), return_dict=False)[0]

"""HunyuanImage 2.1 (diffusers `HunyuanImagePipeline`) on the template: joint attention in dual- then
single-stream blocks, Qwen2.5-VL expressions through the token refiner.

Sigma convention: the transformer is told the scheduler's timestep, 1000 sigma, cast to the model's dtype
as the pipeline casts it, and predicts eps - x0; the scheduler's shift is static.

The caption is read twice: Qwen2.5-VL in the pipeline's template (its first 34 tokens, the system prefix,
dropped; hidden layer -3; padded to `caption_max_tokens` and masked) and ByT5 on quoted glyph text (128
rows, masked out without any). The transformer's `context_embedder`, the token refiner, mixes the Qwen
tokens (self-attention under the mask, a masked mean as its pooled vector) before the blocks, which see
[image | caption stream] under a mask over the keys: the caption stream's real tokens first, its padding
hidden. The branch cannot ride through the refiner without changing the caption, so `text_side` runs
each expression through it alone as a caption of its own (its own mean, the call's timestep), and
`denoise` joins the rows after the caption stream where the blocks begin (`rows_joined`): [image |
caption stream | expressions], through the dual-stream blocks (their own text projections) and the
single-stream ones (one set for every token). RoPE turns image tokens only; text tokens have no
positions. Expressions are read by Qwen alone (no glyph reading).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from diffusers.models.transformers.transformer_hunyuanimage import HunyuanImageAttnProcessor

from refam.errors import CheckpointError
from refam.extractors.branch import BranchProcessor, dispatched, install, joint_branch, video_text_qkv
from refam.extractors.latents import Latent, patched_latent, vae_latent
from refam.extractors.template import ImageDiTExtractor
from refam.extractors.text_side import each_alone, rows_joined
from refam.text.decoder import DecoderReader, PromptTemplate


class HunyuanBranchProcessor(BranchProcessor):
    """`HunyuanImageAttnProcessor` of a dual- or single-stream block with the branch after the caption
    stream: [image | caption | expressions]. The key mask the transformer builds covers the branch too
    (`HunyuanImageExtractor.denoise`); its [image | caption] part goes to the main stream's stock call."""

    stock_class = HunyuanImageAttnProcessor
    refused_arguments = ()

    def with_branch(self, capture, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb):
        query, key, value = video_text_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        num_image = hidden_states.shape[1]
        main_attention = dispatched(self, attention_mask[..., : num_image + capture.layout.caption_len])
        out = joint_branch(capture, self.block_index, query, key, value, ("image", "caption", "branch"), main_attention)
        out = out.flatten(2, 3).to(query.dtype)
        image, text = out[:, :num_image], out[:, num_image:]
        if attn.to_out is not None:  # a dual-stream block's; a single-stream block projects outside the attention
            image = attn.to_out[1](attn.to_out[0](image))
        return image, text if attn.to_add_out is None else attn.to_add_out(text)


@dataclass
class HunyuanImageCaption:
    embeds: torch.Tensor  # [1, Lc, D] Qwen rows after the template's crop, padded to caption_max_tokens
    mask: torch.Tensor  # [1, Lc]
    glyph: torch.Tensor  # [1, 128, D2] ByT5 rows of the quoted text (zeros without any)
    glyph_mask: torch.Tensor  # [1, 128]


def token_refined(transformer, timestep: torch.Tensor):
    """`text_side`'s run for a Hunyuan transformer: one caption of n real rows through its token refiner."""
    def as_caption(rows):
        return transformer.context_embedder(rows, timestep, torch.ones(rows.shape[:2], dtype=torch.bool, device=rows.device))

    return as_caption


def keys_joined(transformer, expressions, branch_len: int):
    """`rows_joined` for a Hunyuan transformer's blocks: the rows after the caption stream, and the key mask
    [B, 1, 1, S] the transformer builds over [image | caption] grown over them."""
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    keys = torch.ones(1, 1, 1, branch_len, dtype=torch.bool)
    return rows_joined(blocks, expressions, "encoder_hidden_states", alongside={"attention_mask": keys},
                       token_dims={"attention_mask": -1})


class HunyuanImageExtractor(ImageDiTExtractor):
    """Cross-attention maps of referring expressions from HunyuanImage 2.1's transformer (20 dual-stream and
    40 single-stream blocks).

    Args (besides `ImageDiTExtractor`'s; native 2048 x 2048, 32 px a token):
        caption_max_tokens: Qwen length of the denoising prompt after the template's crop (the pipeline's
            1000; the padding is masked, so it changes the velocity only by rounding).
    """

    pipeline = "HunyuanImagePipeline"
    branch_first = False
    patch_size = 1  # one token per latent cell of the 32x VAE
    checkpoint_layout = (
        "the folder of a HunyuanImage 2.1 checkpoint in the diffusers layout (model_index.json, transformer/, vae/, "
        "text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/, scheduler/, guider/) or a hub id such as "
        "hunyuanvideo-community/HunyuanImage-2.1-Diffusers")

    def __init__(self, pretrained: str, resolution: int = 2048, caption_max_tokens: int = 1000, **settings) -> None:
        super().__init__(pretrained, resolution=resolution, caption_max_tokens=caption_max_tokens, **settings)

    def check_pipeline(self, pipe) -> None:
        config = pipe.transformer.config
        if tuple(config.patch_size) != (1, 1) or config.use_meanflow or config.guidance_embeds:
            raise CheckpointError("its transformer is the refiner's or the distilled one (meanflow, guidance embedding); "
                                  "this extractor observes HunyuanImage-2.1's base model", field="pretrained")

    def prepare(self, pipe) -> None:
        pipe.tokenizer_max_length = self.caption_max_tokens  # encode_prompt pads the Qwen prompt to it
        super().prepare(pipe)

    def install_branch(self, pipe) -> list[HunyuanBranchProcessor]:
        model = pipe.transformer
        return install([*model.transformer_blocks, *model.single_transformer_blocks], HunyuanBranchProcessor)

    def expression_reader(self) -> DecoderReader:
        pipe = self.pipe
        skip = inspect.signature(pipe._get_qwen_prompt_embeds).parameters["hidden_state_skip_layer"].default
        template = PromptTemplate(pipe.prompt_template_encode, drop=pipe.prompt_template_encode_start_idx,
                                  hidden_layers=(-(skip + 1),))
        return DecoderReader(pipe.tokenizer, pipe.text_encoder, template, self.expression_max_tokens)

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> HunyuanImageCaption:
        embeds, mask, glyph, glyph_mask = self.prompt(prompt=caption)
        return HunyuanImageCaption(embeds.to(self.device, self.dtype), mask.to(self.device),
                              glyph.to(self.device, self.dtype), glyph_mask.to(self.device))

    def caption_len(self, condition: HunyuanImageCaption) -> int:
        glyph = condition.glyph.shape[1] if self.pipe.transformer.context_embedder_2 is not None else 0
        return condition.embeds.shape[1] + glyph  # the caption stream: glyph rows reordered among the Qwen rows

    @torch.inference_mode()
    def encode_image(self, image) -> Latent:
        """The inverse of the pipeline's decoding (latents / scaling_factor) on the VAE's mode; one token a latent cell."""
        return patched_latent(vae_latent(self.pipe, self.pixels(image)), self.dtype, self.patch_size)

    def timestep(self, sigma: float) -> float:
        return 1000.0 * sigma

    def text_side(self, expressions, sigma):
        return each_alone(expressions, token_refined(self.pipe.transformer, self.timestep_tensor(sigma).to(self.dtype)))

    def denoise(self, x_t, sigma, grid, condition: HunyuanImageCaption, expressions):
        def call():  # HunyuanImagePipeline.__call__: the scheduler's timestep in the latents' dtype, no guidance
            return self.pipe.transformer(
                hidden_states=x_t, timestep=self.timestep_tensor(sigma).to(self.dtype), encoder_hidden_states=condition.embeds,
                encoder_attention_mask=condition.mask, encoder_hidden_states_2=condition.glyph,
                encoder_attention_mask_2=condition.glyph_mask, return_dict=False)[0]

        if expressions is None:
            return call()
        with keys_joined(self.pipe.transformer, expressions, expressions.valid.numel()):
            return call()

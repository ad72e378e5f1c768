"""Lumina Image 2.0 (diffusers `Lumina2Pipeline`) on the template: a single-stream DiT, Gemma 2 expressions
through its context refiner.

Sigma convention: the pipeline tells the transformer 1 - t / 1000 = 1 - sigma and negates its output before
the scheduler's step: the model predicts x0 - eps (`velocity_sign = -1`). `shift: true` applies the
scheduler config's shift (the pipeline's dynamic mu, where a config asks for it, counts the latent's
channels, not its tokens: `Lumina2Pipeline.__call__` reads `latents.shape[1]`).

Text: the pipeline prefixes the prompt with its system prompt and " <Prompt Start> ", pads it to
`max_sequence_length` and reads Gemma 2's second-to-last hidden layer. Inside the transformer the caption
is embedded (`caption_embedder`), mixed among its real tokens by the `context_refiner` blocks (text RoPE
at positions (j, 0, 0)), and its real rows are joined before the image, which sits at (caption length,
row, col): one stream [caption | image] through the main `layers`. The branch runs each expression alone
through the same text side, as a caption of its tokens (`text_side`), and rides first: [branch | caption |
image], expression token j at caption token j's position (j, 0, 0). Every token of the system prompt rides
with each expression, as the pipeline reads it (special tokens the aggregator drops).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_lumina2 import Lumina2AttnProcessor2_0

from refam.extractors.branch import BranchProcessor, install, joint_branch
from refam.extractors.latents import Latent, patched_latent, vae_latent
from refam.extractors.template import ImageDiTExtractor
from refam.extractors.text_side import each_alone, rows_joined
from refam.text.decoder import DecoderReader, PromptTemplate


@dataclass
class Lumina2Caption:
    embeds: torch.Tensor  # [1, Lmax, D] padded to caption_max_tokens
    mask: torch.Tensor  # [1, Lmax]: its real tokens


class Lumina2BranchProcessor(BranchProcessor):
    """`Lumina2AttnProcessor2_0` of a main block (self-attention, grouped-query), the branch first."""

    stock_class = Lumina2AttnProcessor2_0
    refused_arguments = ("attention_mask", "base_sequence_length")  # the pipeline passes neither for one image

    def with_branch(self, capture, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                    base_sequence_length):
        head_dim = attn.to_q.out_features // attn.heads
        query, key, value = (projection(x).unflatten(-1, (-1, head_dim)) for projection, x in
                             ((attn.to_q, hidden_states), (attn.to_k, encoder_hidden_states), (attn.to_v, encoder_hidden_states)))
        query, key = (apply_rotary_emb(norm(x), image_rotary_emb, use_real=False)
                      for x, norm in ((query, attn.norm_q), (key, attn.norm_k)))
        repeat = attn.heads // key.shape[2]  # each key/value head serves `repeat` query heads in a row
        key, value = (x.unsqueeze(3).repeat(1, 1, 1, repeat, 1).flatten(2, 3) for x in (key, value))

        def main_attention(q, k, v):  # the stock call: SDPA on [B, H, S, D], no mask, the module's scale
            q, k, v = (x.transpose(1, 2) for x in (q, k, v))
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=attn.scale).transpose(1, 2)

        out = joint_branch(capture, self.block_index, query, key, value, ("branch", "caption", "image"), main_attention)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


class Lumina2Extractor(ImageDiTExtractor):
    """Cross-attention maps of referring expressions from Lumina Image 2.0's single-stream DiT (26 main blocks).

    `ImageDiTExtractor`'s settings; caption_max_tokens is the caption's padded length (the pipeline's 256),
    system prompt included; only its real rows enter the stream.
    """

    pipeline = "Lumina2Pipeline"
    velocity_sign = -1
    checkpoint_layout = (
        "the folder of a Lumina Image 2.0 checkpoint in the diffusers layout (model_index.json, transformer/, vae/, "
        "text_encoder/, tokenizer/, scheduler/) or a hub id such as Alpha-VLLM/Lumina-Image-2.0"
    )

    def __init__(self, pretrained: str, caption_max_tokens: int = 256, **settings) -> None:
        super().__init__(pretrained, caption_max_tokens=caption_max_tokens, **settings)

    def install_branch(self, pipe) -> list[Lumina2BranchProcessor]:
        return install(list(pipe.transformer.layers), Lumina2BranchProcessor)

    def expression_reader(self) -> DecoderReader:
        template = PromptTemplate(self.pipe.system_prompt + " <Prompt Start> {}", hidden_layers=(-2,))
        return DecoderReader(self.pipe.tokenizer, self.pipe.text_encoder, template, self.expression_max_tokens)

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> Lumina2Caption:
        embeds, mask, _, _ = self.prompt(caption, do_classifier_free_guidance=False, max_sequence_length=self.caption_max_tokens)
        return Lumina2Caption(embeds.to(self.device, self.dtype), mask.to(self.device))

    def caption_len(self, condition: Lumina2Caption) -> int:
        return int(condition.mask.sum())  # only the caption's real rows are in the stream

    @torch.inference_mode()
    def encode_image(self, image) -> Latent:
        """The inverse of the pipeline's decoding (latents / scaling_factor + shift_factor) on the VAE's mode;
        the transformer patchifies [1, C, h, w] itself, 2 x 2 cells a token, row-major."""
        return patched_latent(vae_latent(self.pipe, self.pixels(image)), self.dtype, 2)

    def timestep(self, sigma: float) -> float:
        return 1.0 - sigma  # the pipeline's 1 - t / 1000

    def timestep_tensor(self, sigma: float, dtype: torch.dtype = torch.float32, shape: tuple[int, ...] = (1,)) -> torch.Tensor:
        # the pipeline's own float32 arithmetic on the scheduler's t = 1000 sigma (an ulp from 1 - sigma)
        return (1 - torch.full(shape, 1000.0 * sigma, device=self.device) / 1000).to(dtype)

    def caption_rotary(self, length: int) -> torch.Tensor:
        """[1, length, ...]: the rotary rows of caption tokens 0..length-1, at positions (j, 0, 0)."""
        ids = torch.zeros(1, length, 3, dtype=torch.int32, device=self.device)
        ids[0, :, 0] = torch.arange(length, dtype=torch.int32, device=self.device)
        return self.pipe.transformer.rope_embedder._get_freqs_cis(ids)

    def text_side(self, expressions, sigma):
        transformer = self.pipe.transformer

        def as_caption(rows):  # Lumina2Transformer2DModel.forward's caption path, for one caption of n real rows
            feats, mask = transformer.time_caption_embed.caption_embedder(rows), rows.new_ones(rows.shape[:2])
            freqs = self.caption_rotary(rows.shape[1])
            for layer in transformer.context_refiner:
                feats = layer(feats, mask, freqs)
            return feats

        return each_alone(expressions, as_caption)

    def denoise(self, x_t, sigma, grid, condition: Lumina2Caption, expressions):
        transformer = self.pipe.transformer

        def call():  # Lumina2Pipeline.__call__: the padded caption and its mask, timestep 1 - t / 1000
            return transformer(hidden_states=x_t, timestep=self.timestep_tensor(sigma), encoder_hidden_states=condition.embeds,
                               encoder_attention_mask=condition.mask, return_dict=False)[0]

        if expressions is None:
            return call()
        k, length = expressions.valid.shape
        with rows_joined(transformer.layers, expressions, "hidden_states", first=True,
                         alongside={"image_rotary_emb": self.caption_rotary(length).repeat(1, k, 1)},
                         exit_module=transformer.norm_out):
            return call()

"""FLUX.2 [dev] and [klein] (diffusers `Flux2Pipeline`, `Flux2KleinPipeline`) on the template.

Sigma convention: the transformer is told sigma (the pipeline passes the scheduler's timestep / 1000;
the model embeds 1000 sigma) and predicts eps - x0. The pipelines shift noise levels with BFL's
`compute_empirical_mu(image tokens, steps)`, not FLUX.1's scheduler rule, so `NoiseAt(shift=True)`
uses that, for a schedule of `shift_steps` steps.

The joint sequence is [expressions | caption | image] in both block kinds. Text tokens get RoPE ids
(0, 0, 0, l), l their index in the caption's padded sequence: dev left-pads its 512 tokens (a
caption of T tokens sits at 512 - T .. 511), klein right-pads (0 .. T - 1). Each expression's
tokens get, through `txt_ids`, the l a caption of the same tokens would get, so the processors
rotate the whole sequence as the stock ones do. Expressions are read by the pipeline's own LLM in its
chat template (dev: Mistral 3 with the system prompt, klein: Qwen3), all templated tokens kept, the
hidden layers the pipeline stacks concatenated (`refam.text.decoder`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from diffusers.models.transformers.transformer_flux2 import Flux2AttnProcessor, Flux2ParallelSelfAttnProcessor

from refam.errors import CheckpointError, ConfigError, ExpressionError
from refam.extractors.branch import BranchProcessor, install, split_heads
from refam.extractors.flux import FluxBranchProcessor, flux_joint
from refam.extractors.latents import Latent
from refam.extractors.template import ImageDiTExtractor
from refam.extractors.trajectory import time_shift
from refam.text.decoder import DecoderReader, PromptTemplate


class Flux2BranchProcessor(FluxBranchProcessor):
    """`Flux2AttnProcessor` (double blocks): FLUX.1's computation, output views projected as they are."""

    stock_class = Flux2AttnProcessor
    contiguous_outputs = False


class Flux2SingleBranchProcessor(BranchProcessor):
    """`Flux2ParallelSelfAttnProcessor` (single blocks: one fused q, k, v and MLP projection, one fused output)."""

    stock_class = Flux2ParallelSelfAttnProcessor
    refused_arguments = ()

    def with_branch(self, capture, attn, hidden_states, attention_mask, image_rotary_emb):
        projected = attn.to_qkv_mlp_proj(hidden_states)
        qkv_dim, mlp_dim = 3 * attn.inner_dim, attn.mlp_hidden_dim * attn.mlp_mult_factor
        qkv_width = projected.shape[-1] * qkv_dim // (qkv_dim + mlp_dim)  # the stock split
        qkv, mlp = torch.split(projected, [qkv_width, projected.shape[-1] - qkv_width], dim=-1)
        q, k, v = qkv.chunk(3, dim=-1)
        query, key, value = split_heads(attn, q, attn.norm_q), split_heads(attn, k, attn.norm_k), split_heads(attn, v)
        out = flux_joint(self, capture, query, key, value, attention_mask, image_rotary_emb)
        return attn.to_out(torch.cat([out, attn.mlp_act_fn(mlp)], dim=-1))


@dataclass
class CaptionCondition:
    embeds: torch.Tensor  # [1, Lc, D] stacked LLM layers, padding included (the DiT attends to it)
    ids: torch.Tensor  # [Lc, 4] (0, 0, 0, l)
    guidance: torch.Tensor | None  # dev's guidance embedding; klein has none


class Flux2Extractor(ImageDiTExtractor):
    """Cross-attention maps of referring expressions from FLUX.2 (dev: 8 double + 48 single blocks;
    klein-4B: 5 + 20; counted double blocks first). The variant is the checkpoint's pipeline class;
    the observed forward is the conditional one (klein-base's pipeline would add CFG's unconditional).

    Args (besides `ImageDiTExtractor`'s; caption_max_tokens is the caption's padded length, template
    included, the pipelines' 512):
        guidance_scale: dev's guidance embedding (its pipeline's default 4.0); klein has none.
        shift_steps: the schedule length FLUX.2's noise-level shift assumes (`NoiseAt(shift=True)`).
        text_layers: the LLM hidden layers stacked into the text embeddings, for the caption and
            the expressions alike; None: the pipeline's default (dev (10, 20, 30), klein (9, 18, 27)).
    """

    pipeline = "DiffusionPipeline"  # its model_index.json names Flux2Pipeline (dev) or Flux2KleinPipeline
    checkpoint_layout = (
        "the folder of a FLUX.2 checkpoint in the diffusers layout (model_index.json naming Flux2Pipeline or "
        "Flux2KleinPipeline, transformer/, vae/, text_encoder/, tokenizer/, scheduler/) or a hub id such as "
        "black-forest-labs/FLUX.2-dev or black-forest-labs/FLUX.2-klein-4B"
    )

    def __init__(self, pretrained: str, guidance_scale: float = 4.0, shift_steps: int = 50,
                 text_layers: list[int] | None = None, **settings) -> None:
        super().__init__(pretrained, **settings)
        if shift_steps < 1:
            raise ConfigError(f"must be a number of steps >= 1, got {shift_steps}", field="shift_steps")
        self.guidance_scale, self.shift_steps = guidance_scale, shift_steps
        self.text_layers = None if text_layers is None else [int(layer) for layer in text_layers]

    def check_pipeline(self, pipe) -> None:
        if type(pipe).__name__ not in ("Flux2Pipeline", "Flux2KleinPipeline"):
            raise CheckpointError(f"is a {type(pipe).__name__}; give {self.checkpoint_layout}", field="pretrained")

    def install_branch(self, pipe) -> list[BranchProcessor]:
        doubles, singles = pipe.transformer.transformer_blocks, pipe.transformer.single_transformer_blocks
        return (install(list(doubles), Flux2BranchProcessor)
                + install(list(singles), lambda index: Flux2SingleBranchProcessor(len(doubles) + index)))

    @property
    def is_dev(self) -> bool:
        return type(self.pipe).__name__ == "Flux2Pipeline"

    @property
    def llm_tokenizer(self):
        return self.pipe.tokenizer.tokenizer if self.is_dev else self.pipe.tokenizer  # dev's is in a PixtralProcessor

    @property
    def stacked_layers(self) -> tuple[int, ...]:
        default = inspect.signature(self.pipe.encode_prompt).parameters["text_encoder_out_layers"].default
        return tuple(self.text_layers or default)

    def expression_reader(self) -> DecoderReader:
        pipe = self.pipe
        if self.is_dev:  # rendered as the pipeline renders a prompt; it starts with <s>, so no special tokens added
            from diffusers.pipelines.flux2.pipeline_flux2 import format_input

            text = pipe.tokenizer.apply_chat_template(format_input(["{}"], pipe.system_message), tokenize=False)[0]
        else:
            text = pipe.tokenizer.apply_chat_template([{"role": "user", "content": "{}"}], tokenize=False,
                                                      add_generation_prompt=True, enable_thinking=False)
        template = PromptTemplate(text, drop=0, hidden_layers=self.stacked_layers, add_special_tokens=not self.is_dev)
        return DecoderReader(self.llm_tokenizer, pipe.text_encoder, template, self.expression_max_tokens)

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> CaptionCondition:
        embeds, ids = self.prompt(caption, max_sequence_length=self.caption_max_tokens,
                                  text_encoder_out_layers=self.stacked_layers)
        return CaptionCondition(embeds.to(self.device, self.dtype), ids[0].to(self.device), self.guidance(self.guidance_scale))

    @torch.inference_mode()
    def encode_image(self, image) -> Latent:
        """As the pipeline encodes a reference image: the VAE's mode, 2x2 patchified, normalised by
        the VAE's batch-norm statistics, packed row-major."""
        latent = self.pipe._encode_vae_image(self.pixels(image), generator=None)
        return Latent(self.pipe._pack_latents(latent).to(self.dtype), (1, latent.shape[2], latent.shape[3]))

    def timestep(self, sigma: float) -> float:
        return sigma  # the pipeline passes timestep / 1000; the model embeds 1000 sigma

    def noise_shift(self, num_image_tokens: int):
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

        return time_shift(self.pipe.scheduler, compute_empirical_mu(num_image_tokens, self.shift_steps))

    def validate_expression(self, text: str) -> None:
        super().validate_expression(text)
        templated = len(self.tokenize(text, None))  # the tokens the branch carries, template included
        if templated > self.caption_max_tokens:
            raise ExpressionError(f"with its prompt template the expression has {templated} tokens, more than the "
                                  f"caption's {self.caption_max_tokens} (caption_max_tokens): shorten it or raise that")

    def branch_ids(self, valid: torch.Tensor) -> torch.Tensor:
        """[K L, 4] RoPE ids of the branch: expression token j at the l its caption would give it."""
        counts, length = valid.sum(dim=1, keepdim=True).cpu(), valid.shape[1]
        offset = self.caption_max_tokens - counts if self.llm_tokenizer.padding_side == "left" else torch.zeros_like(counts)
        position = torch.arange(length) + offset
        return torch.stack([torch.zeros_like(position)] * 3 + [position], dim=-1).flatten(0, 1).to(self.device)

    def denoise(self, x_t, sigma, grid, condition: CaptionCondition, expressions):
        ids = condition.ids
        if expressions is not None:
            ids = torch.cat([self.branch_ids(expressions.valid), ids])
        img_ids = self.pipe._prepare_latent_ids(torch.empty(1, 1, *grid[1:])).to(self.device)  # (0, row, col, 0)
        return self.pipe.transformer(hidden_states=x_t, encoder_hidden_states=self.join_text(condition.embeds, expressions),
                                     timestep=self.timestep_tensor(sigma, self.dtype), img_ids=img_ids, txt_ids=ids,
                                     guidance=condition.guidance, return_dict=False)[0]

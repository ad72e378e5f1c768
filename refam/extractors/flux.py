"""FLUX.1 (diffusers `FluxPipeline` layout) observed through the expression branch."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from PIL import Image

from refam.errors import ConfigError
from refam.extractors.base import sample_seed, select_blocks
from refam.extractors.capture import REPRESENTATIONS, AttentionCapture, BranchLayout, install_branch_processors
from refam.extractors.pipeline import PipelineExtractor
from refam.extractors.trajectory import NoiseAt, Trajectory, TrajectoryContext, drive
from refam.text.expressions import EncodedExpressions, ExpressionEncoder, T5Expressions
from refam.types import TokenMaps

log = logging.getLogger(__name__)



@dataclass
class CaptionCondition:
    """What the denoising stream is conditioned on."""

    embeds: torch.Tensor  # [1, Lc, D] T5
    pooled: torch.Tensor  # [1, P] CLIP
    guidance: torch.Tensor | None


# what `model.extractor.init_args.pretrained` must hold, for the error a wrong path gives
CHECKPOINT_LAYOUT = (
    "the folder of a FLUX.1 checkpoint in the diffusers layout (model_index.json, transformer/, vae/, "
    "text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/) or a hub id such as black-forest-labs/FLUX.1-dev")


class FluxExtractor(T5Expressions, PipelineExtractor):
    """Cross-attention maps of referring expressions from a FLUX transformer.

    Args:
        pretrained: folder in the diffusers FLUX layout, or a hub id (downloads).
        torch_dtype: "bfloat16" (the released weights), "float16" or "float32".
        trajectory: how the observed latent is made; default `NoiseAt(timestep=750)`.
        resolution: the image is resized to resolution x resolution (ConceptAttention's
            convention), or to about resolution^2 pixels at its aspect ratio with `keep_aspect`.
        blocks: blocks whose maps are averaged, counted over double then single blocks
            (FLUX.1: 19 + 38); None = all (the paper's default), a list of indices, or a float
            fraction of the earliest blocks to filter out.
        softmax_stage: "after_mean" (average logits over heads and blocks, then the aggregator's
            softmax across tokens; default) or "per_head" (softmax per head and block, then average;
            with representation "attention_output": softmax per block, ConceptAttention's order).
        representation: the space the maps are read in (the paper's Table 8).
            "cross_attention" (default): image query . expression key / sqrt(d) after the block's
            QK norm and RoPE, averaged over heads. "attention_output" (ConceptAttention's output
            space, its original BFL code): image attention output . expression attention output,
            both taken before the output projection with heads concatenated (a sum over heads),
            unscaled; the image outputs are the denoising stream's, the expression outputs the
            branch's, from the same block.
        caption_max_tokens: T5 length of the denoising prompt (FLUX.1-dev 512, schnell 256).
        pooled_prompt: what CLIP's pooled vector encodes: "caption" (FLUX's pipeline) or "empty"
            (for models trained with an empty CLIP prompt, such as refam-shapes).
        expression_max_tokens: longest expression (with magnets) accepted, in T5 tokens.
        guidance_scale: guidance embedding for guidance-distilled models (FLUX.1-dev); ignored otherwise.
        seed: base seed of the noise; each sample's noise derives from (seed, sample id).
        offload: where the modules live (refam.extractors.offload): "none" (all on the device),
            "text_encoders" (T5 and CLIP live and run on the CPU), "model" (T5 and the transformer
            take turns on the device) or "group" (block-level group offloading with prefetch:
            fits FLUX.1-dev on a 24 GB card).
        local_files_only: never contact a hub, even for a hub id.
    """

    checkpoint_layout = CHECKPOINT_LAYOUT

    def __init__(
        self,
        pretrained: str,
        torch_dtype: str = "bfloat16",
        trajectory: Trajectory | None = None,
        resolution: int = 1024,
        keep_aspect: bool = False,
        blocks: list[int] | float | None = None,
        softmax_stage: str = "after_mean",
        representation: str = "cross_attention",
        caption_max_tokens: int = 512,
        pooled_prompt: str = "caption",
        expression_max_tokens: int = 128,
        guidance_scale: float = 3.5,
        seed: int = 0,
        offload: str = "none",
        local_files_only: bool = False,
    ) -> None:
        super().__init__(pretrained, torch_dtype, offload, local_files_only)
        if pooled_prompt not in ("caption", "empty"):
            raise ConfigError(f"model.extractor.init_args.pooled_prompt must be 'caption' or 'empty', got {pooled_prompt!r}")
        if resolution % 16:
            raise ConfigError(f"model.extractor.init_args.resolution must be a multiple of 16, got {resolution}")
        if representation not in REPRESENTATIONS:
            raise ConfigError(
                f"model.extractor.init_args.representation must be one of {list(REPRESENTATIONS)}, got {representation!r}"
            )
        self.trajectory = trajectory if trajectory is not None else NoiseAt(750.0)
        self.resolution = resolution
        self.keep_aspect = keep_aspect
        self.blocks = blocks
        self.softmax_stage = softmax_stage
        self.representation = representation
        self.caption_max_tokens = caption_max_tokens
        self.pooled_prompt = pooled_prompt
        self.expression_max_tokens = expression_max_tokens
        self.guidance_scale = guidance_scale
        self.seed = seed

    def map_settings(self) -> dict:
        from refam.extractors.cache import describe

        return {
            "resolution": self.resolution,
            "keep_aspect": self.keep_aspect,
            "trajectory": describe(self.trajectory),
            "seed": self.seed,
            "blocks": self.blocks,
            "softmax_stage": self.softmax_stage,
            "representation": self.representation,
            "caption_max_tokens": self.caption_max_tokens,
            "pooled_prompt": self.pooled_prompt,
            "expression_max_tokens": self.expression_max_tokens,
            "guidance_scale": self.guidance_scale,
        }

    # ---------------------------------------------------------------- the pipeline
    def pipeline_class(self) -> type:
        from diffusers import FluxPipeline

        return FluxPipeline

    def prepare(self, pipe) -> None:
        self.processors = install_branch_processors(pipe.transformer)

    def placement_modules(self, pipe):
        return [pipe.text_encoder, pipe.text_encoder_2], pipe.transformer, [pipe.vae]

    @property
    def num_blocks(self) -> int:
        t = self.pipe.transformer
        return len(t.transformer_blocks) + len(t.single_transformer_blocks)

    # ---------------------------------------------------------------- encoders
    @property
    def expression_encoder(self) -> ExpressionEncoder:
        """FLUX reads expressions with its T5 (text_encoder_2 / tokenizer_2)."""
        return ExpressionEncoder(self.pipe.tokenizer_2, self.pipe.text_encoder_2, self.expression_max_tokens)

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> CaptionCondition:
        self.placement.enter("text")
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=caption if self.pooled_prompt == "caption" else "",
            prompt_2=caption,
            device=self.placement.text_device,
            max_sequence_length=self.caption_max_tokens,
        )
        guidance = None
        if self.pipe.transformer.config.guidance_embeds:
            guidance = torch.full((1,), self.guidance_scale, device=self.device, dtype=torch.float32)
        return CaptionCondition(
            embeds=embeds.to(self.device, self.dtype), pooled=pooled.to(self.device, self.dtype), guidance=guidance
        )

    def image_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) the image is resized to: multiples of 16 (VAE factor 8 x 2x2 packing)."""
        multiple = self.pipe.vae_scale_factor * 2
        if not self.keep_aspect:
            return self.resolution, self.resolution
        scale = (self.resolution**2 / (width * height)) ** 0.5
        return (max(multiple, round(height * scale / multiple) * multiple), max(multiple, round(width * scale / multiple) * multiple))

    @torch.inference_mode()
    def encode_image(self, image: Image.Image) -> tuple[torch.Tensor, int, int]:
        """Packed clean latent [1, N, C*4] and the token grid (rows, columns)."""
        height, width = self.image_size(*image.size)
        pixels = self.pipe.image_processor.preprocess(image.convert("RGB"), height=height, width=width)
        vae = self.pipe.vae
        latent = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.mode()
        latent = (latent - vae.config.shift_factor) * vae.config.scaling_factor
        _, channels, lh, lw = latent.shape
        packed = self.pipe._pack_latents(latent, 1, channels, lh, lw).to(self.dtype)
        return packed, lh // 2, lw // 2

    # ---------------------------------------------------------------- forward
    @torch.inference_mode()
    def forward(
        self,
        x_t: torch.Tensor,
        sigma: float,
        grid: tuple[int, int],
        condition: CaptionCondition,
        expressions: EncodedExpressions | None = None,
        capture: AttentionCapture | None = None,
    ) -> torch.Tensor:
        """One transformer forward; with `expressions` and `capture`, the branch rides along."""
        text = condition.embeds
        if expressions is not None:  # the branch goes first: see ExpressionBranchProcessor
            text = torch.cat([expressions.embeds.reshape(1, -1, text.shape[-1]).to(text.dtype), text], dim=1)
        self.placement.enter("denoise")
        img_ids = self.pipe._prepare_latent_image_ids(1, grid[0], grid[1], self.device, self.dtype)
        txt_ids = torch.zeros(text.shape[1], 3, device=self.device, dtype=self.dtype)
        for processor in self.processors:
            processor.capture = capture
        try:
            return self.pipe.transformer(
                hidden_states=x_t,
                encoder_hidden_states=text,
                pooled_projections=condition.pooled,
                timestep=torch.full((1,), sigma, device=self.device, dtype=self.dtype),
                img_ids=img_ids,
                txt_ids=txt_ids,
                guidance=condition.guidance,
                return_dict=False,
            )[0]
        finally:
            for processor in self.processors:
                processor.capture = None

    def new_capture(self, expressions: EncodedExpressions, caption_len: int, grid: tuple[int, int]) -> AttentionCapture:
        return AttentionCapture(
            BranchLayout(caption_len=caption_len, key_valid=expressions.valid),
            num_image_tokens=grid[0] * grid[1],
            selected_blocks=select_blocks(self.num_blocks, self.blocks),
            softmax_stage=self.softmax_stage,
            device=self.device,
            representation=self.representation,
        )

    @torch.inference_mode()
    def extract(self, image, caption, expressions, sample_id, magnet_vectors=None) -> TokenMaps:
        if self.pipe is None:
            raise RuntimeError("FluxExtractor.setup(device) must run before extract()")
        encoded = self.encode_expressions(expressions, magnet_vectors)
        condition = self.encode_caption(caption)
        x0, rows, cols = self.encode_image(image)
        capture = self.new_capture(encoded, condition.embeds.shape[1], (rows, cols))
        context = TrajectoryContext(
            velocity=lambda x, s: self.forward(x, s, (rows, cols), condition),
            image_seq_len=rows * cols,
            scheduler_config=dict(self.pipe.scheduler.config),
        )
        generator = torch.Generator("cpu").manual_seed(sample_seed(self.seed, sample_id))
        # the observed forward's velocity goes back to the trajectory (see `Trajectory.states`)
        drive(
            self.trajectory.states(x0, generator, context),
            lambda x_t, sigma: self.forward(x_t, sigma, (rows, cols), condition, encoded, capture),
        )
        scores, text_mass = capture.result()
        k, length = encoded.valid.shape
        return TokenMaps(
            scores=scores.reshape(k, length, rows, cols).cpu(),
            valid=encoded.valid.cpu(),
            text_mass=text_mass.cpu(),
            tokens=encoded.tokens,
            kind="logits" if self.softmax_stage == "after_mean" else "probs",
        )

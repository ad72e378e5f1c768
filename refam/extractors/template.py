"""The template every diffusers DiT backbone fills in: the expression branch's lifecycle, written once.

`DiTExtractor.extract` runs the same steps for every backbone: read the K expressions (the
backbone's `ExpressionReader`), encode the caption, encode the image into a latent and its token
grid, walk the trajectory (`refam.extractors.trajectory`, in sigma, with velocities eps - x0),
observe each state with one forward while the branch processors capture, and return `TokenMaps`.
`VideoDiTExtractor` does the same per clip of frames. A backbone writes only what differs:

- `pipeline` (its diffusers pipeline class, by name) and `install_branch` (its `BranchProcessor`
  on every block; the kernels in `refam.extractors.branch` do the rest);
- `expression_reader` (its tokenizer and text encoder), `encode_caption`, `encode_image`
  (or `encode_clip`) -> `Latent`;
- `timestep(sigma)`, the unit its denoiser is told, and `velocity_sign`, the sign of its output;
- `denoise`, one call of its transformer with the branch's embeddings joined to the text
  (`join_text`);
- `branch_first`, whether the branch's tokens go before the caption's in the text stream or
  after, as its processors hand the joint sequence to the kernel;
- `text_side`, where the model mixes text tokens before its blocks (a context or token refiner):
  each expression through those modules alone.

A backbone's constructor arguments are recorded when it is built (`refam.config.Configurable`), and
the map cache's key holds them all: a new setting needs no listing anywhere.

Defaults cover what most pipelines share: `placement_modules` (every `text_encoder*`, the
`transformer`, the `vae`), `encode_caption` (the pipeline's own `encode_prompt`), `branch_layout`
(the caption's length from its embeddings).

Units: every config speaks sigma, the noise level of x_t = (1 - sigma) x0 + sigma eps.
"""

from __future__ import annotations

import abc
import math
from contextlib import contextmanager
from typing import ClassVar

import torch
from PIL import Image

from refam.errors import ConfigError
from refam.extractors.base import sample_seed, select_blocks
from refam.extractors.branch import BranchProcessor
from refam.extractors.capture import REPRESENTATIONS, SOFTMAX_STAGES, AttentionCapture, BranchLayout
from refam.extractors.latents import Latent, resize_to
from refam.extractors.pipeline import PipelineExtractor
from refam.extractors.trajectory import NoiseAt, Shift, Trajectory, TrajectoryContext, drive, no_shift_error, scheduler_shift
from refam.text.reader import TEMPLATE_TOKENS, EncodedExpressions, ExpressionReader
from refam.text.t5 import T5Reader
from refam.types import MagnetVectors, TokenInfo, TokenMaps


class DiTExtractor(PipelineExtractor):
    """A diffusers DiT observed through the expression branch (see the module docstring).

    Args (shared by every backbone; each adds its own):
        pretrained: a folder in the backbone's diffusers layout, or a hub id (downloads).
        torch_dtype: "bfloat16" (released weights), "float16" or "float32".
        trajectory: how the observed states are made, in sigma (`NoiseAt(sigma)`, `RFInversion`);
            default `NoiseAt(default_sigma)`.
        blocks: blocks whose maps are averaged (all by default), a list of indices, or a float
            fraction of the earliest blocks to filter out.
        softmax_stage: "after_mean" (average logits over heads and blocks, then the aggregator's
            softmax across tokens) or "per_head" (softmax per head and block, then average).
        representation: "cross_attention" (image query . expression key / sqrt(d), after the
            block's norms and RoPE, mean over heads) or "attention_output" (ConceptAttention's
            output space; joint-attention backbones only).
        caption_max_tokens: the denoising prompt's length in the text encoder's tokens, as the
            backbone's pipeline pads or cuts it (each backbone's default is its pipeline's).
        expression_max_tokens: longest expression (with magnets) accepted, in the reader's tokens.
        template_tokens: whether a prompt template's tokens around the expression (an LLM's system
            prompt and role markers, `TokenInfo.template`) enter the per-patch softmax across
            tokens: "exclude" (the paper's softmax, over the expression's own tokens, its magnets
            and its end token) or "include". They ride in the branch either way; encoder-only
            readers (T5) have none.
        seed: base seed of the noise; each sample's noise derives from (seed, sample id).
        offload: where the modules live (`refam.extractors.offload`).
        local_files_only: never contact a hub, even for a hub id.
        variant: the weight files' variant to load (diffusers `variant`, e.g. "bf16" for
            genmo/mochi-1-preview, "fp16" for checkpoints that ship one); None: the plain files.
    """

    pipeline: ClassVar[str]  # the diffusers pipeline class `pretrained` loads with, e.g. "FluxPipeline"
    attention_kind: ClassVar[str] = "joint"  # or "cross": which kernel its processors use
    default_sigma: ClassVar[float] = 0.75  # the paper's FLUX "timestep 750"
    velocity_sign: ClassVar[int] = 1  # +1: the denoiser predicts eps - x0; -1: x0 - eps
    # whether the branch's tokens go before the caption's in the text stream, so that the joint sequence
    # is [branch | caption | image] (FLUX, Qwen-Image, CogVideoX), or after: [image | caption | branch]
    # (SD3, Mochi; Wan's cross-attention keys are [caption | branch])
    branch_first: ClassVar[bool] = True
    # whether the model reads text block-causally (Qwen-Image 2.1: a caption token sees the caption's earlier
    # tokens, never the image), so that each expression is read as its caption would be: its own tokens up to
    # each one, not the image (`BranchLayout.causal`); the maps stay the image queries over its keys
    causal_text: ClassVar[bool] = False

    def __init__(
        self,
        pretrained: str,
        torch_dtype: str = "bfloat16",
        trajectory: Trajectory | None = None,
        blocks: list[int] | float | None = None,
        softmax_stage: str = "after_mean",
        representation: str = "cross_attention",
        caption_max_tokens: int = 512,
        expression_max_tokens: int = 128,
        template_tokens: str = "exclude",
        seed: int = 0,
        offload: str = "none",
        local_files_only: bool = False,
        variant: str | None = None,
    ) -> None:
        super().__init__(pretrained, torch_dtype, offload, local_files_only)
        self.variant = variant
        if caption_max_tokens < 1:
            raise ConfigError(f"must be a positive token count, got {caption_max_tokens}", field="caption_max_tokens")
        if softmax_stage not in SOFTMAX_STAGES:
            raise ConfigError(f"must be one of {list(SOFTMAX_STAGES)}, got {softmax_stage!r}", field="softmax_stage")
        if representation not in REPRESENTATIONS:
            raise ConfigError(f"must be one of {list(REPRESENTATIONS)}, got {representation!r}", field="representation")
        if template_tokens not in TEMPLATE_TOKENS:
            raise ConfigError(f"must be one of {list(TEMPLATE_TOKENS)}, got {template_tokens!r}", field="template_tokens")
        if representation == "attention_output" and self.attention_kind == "cross":
            raise ConfigError(
                f"{type(self).__name__} is a cross-attention model; its expression tokens have no queries, so no "
                "attention output: use 'cross_attention'", field="representation")
        self.trajectory = trajectory if trajectory is not None else NoiseAt(self.default_sigma)
        self.blocks, self.softmax_stage, self.representation = blocks, softmax_stage, representation
        self.caption_max_tokens, self.expression_max_tokens, self.seed = caption_max_tokens, expression_max_tokens, seed
        self.template_tokens = template_tokens
        self.processors: list[BranchProcessor] = []
        self.reader: ExpressionReader | None = None

    # ---------------------------------------------------------------- what a backbone says
    def pipeline_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.pipeline)

    def load_kwargs(self) -> dict:
        return {} if self.variant is None else {"variant": self.variant}

    def placement_modules(self, pipe):
        """(every `text_encoder*` component, the `transformer`, [the `vae`]) for `offload`."""
        encoders = [module for name, module in sorted(pipe.components.items())
                    if name.startswith("text_encoder") and module is not None]
        return encoders, pipe.transformer, [pipe.vae]

    @abc.abstractmethod
    def install_branch(self, pipe) -> list[BranchProcessor]:
        """Put a `BranchProcessor` on every block of `pipe`'s denoiser, numbered in block order."""

    reader_components: ClassVar[tuple[str, str]] = ("tokenizer", "text_encoder")

    def expression_reader(self) -> ExpressionReader:
        """The tokenizer and text encoder the branch reads expressions with: by default an
        encoder-only model (T5, UMT5) named by `reader_components` in the pipeline."""
        tokenizer, encoder = (getattr(self.pipe, name) for name in self.reader_components)
        return T5Reader(tokenizer, encoder, self.expression_max_tokens)

    @torch.inference_mode()
    def encode_caption(self, caption: str):
        """What the denoising stream is conditioned on (any object `denoise` and `branch_layout`
        read); by default the first output of the pipeline's `encode_prompt`, [1, Lc, D], for
        pipelines with one text encoder and no pooled vector (Wan, CogVideoX)."""
        embeds = self.prompt(prompt=caption, do_classifier_free_guidance=False, max_sequence_length=self.caption_max_tokens)[0]
        return embeds.to(self.device, self.dtype)

    @abc.abstractmethod
    def encode_image(self, image: Image.Image) -> Latent:
        """The clean latent of one image and its token grid."""

    @abc.abstractmethod
    def timestep(self, sigma: float) -> float:
        """The timestep the denoiser is told for noise level sigma (FLUX: sigma; SD3: 1000 sigma; ...)."""

    @abc.abstractmethod
    def denoise(self, x_t: torch.Tensor, sigma: float, grid: tuple[int, int, int], condition,
                expressions: EncodedExpressions | None) -> torch.Tensor:
        """One transformer call as the stock pipeline makes it, its raw output; the expressions'
        embeddings (or None) join the text stream where the processors expect them (`join_text`)."""

    def text_side(self, expressions: EncodedExpressions, sigma: float) -> EncodedExpressions:
        """The expressions' rows as the denoiser's blocks are to receive them, prepared before each forward
        (`forward` calls it; `denoise` gets the result). By default the reader's rows: a model whose text
        enters the blocks through a per-token projection makes of each row what it makes of a caption's.
        A model whose text-side modules mix text tokens among themselves before the blocks (Lumina 2's and
        Z-Image's context refiner, HunyuanVideo's timestep-conditioned token refiner) overrides it to run
        each expression alone through those modules, as the model runs a caption of the same tokens
        (`refam.extractors.text_side.each_alone`), so that no expression mixes with the caption or
        another expression there and the caption's own pass stays the stock one; its `denoise` then
        joins the rows where the blocks begin (`refam.extractors.text_side.rows_joined`)."""
        return expressions

    def join_text(self, text: torch.Tensor, expressions: EncodedExpressions | None) -> torch.Tensor:
        """The text stream [1, Lc, D] with the K expressions' tokens [1, K L, D] joined before or after it
        (`branch_first`)."""
        if expressions is None:
            return text
        branch = expressions.embeds.reshape(1, -1, expressions.embeds.shape[-1]).to(text.dtype)
        return torch.cat([branch, text] if self.branch_first else [text, branch], dim=1)

    def timestep_tensor(self, sigma: float, dtype: torch.dtype = torch.float32, shape: tuple[int, ...] = (1,)) -> torch.Tensor:
        """`timestep(sigma)` as the pipeline hands it to its transformer."""
        return torch.full(shape, self.timestep(sigma), device=self.device, dtype=dtype)

    def guidance(self, scale: float) -> torch.Tensor | None:
        """The guidance scale a guidance-distilled transformer embeds (`guidance_embeds`), as FLUX.1-dev's,
        FLUX.2-dev's and Qwen-Image's pipelines pass it: the scale itself, [1] in float32; None for a
        transformer without that embedding. (HunyuanVideo's and HunyuanImage's pipelines pass 1000 times
        the scale in the transformer's dtype: not this.)"""
        if not self.pipe.transformer.config.get("guidance_embeds", False):
            return None
        return torch.full((1,), scale, device=self.device, dtype=torch.float32)

    def caption_len(self, condition) -> int:
        """How many caption tokens the processors see: by default the length of the condition's `embeds`,
        or of the condition itself, [1, Lc, D]."""
        return getattr(condition, "embeds", condition).shape[1]

    def branch_layout(self, encoded: EncodedExpressions, condition) -> BranchLayout:
        """The caption's length (`caption_len`), the expressions' carried and scored tokens (`template_tokens`),
        the joint sequence's order (`branch_first`) and what an expression sees (`causal_text`)."""
        order = ("branch", "caption", "image") if self.branch_first else ("image", "caption", "branch")
        return BranchLayout(caption_len=self.caption_len(condition), key_valid=encoded.valid, key_order=order,
                            key_scored=encoded.scored(self.template_tokens), causal=self.causal_text)

    def check_pipeline(self, pipe) -> None:
        """Refuse a pipeline this backbone cannot observe (raise CheckpointError), before installing."""

    def check_trajectory(self, trajectory: Trajectory) -> None:
        """Refuse, by this backbone's name, a trajectory it cannot serve (ConfigError on the
        trajectory's field); by default one that shifts noise levels on a backbone with no shift."""
        if trajectory.shift and self.noise_shift(1) is None:
            raise no_shift_error(type(self).__name__).within("trajectory")

    def noise_shift(self, num_image_tokens: int) -> Shift | None:
        """The shift the backbone's pipeline applies to noise levels at this many image tokens (its
        scheduler's, by default: none on a variance-preserving one); None when its pipeline schedules with none."""
        return scheduler_shift(self.pipe.scheduler, num_image_tokens)

    # ---------------------------------------------------------------- the template
    def prepare(self, pipe) -> None:
        self.check_pipeline(pipe)
        self.pipe = pipe  # noise_shift reads its scheduler
        try:
            self.check_trajectory(self.trajectory)
        except ConfigError:
            self.pipe = None
            raise
        self.processors = self.install_branch(pipe)
        self.reader = self.expression_reader()  # once per pipeline: FLUX.2's renders a chat template

    @property
    def num_blocks(self) -> int:
        return len(self.processors)

    def prompt(self, *args, **kwargs):
        """The pipeline's own `encode_prompt(*args, **kwargs)`, run where the text encoders live."""
        self.placement.enter("text")
        return self.pipe.encode_prompt(*args, device=self.placement.text_device, **kwargs)

    def tokenize(self, text: str, magnet_start: int | None) -> list[TokenInfo]:
        return self.reader.tokenize([(text, magnet_start)])[0]

    def validate_expression(self, text: str) -> None:
        self.reader.validate(text)

    def encode_expressions(
        self, expressions: list[tuple[str, int | None]], magnet_vectors: MagnetVectors | None = None
    ) -> EncodedExpressions:
        """K expressions in one batch of the reader; callers validate first (the module does, per expression)."""
        self.placement.enter("text")
        return self.reader.encode(expressions, self.device, self.dtype, magnet_vectors)

    @contextmanager
    def capturing(self, capture: AttentionCapture | None):
        for processor in self.processors:
            processor.capture = capture
        try:
            yield
        finally:
            for processor in self.processors:
                processor.capture = None

    @torch.inference_mode()
    def forward(self, x_t: torch.Tensor, sigma: float, grid: tuple[int, int, int], condition,
                expressions: EncodedExpressions | None = None, capture: AttentionCapture | None = None) -> torch.Tensor:
        """The denoiser's raw output at noise level sigma; with `expressions` and `capture` the branch rides along."""
        self.placement.enter("denoise")
        expressions = None if expressions is None else self.text_side(expressions, sigma)
        with self.capturing(capture):
            return self.denoise(x_t, sigma, grid, condition, expressions)

    def new_capture(self, expressions: EncodedExpressions, condition, grid: tuple[int, int, int],
                    blocks: list[int] | float | None = None) -> AttentionCapture:
        """A capture of the configured `blocks`, or of `blocks` given for this call."""
        return AttentionCapture(
            self.branch_layout(expressions, condition),
            num_image_tokens=math.prod(grid),
            selected_blocks=select_blocks(self.num_blocks, self.blocks if blocks is None else blocks),
            softmax_stage=self.softmax_stage,
            device=self.device,
            representation=self.representation,
            dtype=self.dtype,
        )

    def observe(self, latent: Latent, condition, encoded: EncodedExpressions, generator: torch.Generator,
                blocks: list[int] | float | None = None, trajectory: Trajectory | None = None) -> AttentionCapture:
        """Walk the trajectory (the configured one or the given `trajectory`) from the latent,
        capturing (the configured or the given `blocks`) at every state it yields."""
        capture = self.new_capture(encoded, condition, latent.grid, blocks)
        trajectory = self.trajectory if trajectory is None else trajectory
        sign = self.velocity_sign

        def velocity(x_t, sigma, expressions=None, capture=None):
            out = self.forward(x_t, sigma, latent.grid, condition, expressions, capture)
            return out if sign == 1 else -out

        context = TrajectoryContext(
            velocity=velocity, shift=self.noise_shift(latent.num_tokens), backbone=type(self).__name__
        )
        # the observed forward's velocity goes back to the trajectory (see `Trajectory.states`)
        drive(trajectory.states(latent.x0, generator, context), lambda x_t, sigma: velocity(x_t, sigma, encoded, capture))
        return capture

    def generator(self, sample_id: str) -> torch.Generator:
        return torch.Generator("cpu").manual_seed(sample_seed(self.seed, sample_id))

    def require_setup(self, trajectory: Trajectory | None = None) -> None:
        """Refuse to extract before `setup`, or with a per-call `trajectory` this backbone cannot serve
        (checked as its own is at setup)."""
        if self.pipe is None:
            raise RuntimeError(f"{type(self).__name__}.setup(device) must run before extracting")
        if trajectory is not None:
            self.check_trajectory(trajectory)

    @torch.inference_mode()
    def extract(self, image, caption, expressions, sample_id, magnet_vectors=None, blocks=None,
                trajectory=None) -> TokenMaps:
        """See `Extractor.extract`; `blocks` and `trajectory`, given, are this call's instead of the
        extractor's own, which stay untouched (a pipeline's per-call `Settings` pass them)."""
        self.require_setup(trajectory)
        encoded = self.encode_expressions(expressions, magnet_vectors)
        condition = self.encode_caption(caption)
        latent = self.encode_image(image)
        capture = self.observe(latent, condition, encoded, self.generator(sample_id), blocks, trajectory)
        scores, text_mass = capture.result()
        k, length = encoded.valid.shape
        return TokenMaps(
            scores=scores.reshape(k, length, *latent.grid[1:]).cpu() if latent.grid[0] == 1
            else scores.reshape(k, length, *latent.grid).cpu(),
            valid=encoded.scored(self.template_tokens).cpu(),
            text_mass=text_mass.cpu(),
            tokens=encoded.tokens,
            kind=self.maps_kind,
        )

    @property
    def maps_kind(self) -> str:
        return "logits" if self.softmax_stage == "after_mean" else "probs"


class ImageDiTExtractor(DiTExtractor):
    """An image DiT: images resized to `resolution` x `resolution` (ConceptAttention's convention), or
    to about resolution^2 pixels at their aspect ratio with `keep_aspect`, in multiples of the VAE's
    factor times `patch_size`.

    Args (besides DiTExtractor's): resolution, keep_aspect.
    """

    patch_size: ClassVar[int] = 2

    def __init__(self, pretrained: str, resolution: int = 1024, keep_aspect: bool = False, **settings) -> None:
        super().__init__(pretrained, **settings)
        if resolution <= 0 or resolution % 16:
            raise ConfigError(f"must be a positive multiple of 16, got {resolution}", field="resolution")
        self.resolution, self.keep_aspect = resolution, keep_aspect

    def image_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) an image of this size is resized to."""
        return resize_to(width, height, self.resolution, self.keep_aspect, self.pipe.vae_scale_factor * self.patch_size)

    def pixels(self, image: Image.Image, contiguous: bool = False) -> torch.Tensor:
        """[1, 3, H, W]: the image resized (`image_size`) and scaled as the pipeline's `image_processor`
        does, on the device in the VAE's dtype; `contiguous` as a control pipeline's `prepare_image` hands
        them on (its repeat copies them: a VAE's convolutions round otherwise on the processor's strided tensor)."""
        height, width = self.image_size(*image.size)
        pixels = self.pipe.image_processor.preprocess(image.convert("RGB"), height=height, width=width)
        pixels = pixels.to(self.device, self.pipe.vae.dtype)
        return pixels.contiguous() if contiguous else pixels

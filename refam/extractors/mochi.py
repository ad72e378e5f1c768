"""Mochi 1 (diffusers `MochiPipeline` layout) observed through the expression branch, on videos.

Noise level: the "timestep 990" of the paper
--------------------------------------------
This extractor takes the noise level as an EXPLICIT `sigma`: the observed latent is
x_t = (1 - sigma) x0 + sigma eps (sigma = 1 pure noise, 0 clean), whatever convention a timestep
number is read in. Mochi's transformer is told the timestep tau = 1000 (1 - sigma), the REVERSE
of FLUX's tau = 1000 sigma. Verified in diffusers 0.42.1:

- `pipelines/mochi/pipeline_mochi.py`: `sigmas = linear_quadratic_schedule(num_inference_steps,
  0.025)` gives noise levels from 1.0 down to about 0 (`sigma_schedule = [1.0 - x for x in ...]`),
  passed to `retrieve_timesteps(self.scheduler, ..., sigmas)`; the loop calls
  `self.transformer(hidden_states=latents, ..., timestep=t.expand(B))` with the scheduler's `t`;
- `schedulers/scheduling_flow_match_euler_discrete.py::set_timesteps`, with Mochi's scheduler
  config `invert_sigmas=True` (and shift 1): `sigmas = 1.0 - sigmas;
  timesteps = sigmas * self.config.num_train_timesteps`, so t = 1000 (1 - noise level): the first
  step (pure noise, level 1) is timestep 0, the last (almost clean) is near 1000;
- the pipeline itself notes "Mochi uses reversed timesteps" (`self._current_timestep = 1000 - t`),
  and genmo's original model embeds `1 - sigma`.

So the paper's "timestep 990" read in Mochi's own convention is sigma = 0.01 (x_t = 0.99 x0 +
0.01 eps, almost clean; the default here), and read in FLUX's convention (tau = 1000 sigma, as in
the paper's FLUX "750" = sigma 0.75) it is sigma = 0.99 (almost pure noise). The paper does not
settle which (notes/reference-algorithms.md, open question 10): set `sigma: 0.99` for the other
reading. The timestep is passed in float32 (1000 (1 - 0.01) = 990 exactly; the pipeline's cast to
bfloat16 would make it 992).

The transformer's output follows Mochi's sign: with `invert_sigmas` the scheduler steps
x <- x + (s_next - s) v with s = 1 - sigma rising, so v points from noise to data (x0 - eps), the
opposite of FLUX's eps - x0.

Why a plain `sigma` and not a `Trajectory`: the paper observes one noised state of the video; the
trajectory classes (`NoiseAt`, `RFInversion`) are written in FLUX's conventions (timestep =
1000 sigma, FLUX's resolution shift from its scheduler config, velocity eps - x0 on packed
[1, N, C] latents), so reusing them would need an adapter that flips the sign and the timestep and
would make "timestep" in a config mean two things. One explicit float says what it is.

Video frames and latent frames
------------------------------
The VAE compresses time by 6 with causal convolutions (and causal attention): a clip of 6k + 1
frames gives k + 1 latent frames; pixel frame 0 alone makes latent 0 and frames 6j - 5 .. 6j make
latent j (checked on AutoencoderKLMochi: changing frame f changes no latent before
(f + 5) // 6). Each pass encodes one clip of `clip_frames` (= 6k + 1) consecutive frames, read
lazily; `windows="first"` encodes the first clip only (the paper localises in the first frame),
`"all"` consecutive clips covering the whole video. A last (or only) clip shorter than
`clip_frames` is padded, by repeating its last frame, to the fewest 6k + 1 frames that hold it (the
padded frames only share the clip's last latent). Clip c's latents follow clip c - 1's in the
returned maps; `TokenMaps.frame_to_latent[i]` names the latent frame of video frame i, for the
frames that were encoded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from PIL import Image

from refam.errors import CheckpointError, ConfigError
from refam.extractors.base import PRETRAINED_KEY, MagnetVectors, sample_seed, select_blocks
from refam.extractors.capture import REPRESENTATIONS, SOFTMAX_STAGES, AttentionCapture, BranchLayout
from refam.extractors.mochi_capture import MochiBranchProcessor, install_mochi_branch
from refam.extractors.pipeline import PipelineExtractor
from refam.extractors.trajectory import standard_noise
from refam.text.expressions import EncodedExpressions, ExpressionEncoder, T5Expressions
from refam.types import TokenMaps

WINDOWS = ("first", "all")
TEMPORAL_COMPRESSION = 6  # AutoencoderKLMochi: temporal_expansions (1, 2, 3)


# ------------------------------------------------------------------ noise level
def mochi_timestep(sigma: float) -> float:
    """The timestep Mochi's transformer is told for noise level sigma: 1000 (1 - sigma)."""
    return 1000.0 * (1.0 - sigma)


def sigma_of_mochi_timestep(timestep: float) -> float:
    """The noise level of a timestep in Mochi's convention (990 -> 0.01)."""
    return 1.0 - timestep / 1000.0


# ------------------------------------------------------------------ frames and clips
@dataclass(frozen=True)
class Clip:
    """One pass: video frames [start, stop), padded to `length` (6k + 1) by repeating the last one;
    its latent frames are [latent_start, latent_start + num_latents) of the returned maps."""

    start: int
    stop: int
    length: int
    latent_start: int
    temporal: int = TEMPORAL_COMPRESSION

    @property
    def num_latents(self) -> int:
        return (self.length - 1) // self.temporal + 1

    def latent_of(self, frame: int) -> int:
        """Latent frame (in the returned maps) of video frame `frame` of this clip."""
        return self.latent_start + (frame - self.start + self.temporal - 1) // self.temporal


def plan_clips(num_frames: int, clip_frames: int, windows: str = "first", temporal: int = TEMPORAL_COMPRESSION) -> list[Clip]:
    """The clips a video of `num_frames` is encoded in (see the module docstring)."""
    if num_frames < 1:
        raise ValueError("the video has no frames")
    if clip_frames < 1 or (clip_frames - 1) % temporal:
        raise ValueError(f"clip_frames must be {temporal}k + 1, got {clip_frames}")
    if windows not in WINDOWS:
        raise ValueError(f"windows must be one of {WINDOWS}, got {windows!r}")
    clips, start, latent = [], 0, 0
    while start < num_frames and (windows == "all" or not clips):
        stop = min(start + clip_frames, num_frames)
        length = temporal * -(-(stop - start - 1) // temporal) + 1  # fewest 6k + 1 frames holding the clip
        clips.append(Clip(start, stop, length, latent, temporal))
        latent += clips[-1].num_latents
        start = stop
    return clips


def frame_to_latent(num_frames: int, clip_frames: int, windows: str = "first", temporal: int = TEMPORAL_COMPRESSION) -> list[int]:
    """Latent frame of each encoded video frame: [0, 1, 1, 1, 1, 1, 1, 2, ...] within a clip
    (frame 0 -> 0, frames 6j - 5 .. 6j -> j), clips one after the other."""
    return [clip.latent_of(f) for clip in plan_clips(num_frames, clip_frames, windows, temporal) for f in range(clip.start, clip.stop)]


class FrameSequence(Sequence):
    """Frames produced on demand by a callable: `FrameSequence(n, read)` with `read(i) -> PIL.Image`
    (for a `VideoSample`, `VideoSample.images` is such a lazy sequence already)."""

    def __init__(self, num_frames: int, read: Callable[[int], Image.Image]) -> None:
        self.num_frames = num_frames
        self.read = read

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.num_frames))]
        if not -self.num_frames <= index < self.num_frames:
            raise IndexError(f"frame {index} of a {self.num_frames}-frame video")
        return self.read(index % self.num_frames)


def as_frames(frames) -> Sequence:
    """A sequence of PIL images (read lazily if it is a lazy sequence such as `VideoSample.images`
    or `FrameSequence`), or a `VideoSample` (its frames read from disk when needed)."""
    if isinstance(frames, Sequence):
        return frames
    if hasattr(frames, "frame") and hasattr(frames, "frames"):  # a VideoSample
        return getattr(frames, "images", None) or FrameSequence(len(frames.frames), frames.frame)
    raise TypeError(
        "frames must be a sequence of PIL images (e.g. VideoSample.images, or "
        "refam.extractors.mochi.FrameSequence(num_frames, read)) or a VideoSample, got "
        f"{type(frames).__name__}"
    )


def frame_maps(maps: TokenMaps, frame_index: int) -> TokenMaps:
    """The image maps [K, T, h, w] of one video frame: its latent frame's slice of video maps."""
    if maps.frame_to_latent is None:
        raise ValueError("these are image maps (no frame_to_latent)")
    if not 0 <= frame_index < len(maps.frame_to_latent):
        raise IndexError(f"frame {frame_index} was not encoded: the maps cover frames 0..{len(maps.frame_to_latent) - 1}")
    latent = maps.frame_to_latent[frame_index]
    return replace(maps, scores=maps.scores[:, :, latent], frame_to_latent=None)


# ------------------------------------------------------------------ loading
# what `model.extractor.init_args.pretrained` must hold, for the error a wrong path gives
CHECKPOINT_LAYOUT = (
    "the folder of a Mochi checkpoint in the diffusers layout (model_index.json, transformer/, vae/, "
    "text_encoder/, tokenizer/, scheduler/) or a hub id such as genmo/mochi-1-preview")


@dataclass
class MochiCaption:
    """What the denoising stream is conditioned on."""

    embeds: torch.Tensor  # [1, Lc, D] T5, padded to caption_max_tokens
    mask: torch.Tensor  # [1, Lc] bool (Mochi removes the padding in attention)


class MochiExtractor(T5Expressions, PipelineExtractor):
    """Cross-attention maps of referring expressions from Mochi's transformer, per latent frame.

    Args:
        pretrained: folder in the diffusers Mochi layout, or a hub id (genmo/mochi-1-preview; downloads).
        torch_dtype: "bfloat16" (the released weights), "float16" or "float32".
        variant: weight file variant to load (e.g. "bf16" for genmo/mochi-1-preview's bfloat16 files).
        sigma: the EXPLICIT noise level of the observed latent, x_t = (1 - sigma) x0 + sigma eps
            (1 = pure noise). Default 0.01: the paper's "timestep 990" in Mochi's own convention
            (transformer timestep = 1000 (1 - sigma)); read in FLUX's convention (timestep =
            1000 sigma) "990" would be sigma = 0.99. See the module docstring. 0 observes the clean
            latent.
        height, width: pixel size every frame is resized to (multiples of 16: VAE 8 x patch 2;
            Mochi's native 480 x 848).
        clip_frames: frames encoded per pass, 6k + 1 (the VAE compresses time by 6, causally).
        windows: "first" (the first clip only: the paper localises in the first frame) or "all"
            (consecutive clips covering the whole video, for picking another frame).
        blocks: blocks whose maps are averaged (48 in Mochi 1); None = all, a list of indices, or a
            float fraction of the earliest blocks to filter out (`select_blocks`).
        softmax_stage: "after_mean" (default) or "per_head", as FluxExtractor.
        representation: "cross_attention" (video query . expression key / sqrt(d), after QK norm,
            RoPE on the video queries only, mean over heads) or "attention_output", as FluxExtractor.
        caption_max_tokens: T5 length of the denoising prompt (Mochi: 256, padding masked).
        expression_max_tokens: longest expression (with magnets) accepted, in T5 tokens.
        seed: base seed of the noise; each sample's noise derives from (seed, sample id), clips
            drawing one after the other.
        offload: where the modules live (refam.extractors.offload): "none", "text_encoders" (T5
            lives and runs on the CPU), "model" (T5 and the transformer take turns on the device)
            or "group" (block-level group offloading with prefetch).
        vae_tiling: encode frames in spatial tiles (diffusers `enable_tiling`), to save memory.
        local_files_only: never contact a hub, even for a hub id.
    """

    checkpoint_layout = CHECKPOINT_LAYOUT

    def __init__(
        self,
        pretrained: str,
        torch_dtype: str = "bfloat16",
        variant: str | None = None,
        sigma: float = 0.01,
        height: int = 480,
        width: int = 848,
        clip_frames: int = 25,
        windows: str = "first",
        blocks: list[int] | float | None = None,
        softmax_stage: str = "after_mean",
        representation: str = "cross_attention",
        caption_max_tokens: int = 256,
        expression_max_tokens: int = 128,
        seed: int = 0,
        offload: str = "none",
        vae_tiling: bool = False,
        local_files_only: bool = False,
    ) -> None:
        super().__init__(pretrained, torch_dtype, offload, local_files_only)
        key = "model.extractor.init_args"
        if not 0.0 <= sigma <= 1.0:
            raise ConfigError(f"{key}.sigma must be a noise level in [0, 1], got {sigma}")
        for name, value in (("height", height), ("width", width)):
            if value <= 0 or value % 16:
                raise ConfigError(f"{key}.{name} must be a positive multiple of 16, got {value}")
        if clip_frames < 1 or (clip_frames - 1) % TEMPORAL_COMPRESSION:
            raise ConfigError(f"{key}.clip_frames must be 6k + 1 (1, 7, 13, 19, 25, ...), got {clip_frames}")
        if windows not in WINDOWS:
            raise ConfigError(f"{key}.windows must be one of {list(WINDOWS)}, got {windows!r}")
        if softmax_stage not in SOFTMAX_STAGES:
            raise ConfigError(f"{key}.softmax_stage must be one of {list(SOFTMAX_STAGES)}, got {softmax_stage!r}")
        if representation not in REPRESENTATIONS:
            raise ConfigError(f"{key}.representation must be one of {list(REPRESENTATIONS)}, got {representation!r}")
        self.variant = variant
        self.sigma = float(sigma)
        self.height = height
        self.width = width
        self.clip_frames = clip_frames
        self.windows = windows
        self.blocks = blocks
        self.softmax_stage = softmax_stage
        self.representation = representation
        self.caption_max_tokens = caption_max_tokens
        self.expression_max_tokens = expression_max_tokens
        self.seed = seed
        self.vae_tiling = vae_tiling

    def map_settings(self) -> dict:
        return {
            "variant": self.variant,
            "sigma": self.sigma,
            "height": self.height,
            "width": self.width,
            "clip_frames": self.clip_frames,
            "windows": self.windows,
            "seed": self.seed,
            "blocks": self.blocks,
            "softmax_stage": self.softmax_stage,
            "representation": self.representation,
            "caption_max_tokens": self.caption_max_tokens,
            "expression_max_tokens": self.expression_max_tokens,
            "vae_tiling": self.vae_tiling,  # tiled VAE encoding differs at the tile seams
        }

    # ---------------------------------------------------------------- the pipeline
    def pipeline_class(self) -> type:
        from diffusers import MochiPipeline

        return MochiPipeline

    def load_kwargs(self) -> dict:
        return {"variant": self.variant}

    def prepare(self, pipe) -> None:
        if pipe.vae.temporal_compression_ratio != TEMPORAL_COMPRESSION:
            raise CheckpointError(
                f"{PRETRAINED_KEY}: the VAE compresses time by {pipe.vae.temporal_compression_ratio}, not "
                f"{TEMPORAL_COMPRESSION} as Mochi's does"
            )
        if self.vae_tiling:
            pipe.vae.enable_tiling()
        self.processors = install_mochi_branch(pipe.transformer)

    def placement_modules(self, pipe):
        return [pipe.text_encoder], pipe.transformer, [pipe.vae]

    @property
    def num_blocks(self) -> int:
        return len(self.pipe.transformer.transformer_blocks)

    # ---------------------------------------------------------------- encoders
    @property
    def expression_encoder(self) -> ExpressionEncoder:
        return ExpressionEncoder(self.pipe.tokenizer, self.pipe.text_encoder, self.expression_max_tokens)

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> MochiCaption:
        """The caption as MochiPipeline encodes it (T5, padded to caption_max_tokens, with its mask)."""
        self.placement.enter("text")
        embeds, mask, _, _ = self.pipe.encode_prompt(
            prompt=caption,
            do_classifier_free_guidance=False,
            max_sequence_length=self.caption_max_tokens,
            device=self.placement.text_device,
        )
        return MochiCaption(embeds=embeds.to(self.device, self.dtype), mask=mask.to(self.device).bool())

    @torch.inference_mode()
    def encode_clip(self, frames: list[Image.Image]) -> torch.Tensor:
        """Normalised clean latent [1, 12, F_lat, height/8, width/8] of 6k + 1 frames (the inverse of
        MochiPipeline's decode normalisation: (z - mean) * scaling_factor / std)."""
        processor = self.pipe.video_processor
        pixels = torch.stack(
            [processor.preprocess(f.convert("RGB"), height=self.height, width=self.width)[0] for f in frames], dim=1
        )[None]
        vae = self.pipe.vae
        latent = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.mode()
        config = vae.config
        if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
            shape = (1, -1, 1, 1, 1)
            mean = torch.tensor(config.latents_mean, device=latent.device, dtype=latent.dtype).view(shape)
            std = torch.tensor(config.latents_std, device=latent.device, dtype=latent.dtype).view(shape)
            latent = (latent - mean) * config.scaling_factor / std
        else:
            latent = latent * config.scaling_factor
        return latent.to(self.dtype)

    def noised(self, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x_t = (1 - sigma) x0 + sigma eps, eps ~ N(0, I) drawn on the CPU generator (float32)."""
        noise = standard_noise(x0, generator)
        return ((1.0 - self.sigma) * x0.float() + self.sigma * noise).to(x0.dtype)

    # ---------------------------------------------------------------- forward
    @torch.inference_mode()
    def forward(
        self,
        x_t: torch.Tensor,
        sigma: float,
        condition: MochiCaption,
        expressions: EncodedExpressions | None = None,
        capture: AttentionCapture | None = None,
    ) -> torch.Tensor:
        """One transformer forward at noise level sigma (timestep 1000 (1 - sigma)); with
        `expressions` and `capture`, the branch rides along. Returns Mochi's velocity (x0 - eps)."""
        self.placement.enter("denoise")
        text, mask = condition.embeds, condition.mask
        if expressions is not None:
            branch = expressions.embeds.reshape(1, -1, text.shape[-1]).to(text.dtype)
            text = torch.cat([text, branch], dim=1)
            mask = torch.cat([mask, mask.new_zeros(1, branch.shape[1])], dim=1)  # padding to everything but the branch
        for processor in self.processors:
            processor.capture = capture
        try:
            return self.pipe.transformer(
                hidden_states=x_t,
                encoder_hidden_states=text,
                timestep=torch.full((1,), mochi_timestep(sigma), device=self.device, dtype=torch.float32),
                encoder_attention_mask=mask,
                return_dict=False,
            )[0]
        finally:
            for processor in self.processors:
                processor.capture = None

    def new_capture(self, expressions: EncodedExpressions, caption_len: int, num_video_tokens: int) -> AttentionCapture:
        return AttentionCapture(
            BranchLayout(caption_len=caption_len, key_valid=expressions.valid, key_order=MochiBranchProcessor.KEY_ORDER),
            num_image_tokens=num_video_tokens,
            selected_blocks=select_blocks(self.num_blocks, self.blocks),
            softmax_stage=self.softmax_stage,
            device=self.device,
            representation=self.representation,
        )

    # ---------------------------------------------------------------- extraction
    @torch.inference_mode()
    def extract_video(
        self,
        frames,
        caption: str,
        expressions: list[tuple[str, int | None]],
        sample_id: str,
        magnet_vectors: MagnetVectors | None = None,
    ) -> TokenMaps:
        """Token maps of K expressions over a video: scores [K, T, F_lat, h, w] (h = height/16,
        w = width/16; latent frames of all encoded clips in order) with `frame_to_latent`.

        `frames`: a sequence of PIL images, read lazily if the sequence is lazy
        (`VideoSample.images`, `FrameSequence`), or a `VideoSample`; only the frames of the clips
        being encoded are indexed, once each, one clip at a time."""
        if self.pipe is None:
            raise RuntimeError("MochiExtractor.setup(device) must run before extract_video()")
        frames = as_frames(frames)
        clips = plan_clips(len(frames), self.clip_frames, self.windows)
        encoded = self.encode_expressions(expressions, magnet_vectors)
        condition = self.encode_caption(caption)
        k, length = encoded.valid.shape
        generator = torch.Generator("cpu").manual_seed(sample_seed(self.seed, sample_id))
        parts, mass, observations = [], None, 0
        for clip in clips:
            pixels = [frames[i] for i in range(clip.start, clip.stop)]
            pixels += [pixels[-1]] * (clip.length - len(pixels))
            x0 = self.encode_clip(pixels)
            del pixels
            _, _, latents, lh, lw = x0.shape
            rows, cols = lh // 2, lw // 2
            capture = self.new_capture(encoded, condition.embeds.shape[1], latents * rows * cols)
            self.forward(self.noised(x0, generator), self.sigma, condition, encoded, capture)
            scores, _ = capture.result()
            parts.append(scores.reshape(k, length, latents, rows, cols).cpu())
            mass = capture.text_mass.clone() if mass is None else mass + capture.text_mass
            observations += capture.observations
        return TokenMaps(
            scores=torch.cat(parts, dim=2),
            valid=encoded.valid.cpu(),
            text_mass=(mass / observations).cpu(),
            tokens=encoded.tokens,
            kind="logits" if self.softmax_stage == "after_mean" else "probs",
            frame_to_latent=[clip.latent_of(f) for clip in clips for f in range(clip.start, clip.stop)],
        )

    @torch.inference_mode()
    def extract(self, image, caption, expressions, sample_id, magnet_vectors=None) -> TokenMaps:
        """The image as a 1-frame video (one latent frame): scores [K, T, h, w]."""
        return frame_maps(self.extract_video([image], caption, expressions, sample_id, magnet_vectors), 0)

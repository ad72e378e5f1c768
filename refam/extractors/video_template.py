"""The template for a video DiT (`VideoDiTExtractor`): `refam.extractors.template.DiTExtractor`
per clip of frames, read lazily, with each frame's latent frame (`frame_to_latent`)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar

import torch
from PIL import Image

from refam.errors import ConfigError
from refam.extractors.base import VideoExtractor
from refam.extractors.latents import Latent
from refam.extractors.template import DiTExtractor
from refam.extractors.trajectory import Trajectory
from refam.extractors.video import FRAME_WINDOWS, as_frames, latent_frames, plan_clips
from refam.types import MagnetVectors, TokenMaps


class VideoDiTExtractor(DiTExtractor, VideoExtractor):
    """A video DiT: the template per clip of frames, maps [K, T, F_lat, h, w] with `frame_to_latent`.

    Each pass encodes one clip of `clip_frames` (= c k + 1, c the VAE's `temporal_compression`)
    consecutive frames, read lazily; `windows="first"` encodes the first clip only (the paper
    localises in the first frame), "all" consecutive clips covering the whole video. A last (or
    only) clip shorter than `clip_frames` is padded, by repeating its last frame, to the fewest
    c k + 1 frames that hold it. An image is a one-frame video.

    Args (besides DiTExtractor's): height, width (pixels every frame is resized to), clip_frames,
    windows, vae_tiling (encode frames in spatial tiles, diffusers `enable_tiling`, to save memory).
    """

    temporal_compression: ClassVar[int]
    spatial_multiple: ClassVar[int] = 16  # the VAE's factor times the patch size

    def __init__(self, pretrained: str, height: int, width: int, clip_frames: int, windows: str = "first",
                 vae_tiling: bool = False, **settings) -> None:
        super().__init__(pretrained, **settings)
        for name, value in (("height", height), ("width", width)):
            if value <= 0 or value % self.spatial_multiple:
                raise ConfigError(f"must be a positive multiple of {self.spatial_multiple}, got {value}", field=name)
        c = self.temporal_compression
        if clip_frames < 1 or (clip_frames - 1) % c:
            raise ConfigError(f"must be {c}k + 1 ({', '.join(str(c * k + 1) for k in range(5))}, ...), got {clip_frames}",
                              field="clip_frames")
        if windows not in FRAME_WINDOWS:
            raise ConfigError(f"must be one of {list(FRAME_WINDOWS)}, got {windows!r}", field="windows")
        self.height, self.width, self.clip_frames, self.windows = height, width, clip_frames, windows
        self.vae_tiling = vae_tiling

    @abc.abstractmethod
    def encode_clip(self, frames: list[Image.Image]) -> Latent:
        """The clean latent of c k + 1 frames and its token grid (latent frames, rows, cols)."""

    def clip_pixels(self, frames: list[Image.Image]) -> torch.Tensor:
        """[1, C, F, H, W] frames resized and scaled as the pipeline's `video_processor` does, on the
        device in the VAE's dtype."""
        pixels = self.pipe.video_processor.preprocess_video([f.convert("RGB") for f in frames], height=self.height, width=self.width)
        return pixels.to(self.device, self.pipe.vae.dtype)

    def encode_image(self, image: Image.Image) -> Latent:
        return self.encode_clip([image])

    def prepare(self, pipe) -> None:
        if self.vae_tiling:
            pipe.vae.enable_tiling()
        super().prepare(pipe)

    @torch.inference_mode()
    def extract_video(self, frames: Sequence[Image.Image], caption: str, expressions: list[tuple[str, int | None]],
                      sample_id: str, magnet_vectors: MagnetVectors | None = None,
                      blocks: list[int] | float | None = None, trajectory: Trajectory | None = None) -> TokenMaps:
        """Token maps of K expressions over a video: scores [K, T, F_lat, h, w] (latent frames of all
        encoded clips in order) with `frame_to_latent`. `frames`: a sequence of PIL images, read
        lazily if the sequence is lazy (`VideoSample.images`, `FrameSequence`), or a `VideoSample`;
        only the frames of the clips being encoded are read, once each, one clip at a time.
        `blocks` and `trajectory`, given, are this call's instead of the extractor's own."""
        self.require_setup(trajectory)
        frames = as_frames(frames)
        clips = plan_clips(len(frames), self.clip_frames, self.windows, self.temporal_compression)
        encoded = self.encode_expressions(expressions, magnet_vectors)
        condition = self.encode_caption(caption)
        k, length = encoded.valid.shape
        generator = self.generator(sample_id)  # clips draw their noise one after the other
        parts, mass, observations = [], None, 0
        for clip in clips:
            pixels = [frames[i] for i in range(clip.start, clip.stop)]
            pixels += [pixels[-1]] * (clip.length - len(pixels))
            latent = self.encode_clip(pixels)
            del pixels
            capture = self.observe(latent, condition, encoded, generator, blocks, trajectory)
            scores, _ = capture.result()
            parts.append(scores.reshape(k, length, *latent.grid).cpu())
            mass = capture.text_mass.clone() if mass is None else mass + capture.text_mass
            observations += capture.observations
        return TokenMaps(
            scores=torch.cat(parts, dim=2),
            valid=encoded.scored(self.template_tokens).cpu(),
            text_mass=(mass / observations).cpu(),
            tokens=encoded.tokens,
            kind=self.maps_kind,
            frame_to_latent=latent_frames(clips),
        )

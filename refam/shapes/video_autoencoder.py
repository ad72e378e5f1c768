"""Stage 1 of `refam train-shapes-video`: what the AutoencoderKLMochi trains on and the read-out
terms beside its reconstruction (`refam.shapes.train_video` runs it).

The autoencoder sees random crops of 7-frame windows of training clips, resized as the extractor
resizes frames. Reconstruction alone left its latents nearly blind to colour and to motion, the two
things expressions name, so linear read-outs (1x1 convolutions trained beside it, not saved) ask
each latent cell for its mean colour and, from latent frame 1 on, its shape's velocity.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import IterableDataset

from refam.extractors.video import frame_to_latent
from refam.shapes.motion import MotionClip, make_motion_clip
from refam.shapes.scenes import ClipFrame
from refam.shapes.train import AutoencoderStage
from refam.shapes.video_model import FRAME, TEMPORAL


def frame_pixels(images: list[Image.Image]) -> torch.Tensor:
    """[3, F, H, W] in [-1, 1], resized as `MochiPipeline.video_processor.preprocess_video` resizes."""
    from diffusers.video_processor import VideoProcessor

    return VideoProcessor(vae_scale_factor=8).preprocess_video([i.convert("RGB") for i in images],
                                                                height=FRAME[0], width=FRAME[1])[0]


class ClipCrops(IterableDataset):
    """Endless random `crop` x `crop` crops of 7-frame windows of training clips, for the autoencoder:
    each a crop where every frame holds an edge (the first of `tries` draws whose per-frame pixel
    spread passes `min_std`). The encoder normalises per frame and meets whole frames, which always
    hold shapes; a flat crop only teaches it the background's colour."""

    def __init__(self, seed: int, crop: int = 64, frames: int = 7, min_std: float = 0.1, tries: int = 20,
                 with_velocity: bool = False) -> None:
        self.seed, self.crop, self.frames, self.min_std, self.tries = seed, crop, frames, min_std, tries
        self.with_velocity = with_velocity

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        index = 0
        while True:
            clip = make_motion_clip("train", 10_000_000 + index)
            index += 1
            start = int(rng.integers(0, max(1, clip.num_frames - self.frames + 1)))
            indices = [min(start + t, clip.num_frames - 1) for t in range(self.frames)]
            frames = [clip.frame(i) for i in indices]  # rendered once: pixels and, if asked, velocities
            pixels = frame_pixels([frame.image for frame in frames])
            for _ in range(self.tries):
                y = int(rng.integers(0, FRAME[0] - self.crop + 1))
                x = int(rng.integers(0, FRAME[1] - self.crop + 1))
                crop = pixels[:, :, y : y + self.crop, x : x + self.crop]
                if crop.std(dim=(0, 2, 3)).min() > self.min_std:
                    break
            if self.with_velocity:  # drawn after the crop, so the crops are those of a run without it
                yield crop, velocity_field(clip, frames)[:, :, y : y + self.crop, x : x + self.crop]
            else:
                yield crop


SPEED_SCALE = 4.0  # pixels per frame at FRAME: about the fastest shape's speed, so targets stay within [-1, 1]


def resized_mask(mask: np.ndarray) -> torch.Tensor:
    """[H, W] of FRAME: the share of each pixel a mask covers once resized as the frames are."""
    resized = Image.fromarray(mask.astype(np.float32)).resize((FRAME[1], FRAME[0]), Image.BILINEAR)
    return torch.from_numpy(np.array(resized, dtype=np.float32)).clamp(0, 1)


def velocity_field(clip: MotionClip, frames: list[ClipFrame]) -> torch.Tensor:
    """[2, F, H, W] for the clip's rendered `frames`: each pixel's (vx, vy) in FRAME pixels per frame
    over SPEED_SCALE, the velocity of the shape covering it (coverage-weighted at its resized edge),
    zero on the background."""
    sx, sy = FRAME[1] / clip.width, FRAME[0] / clip.height
    field = torch.zeros(2, len(frames), *FRAME)
    for f, frame in enumerate(frames):
        for o, mask in zip(clip.objects, frame.masks):
            cover = resized_mask(mask)
            field[0, f] += cover * (o.vx * sx / SPEED_SCALE)
            field[1, f] += cover * (o.vy * sy / SPEED_SCALE)
    return field


class ColourReadoutStage(AutoencoderStage):
    """The autoencoder stage plus a linear read-out of each latent cell's mean colour from its
    latent (a 1x1 convolution trained beside the VAE and not saved). Reconstruction alone left the
    latents nearly colour-blind after hundreds of steps here (a linear probe read an object's colour
    name in 34 % of 184 objects, against 83 % from its cells' mean RGB); with this term, 67 % at the
    same step (`docs/refam-shapes.md`). Colour is what most expressions name."""

    def __init__(self, vae, lr: float, kl_weight: float, colour_weight: float) -> None:
        super().__init__(vae, lr, kl_weight)
        self.colour_weight = colour_weight
        self.readout = torch.nn.Conv3d(vae.config.latent_channels, 3, kernel_size=1)

    def latent_terms(self, batch: torch.Tensor, posterior) -> dict[str, torch.Tensor]:
        target = F.avg_pool3d(latent_frame_means(batch), (1, 8, 8))  # the VAE's 8x8 cells
        return {"colour": self.colour_weight * F.mse_loss(self.readout(posterior.mode()), target)}


class MotionReadoutStage(ColourReadoutStage):
    """The colour read-out stage plus a linear read-out of each latent cell's motion: the mean
    velocity of the shape over the frames its latent frame holds (`velocity_field`), from latent
    frame 1 on (latent frame 0 holds frame 0 alone and cannot know where a shape goes). Without it
    a linear probe read an object's direction (left, right, up, down, still) from its latent cells
    at 30 %, chance being 27 % (`docs/refam-shapes.md`): the transformer then had to find where an
    identical twin went by matching positions across latent frames, and told twins apart in 57-61 %.
    With it (300 steps, weight 10) that probe of an object's mean latent still read 25-26 %, yet the
    model trained on it told motion apart better; docs/refam-shapes.md, "Session 12", has both."""

    def __init__(self, vae, lr: float, kl_weight: float, colour_weight: float, motion_weight: float) -> None:
        super().__init__(vae, lr, kl_weight, colour_weight)
        self.motion_weight = motion_weight
        self.motion_readout = torch.nn.Conv3d(vae.config.latent_channels, 2, kernel_size=1)

    def training_step(self, batch, batch_idx):
        self.velocity = batch[1]
        return super().training_step(batch[0], batch_idx)

    def latent_terms(self, batch: torch.Tensor, posterior) -> dict[str, torch.Tensor]:
        terms = super().latent_terms(batch, posterior)
        target = F.avg_pool3d(latent_frame_means(self.velocity), (1, 8, 8))[:, :, 1:]
        read = self.motion_readout(posterior.mode())[:, :, 1:]
        terms["motion"] = self.motion_weight * F.mse_loss(read, target)
        return terms


def latent_frame_means(pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, F, H, W] -> [B, 3, F_lat, H, W]: the mean of the frames each latent frame holds, by the
    extractor's own frame-to-latent mapping (Mochi's causal one: frame 0 alone, then runs of TEMPORAL)."""
    latent = torch.tensor(frame_to_latent(pixels.shape[2], pixels.shape[2], "first", TEMPORAL))
    return torch.stack([pixels[:, :, latent == k].mean(2) for k in range(int(latent.max()) + 1)], dim=2)

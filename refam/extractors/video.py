"""Videos as a video DiT reads them: clips of frames and the latent frame of every video frame.

A causal video VAE compressing time by c (Mochi 6; Wan, CogVideoX, HunyuanVideo 4) makes k + 1
latent frames of a clip of c k + 1 frames: pixel frame 0 alone makes latent 0 and frames
c j - c + 1 .. c j make latent j. A video is encoded in clips of `clip_frames` (= c k + 1)
consecutive frames (`plan_clips`); a clip shorter than that is padded, by repeating its last
frame, to the fewest c k + 1 frames that hold it (the padded frames only share its last latent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from PIL import Image

from refam.types import TokenMaps

FRAME_WINDOWS = ("first", "all")  # the first clip only (the paper localises in frame 0), or all


@dataclass(frozen=True)
class Clip:
    """One pass: video frames [start, stop), padded to `length` (c k + 1) by repeating the last one;
    its latent frames are [latent_start, latent_start + num_latents) of the returned maps."""

    start: int
    stop: int
    length: int
    latent_start: int
    temporal: int

    @property
    def num_latents(self) -> int:
        return (self.length - 1) // self.temporal + 1

    def latent_of(self, frame: int) -> int:
        """Latent frame (in the returned maps) of video frame `frame` of this clip."""
        return self.latent_start + (frame - self.start + self.temporal - 1) // self.temporal


def plan_clips(num_frames: int, clip_frames: int, windows: str, temporal: int) -> list[Clip]:
    """The clips a video of `num_frames` is encoded in (see the module docstring); `temporal` is the
    VAE's temporal compression c, clips hold c k + 1 frames."""
    if num_frames < 1:
        raise ValueError("the video has no frames")
    if clip_frames < 1 or (clip_frames - 1) % temporal:
        raise ValueError(f"clip_frames must be {temporal}k + 1, got {clip_frames}")
    if windows not in FRAME_WINDOWS:
        raise ValueError(f"windows must be one of {FRAME_WINDOWS}, got {windows!r}")
    clips, start, latent = [], 0, 0
    while start < num_frames and (windows == "all" or not clips):
        stop = min(start + clip_frames, num_frames)
        length = temporal * -(-(stop - start - 1) // temporal) + 1  # fewest c k + 1 frames holding the clip
        clips.append(Clip(start, stop, length, latent, temporal))
        latent += clips[-1].num_latents
        start = stop
    return clips


def latent_frames(clips: list[Clip]) -> list[int]:
    """Latent frame of each encoded video frame: within a clip frame 0 -> 0, frames c j - c + 1 .. c j
    -> j (Mochi, c = 6: [0, 1, 1, 1, 1, 1, 1, 2, ...]), clips one after the other."""
    return [clip.latent_of(f) for clip in clips for f in range(clip.start, clip.stop)]


def frame_to_latent(num_frames: int, clip_frames: int, windows: str, temporal: int) -> list[int]:
    """`latent_frames` of the clips a video of `num_frames` is encoded in."""
    return latent_frames(plan_clips(num_frames, clip_frames, windows, temporal))


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
        "refam.extractors.video.FrameSequence(num_frames, read)) or a VideoSample, got "
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

"""What the page plays: which uploads are videos, and their frames as a clip a browser plays, for
the uploaded video itself and for the masks tracked through it.

Clips are WebM files with VP8 video, written by OpenCV's own FFmpeg: every browser decodes VP8,
while the MP4 that OpenCV writes without an H.264 encoder is MPEG-4 Part 2, which browsers refuse
(Chromium: MEDIA_ERR_SRC_NOT_SUPPORTED), and Gradio converts nothing where no ffmpeg is installed.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageSequence

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
DEFAULT_FPS = 10.0  # for a file that gives no frame rate (or an absurd one)
PREVIEW_SIDE = 512  # the uploaded video's clip: its long side, at most (small videos enlarged pixel by pixel)
TILE_SIDE = 384  # the tracked masks' clip: each expression's tile, long side at most
COLUMNS = 3  # tiles per row


def is_video(path: Path) -> bool:
    """A video file, or an animated image (GIF, APNG, WebP of several frames), whose frames are the
    video's; a still image, GIF included, is an image."""
    from refam.io.frames import animated_frames

    path = Path(path)
    return path.suffix.lower() in VIDEO_SUFFIXES or (path.is_file() and animated_frames(path) > 0)


def count_frames(video: Path) -> int:
    from refam.io.frames import animated_frames

    animated = animated_frames(video)
    if animated:
        return animated
    import cv2

    capture = cv2.VideoCapture(str(video))
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if count <= 0:  # a container that does not say: count by decoding (frames are dropped at once)
            while capture.grab():
                count += 1
        return count
    finally:
        capture.release()


def frame_rate(video: Path) -> float:
    """Frames per second: an animated image's from its frame durations, a video file's from its container."""
    from refam.io.frames import animated_frames

    if animated_frames(video):
        with Image.open(video) as animation:
            durations = [frame.info.get("duration") or 0 for frame in ImageSequence.Iterator(animation)]
        mean = sum(durations) / len(durations)
        fps = 1000.0 / mean if mean > 0 else 0.0
    else:
        import cv2

        capture = cv2.VideoCapture(str(video))
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        capture.release()
    return fps if 0 < fps <= 240 else DEFAULT_FPS


def fitted(image: Image.Image, side: int) -> Image.Image:
    """The image with its long side at most `side`: a small one enlarged by a whole factor (each
    pixel a square), a large one shrunk; both sides even, as the VP8 encoder needs."""
    width, height = image.size
    factor = side // max(width, height)
    if factor >= 2:
        image = image.resize((width * factor, height * factor), Image.Resampling.NEAREST)
    elif max(width, height) > side:
        scale = side / max(width, height)
        image = image.resize((max(2, round(width * scale)), max(2, round(height * scale))), Image.Resampling.LANCZOS)
    even = (image.width - image.width % 2, image.height - image.height % 2)
    return image if even == image.size else image.crop((0, 0, *even))


def write_webm(frames: Iterable[Image.Image], path: Path, fps: float) -> Path:
    """The frames (RGB, one size: the first frame's) as a VP8 WebM clip at `path`."""
    import cv2

    from refam.io.frames import native_stderr_silenced

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for frame in frames:
            if writer is None:
                size = frame.size
                with native_stderr_silenced():  # FFmpeg's note that WebM has no codec tags; VP8 is used
                    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"VP80"), fps, size)
                if not writer.isOpened():
                    raise RuntimeError(f"OpenCV cannot write a VP8 WebM clip to {path} (its FFmpeg lacks libvpx)")
            pixels = np.asarray(frame.convert("RGB") if frame.size == size else frame.convert("RGB").resize(size))
            writer.write(np.ascontiguousarray(pixels[:, :, ::-1]))  # RGB -> BGR
    finally:
        if writer is not None:
            writer.release()
    if writer is None:
        raise ValueError(f"no frames to write to {path}")
    return path


def preview_clip(video: Path, path: Path, max_frames: int) -> Path:
    """The uploaded video (its first `max_frames` frames, as the pipeline reads them) as a clip at its frame rate."""
    from refam.io.frames import iter_frames

    frames = (fitted(frame, PREVIEW_SIDE) for frame in islice(iter_frames(video), max_frames))
    return write_webm(frames, path, frame_rate(video))


def masks_clip(video: Path, mask_folders: list[Path], labels: list[str], key_points: list[tuple[int, tuple]],
               path: Path) -> Path:
    """The tracked masks as one clip, a tile per expression: its mask over each frame (from the
    `<frame>.png` files `refam predict` writes into `mask_folders`), the star on its key frame
    (`key_points`: frame index and point), and its label under it."""
    from refam.io.frames import iter_frames
    from refam.visualize import mask_overlay

    def tiles(index: int, frame: Image.Image):
        for folder, label, (key, point) in zip(mask_folders, labels, key_points):
            mask_file = folder / f"{index:05d}.png"
            if mask_file.exists():
                with Image.open(mask_file) as picture:
                    mask = np.asarray(picture) > 127
            else:  # the tracker gave no mask for this frame
                mask = np.zeros((frame.height, frame.width), dtype=bool)
            yield labelled(fitted(mask_overlay(frame, mask, point if index == key else None), TILE_SIDE), label)

    def frames():
        for index, frame in enumerate(iter_frames(video)):
            yield grid(list(tiles(index, frame)))

    return write_webm(frames(), path, frame_rate(video))


def labelled(tile: Image.Image, label: str) -> Image.Image:
    from PIL import ImageFont

    font = ImageFont.load_default(size=16)
    strip = 26
    out = Image.new("RGB", (tile.width, tile.height + strip), (255, 255, 255))
    out.paste(tile, (0, 0))
    text = label
    while font.getlength(text) > tile.width - 8 and len(text) > 1:  # cut to the tile, marked as cut
        text = text[:-2] + "…"
    ImageDraw.Draw(out).text((4, tile.height + strip // 2), text, fill=(0, 0, 0), font=font, anchor="lm")
    return out


def grid(tiles: list[Image.Image]) -> Image.Image:
    columns = min(COLUMNS, len(tiles))
    rows = -(-len(tiles) // columns)
    width, height = max(t.width for t in tiles), max(t.height for t in tiles)
    out = Image.new("RGB", (columns * width, rows * height), (255, 255, 255))
    for k, tile in enumerate(tiles):
        out.paste(tile, ((k % columns) * width, (k // columns) * height))
    return out

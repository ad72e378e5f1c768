"""Video frames, one at a time, from a folder of images, an animated image file (GIF, APNG, WebP,
multi-page TIFF: Pillow) or a video file (OpenCV), never all in memory. Frame images are read as
every image is (`refam.io.images.to_rgb`: modes as a viewer shows them, EXIF orientation)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from refam.io.images import check_size, open_rgb, to_rgb, viewed_rgb
from refam.errors import DataError, MissingInputError
from refam.io.pixels import frame_count

FRAME_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def frame_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise MissingInputError(f"{folder}: the frame folder holds no images ({', '.join(sorted(FRAME_SUFFIXES))})")
    return files


def read_frame(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Frame `path` as uint8 [H, W, 3] RGB, read as every refam image is (`open_rgb`: modes,
    EXIF orientation, transparency); `size` (width, height) is the video's, which it must have.
    For trackers that read one frame at a time."""
    try:
        rgb = open_rgb(path)
    except FileNotFoundError as err:
        raise MissingInputError(f"video frame not found: {path}") from err
    except OSError as err:
        raise DataError(f"cannot read video frame {path}: {err}") from err
    if size is not None and rgb.size != size:
        raise DataError(f"video frame {path} is {rgb.size[0]}x{rgb.size[1]} but the video's frames are "
                        f"{size[0]}x{size[1]}; all frames of a video must have one size")
    return np.asarray(rgb)


def animated_frames(path: Path) -> int:
    """The number of frames of `path` when Pillow reads it as an image of several frames, else 0
    (a video file, or an image of one frame). Reads the header only."""
    try:
        with Image.open(path) as image:
            return frame_count(image) if frame_count(image) > 1 else 0
    except (UnidentifiedImageError, OSError):
        return 0


def iter_frames(source: Path) -> Iterator[Image.Image]:
    """RGB frames in order. `source` is a folder of frame images (sorted by name), an animated
    image file (every frame, composed as Pillow's ImageSequence gives it) or a video file."""
    source = Path(source)
    if source.is_dir():
        for path in frame_files(source):
            try:
                with Image.open(path) as frame:
                    rgb = to_rgb(frame, path)
            except OSError as err:
                raise MissingInputError(f"cannot read frame {path}: {err}") from err
            yield rgb
        return
    if not source.exists():
        raise MissingInputError(f"video not found: {source}")
    if animated_frames(source):
        with Image.open(source) as animation:
            check_size(animation, source)
            for index, frame in enumerate(ImageSequence.Iterator(animation)):
                try:
                    rgb = viewed_rgb(frame, f"{source} frame {index}")
                except OSError as err:
                    raise MissingInputError(f"cannot read frame {index} of {source}: {err}") from err
                yield rgb
        return
    import cv2

    capture = cv2.VideoCapture(str(source))
    try:
        ok, frame = capture.read()
        if not ok:
            raise MissingInputError(f"cannot read video {source}: OpenCV decodes no frame from it "
                                    "(give a video file OpenCV reads, e.g. MP4 or AVI, an animated GIF, "
                                    "or a folder of frames)")
        while ok:
            yield Image.fromarray(np.ascontiguousarray(frame[:, :, ::-1]))  # BGR -> RGB
            ok, frame = capture.read()
    finally:
        capture.release()


@contextlib.contextmanager
def native_stderr_silenced():
    """File descriptor 2 sent to the null device: FFmpeg, inside OpenCV, prints its own complaint
    about a file it cannot decode there (`moov atom not found`), before refam's one line says it."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_video_readable(video: Path) -> None:
    """Decode the first frame, so that a video that cannot be read is the run's error before the model loads."""
    frames = iter_frames(video)
    try:
        with native_stderr_silenced():
            next(frames)
    except StopIteration:
        raise MissingInputError(f"--video {video}: holds no frames") from None
    finally:
        frames.close()

"""Video frames, one at a time, from a folder of images or a video file (OpenCV), never all in memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from refam.data.images import to_rgb
from refam.errors import MissingInputError

FRAME_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def frame_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise MissingInputError(f"{folder}: the frame folder holds no images ({', '.join(sorted(FRAME_SUFFIXES))})")
    return files


def iter_frames(source: Path) -> Iterator[Image.Image]:
    """RGB frames in order. `source` is a folder of frame images (sorted by name) or a video file."""
    source = Path(source)
    if source.is_dir():
        for path in frame_files(source):
            try:
                with Image.open(path) as frame:
                    rgb = to_rgb(frame, path)
                yield rgb
            except OSError as err:
                raise MissingInputError(f"cannot read frame {path}: {err}") from err
        return
    if not source.exists():
        raise MissingInputError(f"video not found: {source}")
    import cv2

    capture = cv2.VideoCapture(str(source))
    try:
        ok, frame = capture.read()
        if not ok:
            raise MissingInputError(f"cannot read video {source}: OpenCV decodes no frame from it "
                                    "(give a video file OpenCV reads, e.g. MP4 or AVI, or a folder of frames)")
        while ok:
            yield Image.fromarray(np.ascontiguousarray(frame[:, :, ::-1]))  # BGR -> RGB
            ok, frame = capture.read()
    finally:
        capture.release()

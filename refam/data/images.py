"""Reading the images a dataset names, without letting one bad file stop a run."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def read_rgb(path: Path | str) -> Image.Image | str:
    """The image as RGB, or a short description of why it cannot be read (for a `BadSample`)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        return f"image file not found: {path}"
    except (OSError, Image.DecompressionBombError) as err:
        return f"cannot read image {path} ({err})"

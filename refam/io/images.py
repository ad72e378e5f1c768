"""Reading the images a dataset names, without letting one bad file stop a run.

Every image becomes RGB the same way (`to_rgb`), as an image viewer shows it:

- each Pillow mode is converted by the rules of `refam.io.pixels` (16-bit images are not white,
  float images not black) and EXIF orientation is applied, so a phone photo stands upright;
- an animated or multi-frame file (GIF, APNG, WebP, TIFF pages) is refused: give it as a video
  (`refam.io.frames.iter_frames` reads every frame);
- transparency (RGBA, LA, PA, or a palette / grayscale image with a transparent colour) is
  composited onto `BACKGROUND`, white, and said once per process: dropping the alpha channel
  would show whatever colour the transparent pixels happen to store (often black);
- an image under `TINY_SIDE` pixels on a side is read with a warning (the DiT sees it upscaled to
  its resolution, so its maps say little);
- an image of more than the pixel limit is refused before it is decoded: the limit is
  `DEFAULT_MAX_PIXELS` (64 megapixels, e.g. 8000 x 8000; a 48 MP phone photo passes), or the
  environment variable `REFAM_MAX_PIXELS` (a positive whole number of pixels; any other value is a
  `ConfigError` the first time the limit is read, before any image is). Heatmaps and masks are made
  at the image's resolution, K of them per image, so memory grows with it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from PIL import Image

from refam.errors import ConfigError, DataError
from refam.io.pixels import eight_bit, orientation, oriented, refuse_animated

log = logging.getLogger(__name__)

BACKGROUND = (255, 255, 255)  # what transparent pixels are composited onto
TINY_SIDE = 16  # images with a side below this many pixels are read with a warning
DEFAULT_MAX_PIXELS = 64_000_000
MAX_PIXELS_ENV = "REFAM_MAX_PIXELS"

_said_transparent = False


def max_pixels() -> int:
    """The pixel limit: `$REFAM_MAX_PIXELS`, else `DEFAULT_MAX_PIXELS`. A value that is not a
    positive number of pixels is a `ConfigError`: skipping every image as "too large" would end a
    run with nothing scored."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(float(value))
    except (ValueError, OverflowError):
        limit = 0
    if limit <= 0:
        raise ConfigError(f"environment variable {MAX_PIXELS_ENV}={value!r} is not a positive number of pixels; "
                          f"set it to a whole number such as 100000000, or unset it for the default "
                          f"{DEFAULT_MAX_PIXELS:,}")
    return limit


def check_size(image: Image.Image, source: object) -> None:
    """Refuse an image over the pixel limit (a `DataError` naming the file and the setting); warn
    about a tiny one. Reads only the size, so a huge file is refused before it is decoded."""
    width, height = image.size
    limit = max_pixels()
    if width * height > limit:
        raise DataError(f"image {source} is {width}x{height} = {width * height:,} pixels, over the limit of {limit:,} "
                        f"(set {MAX_PIXELS_ENV} to a larger number of pixels, or downscale the image)")
    if min(width, height) < TINY_SIDE:
        log.warning("refam: image %s is only %dx%d pixels (under %d on a side): the model sees it upscaled and its "
                    "heatmap says little", source, width, height, TINY_SIDE)


def has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def to_rgb(image: Image.Image, source: object = "an image") -> Image.Image:
    """The image as RGB, as a viewer shows it (see the module docstring): a `DataError` for an
    animated image; transparent pixels composited onto `BACKGROUND` (said once per process)."""
    refuse_animated(image, source)
    return viewed_rgb(image, source)


def viewed_rgb(image: Image.Image, source: object = "an image") -> Image.Image:
    """`to_rgb` for one frame of an animated file (the frame Pillow's ImageSequence is on)."""
    global _said_transparent
    turn = orientation(image)
    image = eight_bit(image, source)
    if has_transparency(image):
        if not _said_transparent:
            _said_transparent = True
            log.warning("refam: %s has transparent pixels; they are composited onto %s (refam.io.images.BACKGROUND), "
                        "as are those of any later image", source, "white" if BACKGROUND == (255, 255, 255) else BACKGROUND)
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return oriented(Image.alpha_composite(canvas, rgba).convert("RGB"), turn)
    return oriented(image.convert("RGB"), turn)


def open_rgb(path: Path | str) -> Image.Image:
    """The image at `path` as RGB (see the module docstring); `DataError` when it is over the pixel
    limit or animated, `ConfigError` when the limit's setting is invalid, `OSError` /
    `FileNotFoundError` when it cannot be read."""
    limit = max_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit  # Pillow's own bomb guard follows refam's setting
    with Image.open(path) as image:
        refuse_animated(image, path)  # before any warning about its size: it is not read at all
        check_size(image, path)
        return to_rgb(image, path)


def read_rgb(path: Path | str) -> Image.Image | str:
    """The image as RGB, or a short description of why it cannot be read (for a `BadSample`). An
    invalid `REFAM_MAX_PIXELS` is raised (a `ConfigError`), not described: no image could be read."""
    try:
        return open_rgb(path)
    except DataError as err:
        return str(err)
    except FileNotFoundError:
        return f"image file not found: {path}"
    except (OSError, Image.DecompressionBombError) as err:
        return f"cannot read image {path} ({err}); give a PNG, JPEG or another format Pillow reads"

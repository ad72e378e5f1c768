"""How a decoded image file becomes pixels: the one place that says how every Pillow mode is shown,
how EXIF orientation is applied, how a ground-truth mask file becomes a bool mask and which
files are refused (animated images). `refam.io.images` (the RGB the model sees) and every
dataset's mask reader go through here; docs/settings.md "Pixels" states the rules for users.

Modes (as an image viewer shows them):
- 8-bit modes (1, L, P, RGB, RGBX, CMYK, YCbCr, LAB, HSV) convert with Pillow's own conversion;
  transparency (RGBA, LA, PA, premultiplied RGBa / La, a palette or grayscale transparent colour)
  is handled by the caller (`refam.io.images.to_rgb` composites onto white).
- 16-bit integers (I;16, I;16B, I;16L, I;16N): v >> 8, the full 0..65535 range onto 0..255.
- 32-bit integers (I): when every value fits 0..65535 and the file does not declare 32 bits per
  sample, they are 16-bit samples (Pillow holds a 16-bit PGM / PPM as I): v >> 8; otherwise
  v >> 23, the full 0..2**31-1 range onto 0..255. Negative values: scaled by the image's own
  range, with a warning.
- 32-bit float (F): values in [0, 1] are v * 255 rounded; an image with any value outside [0, 1]
  (or not finite) is scaled by its own finite range, min -> 0 and max -> 255, with a warning
  (not-a-number pixels become 0).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from refam.errors import DataError

log = logging.getLogger(__name__)

ORIENTATION_TAG = 0x0112  # EXIF 274
# EXIF orientation -> the transpose that shows the image upright (PIL.ImageOps.exif_transpose's table)
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
PREMULTIPLIED = {"RGBa": "RGBA", "La": "LA"}
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
LOSSY_FORMATS = ("JPEG", "MPO", "WEBP")  # formats whose pixel values may not be those saved (WebP: when lossy)
LOSSY_THRESHOLD = 128  # a lossy mask's pixel is the object at this value or above (JPEG ringing stays out)
ALPHA_THRESHOLD = 128  # a cutout's pixel is the object when at least half opaque


# ------------------------------------------------------------------------------------ orientation


def orientation(image: Image.Image) -> int:
    """The turn refam applies for the image's EXIF orientation (1-8; 1 when it has none or an
    invalid one, and for a TIFF, which Pillow itself opens upright: size and pixels)."""
    if image.format == "TIFF":
        return 1
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError, TypeError):  # a broken EXIF block: show the pixels as stored
        return 1
    return value if isinstance(value, int) and value in ORIENTATION_TRANSPOSE else 1


def oriented(image: Image.Image, value: int) -> Image.Image:
    """`image` transposed as EXIF orientation `value` asks (the same image when it asks for nothing)."""
    method = ORIENTATION_TRANSPOSE.get(value)
    return image if method is None else image.transpose(method)


def oriented_array(array: np.ndarray, value: int) -> np.ndarray:
    """`oriented` for an [H, W, ...] array (a mask or label map)."""
    if value in (2, 4):
        return np.flip(array, axis=1 if value == 2 else 0)
    if value == 3:
        return array[::-1, ::-1]
    if value in (5, 7):  # transpose (about the main diagonal) / transverse (the other diagonal)
        swapped = np.swapaxes(array, 0, 1)
        return swapped if value == 5 else swapped[::-1, ::-1]
    if value in (6, 8):  # 90 degrees clockwise / counter-clockwise
        return np.rot90(array, k=-1 if value == 6 else 1)
    return array


def viewed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as shown, i.e. after EXIF orientation. Reads the header only, except for a
    PNG whose EXIF chunk follows its pixel data (Pillow decodes it to get there)."""
    width, height = image.size
    return (height, width) if orientation(image) in (5, 6, 7, 8) else (width, height)


# ------------------------------------------------------------------------------------ animated images


# formats whose extra frames are no sequence: a camera's MPO JPEG holds previews or a second view
# beside the primary image, a PSD its layers beside the composite; a viewer shows the first
NOT_A_SEQUENCE = ("MPO", "PSD")


def frame_count(image: Image.Image) -> int:
    """How many frames a viewer plays: 1 for a still image (and for MPO / PSD files)."""
    if image.format in NOT_A_SEQUENCE or not getattr(image, "is_animated", False):
        return 1  # `is_animated` looks at most one frame ahead; `n_frames` may walk the whole file
    return int(getattr(image, "n_frames", 1) or 1)


def refuse_animated(image: Image.Image, source: object) -> None:
    """A `DataError` for an image file of several frames (GIF, APNG, WebP, multi-page TIFF): taking
    its first frame would segment one picture of a video without a word."""
    frames = frame_count(image)
    if frames > 1:
        raise DataError(f"{source} is an animated or multi-frame image ({frames} frames); give it as a video "
                        f"(`--video {source}`, or refam.io.frames.iter_frames), or save the one frame you mean")


# ------------------------------------------------------------------------------------ modes


def _scaled_by_range(values: np.ndarray, source: object, why: str) -> np.ndarray:
    finite = np.isfinite(values)
    lo = float(values[finite].min()) if finite.any() else 0.0
    hi = float(values[finite].max()) if finite.any() else 0.0
    log.warning("refam: %s %s; it is shown scaled by its own range, %g -> 0 and %g -> 255 "
                "(docs/settings.md, Pixels)", source, why, lo, hi)
    out = np.zeros(values.shape, dtype=np.uint8)
    if hi > lo:
        out[finite] = np.rint((values[finite] - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    else:
        out[finite] = 255 if hi > 0 else 0
    return out


def _declared_bits(image: Image.Image) -> int | None:
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None  # TIFF BitsPerSample
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return int(bits) if isinstance(bits, int) else None


def _with_transparency(image: Image.Image, values: np.ndarray, gray: np.ndarray) -> Image.Image:
    """The 8-bit gray image, with the source's transparent value (a 16-bit PNG's tRNS) as alpha."""
    transparent = image.info.get("transparency")
    if not isinstance(transparent, int):
        return Image.fromarray(gray, mode="L")
    alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([gray, alpha], axis=2), mode="LA")


def eight_bit(image: Image.Image, source: object = "an image") -> Image.Image:
    """`image` in a mode of 8 bits per channel that Pillow converts to RGB / RGBA as a viewer shows
    it: 16- and 32-bit integer and float images mapped onto 0..255 (module docstring), premultiplied
    alpha undone; other modes returned as they are."""
    mode = image.mode
    if mode in PREMULTIPLIED:
        return image.convert(PREMULTIPLIED[mode])
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        return _with_transparency(image, values, (values.astype(np.uint16) >> 8).astype(np.uint8))
    if mode == "I":
        values = np.asarray(image)
        if values.size and values.min() < 0:
            return Image.fromarray(_scaled_by_range(values.astype(np.float64), source,
                                                    "is a 32-bit integer image with negative values"), mode="L")
        wide = _declared_bits(image) == 32 or (values.size and values.max() > 0xFFFF)
        return _with_transparency(image, values, (values >> (23 if wide else 8)).astype(np.uint8))
    if mode == "F":
        values = np.asarray(image)
        finite = np.isfinite(values)
        if finite.all() and (values.size == 0 or (values.min() >= 0.0 and values.max() <= 1.0)):
            return Image.fromarray(np.rint(values * 255.0).astype(np.uint8), mode="L")
        return Image.fromarray(_scaled_by_range(values, source, "is a float image with values outside [0, 1]"),
                               mode="L")
    return image


# ------------------------------------------------------------------------------------ masks


_warned_lossy: set[str] = set()


def _lossy(image: Image.Image, source: object) -> bool:
    if image.format not in LOSSY_FORMATS:
        return False
    if str(source) not in _warned_lossy:
        _warned_lossy.add(str(source))
        log.warning("refam: mask %s is a %s file, whose compression alters pixel values; it is read as the object "
                    "where a channel is %d or more. Save masks as PNG", source, image.format, LOSSY_THRESHOLD)
    return True


def binary_mask(image: Image.Image, source: object) -> np.ndarray:
    """A mask image as a bool [H, W] array, upright (EXIF orientation applied). The rule:

    - with an alpha channel, or a transparent colour (PNG tRNS), that is not fully opaque (a
      cutout): alpha >= 128;
    - palette (P, or PA with opaque alpha): index != 0 (index 0 is background, as in DAVIS);
    - 1, L, I, I;16 (and LA with opaque alpha): value != 0; F: value != 0;
    - any other mode (RGB, CMYK, ...): any channel of its RGB != 0;
    - a lossy file (JPEG): >= 128 instead of != 0 (said once per file), so compression noise around
      the object is not counted.
    """
    refuse_animated(image, source)
    turn = orientation(image)
    threshold = LOSSY_THRESHOLD if _lossy(image, source) else 1
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:  # a cutout by a transparent colour
        image = image.convert("LA" if image.mode == "L" else "RGBA")
    mode = image.mode
    if mode in ALPHA_MODES:
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min(initial=255) < 255:
            return oriented_array(alpha >= ALPHA_THRESHOLD, turn)
        # fully opaque: the colour or index channels decide, as without alpha
        if mode in ("RGBA", "RGBa"):
            image, mode = image.convert("RGB"), "RGB"
        else:
            image, mode = image.getchannel(0), ("P" if mode == "PA" else "L")
    if mode == "P":
        mask = np.asarray(image) != 0
    elif mode in ("1", "L", "I", "F", *SIXTEEN_BIT_MODES):
        values = np.asarray(image)
        mask = values >= threshold if mode == "L" else values != 0
    else:
        mask = (np.asarray(image.convert("RGB")) >= threshold).any(axis=2)
    return oriented_array(mask, turn)


def label_map(image: Image.Image, source: object) -> np.ndarray:
    """An annotation image whose pixel values are object or class ids, as an integer [H, W] array,
    upright: P (palette index), L, I, I;16 (value), 1 (0 / 1), LA / PA (the first channel: the
    alpha of an id map says nothing). A colour or lossy file is a `DataError`: ids do not survive
    a colour conversion or JPEG compression."""
    refuse_animated(image, source)
    if image.format in LOSSY_FORMATS:
        raise DataError(f"{source}: an annotation of object ids saved as {image.format}, whose compression changes "
                        "the ids; use the dataset release's PNG")
    mode = image.mode
    if mode in ("P", "L", "I", *SIXTEEN_BIT_MODES):
        labels = np.asarray(image)
    elif mode == "1":
        labels = np.asarray(image).astype(np.uint8)
    elif mode in ("PA", "LA"):
        labels = np.asarray(image.getchannel(0))
    else:
        raise DataError(f"{source}: annotation has mode {mode}; expected palette (P) or grayscale (L) indices where "
                        "each value is an object id")
    return oriented_array(labels, orientation(image))


def check_mask_size(mask: np.ndarray, image_size: tuple[int, int], mask_source: object, image_source: object) -> None:
    """A `DataError` naming the mask file and both sizes when `mask` [H, W] is not `image_size`
    (width, height); both are compared upright (after EXIF orientation)."""
    height, width = mask.shape[:2]
    if (width, height) != tuple(image_size):
        raise DataError(f"mask {mask_source} is {width}x{height} but image {image_source} is "
                        f"{image_size[0]}x{image_size[1]} (both after EXIF orientation); give a mask of the image's size")


def read_mask_file(path: Path | str, rule: str = "binary") -> np.ndarray:
    """The mask file at `path` by `rule`: "binary" (`binary_mask`) or "labels" (`label_map`).
    `FileNotFoundError` / `OSError` when it cannot be read, `DataError` when it breaks the rule."""
    with Image.open(path) as image:
        return binary_mask(image, path) if rule == "binary" else label_map(image, path)

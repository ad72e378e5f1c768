"""Pictures of a prediction: mask PNG, overlay (image + mask + argmax star), colour-mapped heatmap.

They are written with `refam.io.files` (atomically: an interrupted run never leaves half a file).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from refam.prompts.point import upsample


# The palette of DAVIS 2017 annotation PNGs: the PASCAL VOC colours for ids 0-21 (191 where VOC
# has 192), then grey levels.
_DAVIS_HEAD = [
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128),
    (128, 128, 128), (64, 0, 0), (191, 0, 0), (64, 128, 0), (191, 128, 0), (64, 0, 128), (191, 0, 128),
    (64, 128, 128), (191, 128, 128), (0, 64, 0), (128, 64, 0), (0, 191, 0), (128, 191, 0), (0, 64, 128),
    (128, 64, 128),
]
DAVIS_PALETTE: list[int] = [v for rgb in _DAVIS_HEAD for v in rgb] + [v for i in range(22, 256) for v in (i, i, i)]

MASK_COLOUR = (30, 144, 255)
STAR_FILL, STAR_EDGE = (255, 215, 0), (0, 0, 0)


def star_polygon(x: float, y: float, radius: float) -> list[tuple[float, float]]:
    """A five-pointed star centred on (x, y)."""
    points = []
    for i in range(10):
        r = radius if i % 2 == 0 else radius * 0.45
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((x + r * math.cos(angle), y + r * math.sin(angle)))
    return points


def draw_star(image: Image.Image, point: tuple[float, float]) -> Image.Image:
    out = image.copy()
    radius = max(5.0, min(image.size) / 30)
    ImageDraw.Draw(out).polygon(star_polygon(*point, radius), fill=STAR_FILL, outline=STAR_EDGE)
    return out


def mask_image(mask: np.ndarray) -> Image.Image:
    """The mask as a binary PNG (0 / 255)."""
    return Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, mode="L")


def mask_outline(mask: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The mask's rim, inside the mask: the outer half of `width` pixels and the inner half."""
    from scipy import ndimage

    outer = max(1, width // 2)
    first = ndimage.binary_erosion(mask, iterations=outer, border_value=0)
    second = ndimage.binary_erosion(first, iterations=max(1, width - outer), border_value=0) if width > 1 else first
    return mask & ~first, first & ~second


def overlay(image: Image.Image, mask: np.ndarray, point: tuple[float, float] | None, alpha: float = 0.5) -> Image.Image:
    """The image with the mask tinted and outlined (white, then black, inside its edge: seen on any
    colour, a blue or green object included), and the point as a star (none for frames without one)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    selected = np.asarray(mask, dtype=bool)
    pixels[selected] = (1 - alpha) * pixels[selected] + alpha * np.array(MASK_COLOUR, dtype=np.float32)
    white, black = mask_outline(selected, max(2, round(min(selected.shape) / 128)))
    pixels[white], pixels[black] = 255.0, 0.0
    picture = Image.fromarray(pixels.round().astype(np.uint8))
    return draw_star(picture, point) if point is not None else picture


def heatmap_image(heatmap: torch.Tensor, size: tuple[int, int], point: tuple[float, float] | None = None,
                  colormap: str = "inferno") -> Image.Image:
    """A token-grid heatmap [h, w], upsampled to `size` (width, height) and colour-mapped."""
    from matplotlib import colormaps

    width, height = size
    values = upsample(heatmap[None].float(), height, width)[0].clamp(0, 1).numpy()
    coloured = (colormaps[colormap](values)[..., :3] * 255).round().astype(np.uint8)
    image = Image.fromarray(coloured)
    return draw_star(image, point) if point is not None else image


# Pictures of small images are enlarged by a whole factor (each pixel a square: nothing invented)
# until the short side reaches DISPLAY_SIDE, the long side staying within DISPLAY_MAX.
DISPLAY_SIDE, DISPLAY_MAX = 512, 4096


def display_scale(size: tuple[int, int]) -> int:
    width, height = size
    return max(1, min(math.ceil(DISPLAY_SIDE / min(width, height)), DISPLAY_MAX // max(width, height)))


def enlarged(image: Image.Image, mask: np.ndarray | None, scale: int) -> tuple[Image.Image, np.ndarray | None]:
    if scale == 1:
        return image, mask
    big = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    return big, None if mask is None else np.asarray(mask, dtype=bool).repeat(scale, 0).repeat(scale, 1)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def colour_bar(height: int, colormap: str = "inferno", label: str = "heat") -> Image.Image:
    """A vertical colour bar `height` pixels tall, 1 at the top and 0 at the bottom, with ticks."""
    from matplotlib import colormaps

    font = _font(max(10, height // 32))
    bar, margin = max(12, height // 24), max(6, height // 64)
    ramp = np.linspace(1.0, 0.0, height)[:, None].repeat(bar, 1)
    coloured = Image.fromarray((colormaps[colormap](ramp)[..., :3] * 255).round().astype(np.uint8))
    text_width = max(int(font.getlength(t)) for t in ("0.5", label))
    panel = Image.new("RGB", (margin + bar + margin + text_width + margin, height), (255, 255, 255))
    panel.paste(coloured, (margin, 0))
    draw = ImageDraw.Draw(panel)
    draw.rectangle((margin, 0, margin + bar - 1, height - 1), outline=(0, 0, 0))
    for value in (1.0, 0.5, 0.0):
        y = round((1.0 - value) * (height - 1))
        draw.line((margin + bar, y, margin + bar + margin // 2, y), fill=(0, 0, 0))
        anchor = "la" if value == 1.0 else ("ld" if value == 0.0 else "lm")
        draw.text((margin + bar + margin, y), f"{value:g}", fill=(0, 0, 0), font=font, anchor=anchor)
    draw.text((margin + bar + margin, height // 4), label, fill=(90, 90, 90), font=font, anchor="lm")
    return panel


def heatmap_overlay(image: Image.Image, heatmap: torch.Tensor, point: tuple[float, float] | None = None,
                    alpha: float = 0.6, colormap: str = "inferno") -> Image.Image:
    """The heatmap [h, w] (min-max normalised) colour-mapped over the image, the point as a star,
    and a colour bar at the right; small images are enlarged (`display_scale`)."""
    from matplotlib import colormaps

    scale = display_scale(image.size)
    base, _ = enlarged(image.convert("RGB"), None, scale)
    values = upsample(heatmap[None].float(), base.height, base.width)[0].clamp(0, 1).numpy()
    coloured = colormaps[colormap](values)[..., :3] * 255
    pixels = (1 - alpha) * np.asarray(base, dtype=np.float32) + alpha * coloured
    picture = Image.fromarray(pixels.round().astype(np.uint8))
    if point is not None:
        picture = draw_star(picture, (point[0] * scale, point[1] * scale))
    bar = colour_bar(picture.height, colormap)
    out = Image.new("RGB", (picture.width + bar.width, picture.height), (255, 255, 255))
    out.paste(picture, (0, 0))
    out.paste(bar, (picture.width, 0))
    return out


def mask_overlay(image: Image.Image, mask: np.ndarray, point: tuple[float, float] | None) -> Image.Image:
    """`overlay` on the image enlarged by `display_scale`, so a small image's outline stays thin."""
    scale = display_scale(image.size)
    base, big = enlarged(image.convert("RGB"), mask, scale)
    return overlay(base, big, None if point is None else (point[0] * scale, point[1] * scale))


def prediction_pictures(image: Image.Image, prediction) -> dict[str, Image.Image]:
    """What `refam predict` writes and `refam serve` shows for one expression: the mask (0/255, the
    image's size), the overlay (mask, outline, star) and the heatmap over the image with a colour bar."""
    return {"mask": mask_image(prediction.mask),
            "overlay": mask_overlay(image, prediction.mask, prediction.point),
            "heatmap": heatmap_overlay(image, prediction.heatmap, prediction.point)}

"""The layers of a result card's picture, as the browser stacks them: the image, the mask's outline
in a colour that contrasts with the object and its surroundings (and a light fill the page may show),
and colour-mapped maps on one colour scale. The point is drawn by the page (`star_points`), so it
stays sharp at any size. Each layer is a small PNG or JPEG the page embeds as a data URI."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from refam.visualize import display_scale, mask_outline, star_polygon

DISPLAY_LONG = 1024  # the longest side a picture is drawn at (a larger image is shrunk for the page)
COLORMAP = "inferno"
FILL_ALPHA = 0.3  # the light fill, in the outline's colour
# outline colours to choose from: saturated, light and dark ones, so one contrasts with any object and surroundings
OUTLINE_COLOURS = ((0, 255, 255), (255, 0, 255), (255, 255, 0), (0, 255, 0), (30, 144, 255), (255, 255, 255), (0, 0, 0))


def data_uri(picture: Image.Image, kind: str = "PNG") -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format=kind, **({"quality": 90} if kind == "JPEG" else {"optimize": True}))
    return f"data:image/{kind.lower()};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def display_size(size: tuple[int, int]) -> tuple[int, int]:
    """The size the outline is drawn at: a small image enlarged by a whole factor (`display_scale`,
    each pixel a square), a large one shrunk to DISPLAY_LONG on its long side."""
    scale = display_scale(size)
    width, height = size[0] * scale, size[1] * scale
    if max(width, height) > DISPLAY_LONG:
        factor = DISPLAY_LONG / max(width, height)
        width, height = max(1, round(width * factor)), max(1, round(height * factor))
    return width, height


def base_layer(image: Image.Image) -> tuple[str, bool]:
    """The image as a data URI, and whether the page enlarges it (then shown pixelated, each pixel a
    square, as `refam predict` enlarges it): a small image as it is (PNG), a large one shrunk (JPEG)."""
    size = display_size(image.size)
    if size[0] >= image.width:
        return data_uri(image.convert("RGB")), size[0] > image.width
    return data_uri(image.convert("RGB").resize(size, Image.Resampling.LANCZOS), "JPEG"), False


def contrasting_colour(image: Image.Image, mask: np.ndarray) -> tuple[int, int, int]:
    """Of OUTLINE_COLOURS, the one that stands out most along the mask's edge: the object's pixels
    just inside it and the surroundings' just outside, the nearest tenth of them counting (a colour
    close to a neighbouring object's would vanish where the two touch)."""
    from scipy import ndimage

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    ring = max(1, min(mask.shape) // 64)
    edge = ndimage.binary_dilation(mask, iterations=ring) & ~ndimage.binary_erosion(mask, iterations=ring, border_value=0)
    around = pixels[edge] if edge.any() else pixels.reshape(-1, 3)  # an empty mask: the whole image
    candidates = np.array(OUTLINE_COLOURS, dtype=np.float32)
    distances = np.linalg.norm(around[None, :, :] - candidates[:, None, :], axis=2)  # [colours, pixels]
    return OUTLINE_COLOURS[int(np.argmax(np.percentile(distances, 10, axis=1)))]


def mask_layers(image: Image.Image, mask: np.ndarray) -> tuple[str, str, tuple[int, int, int]]:
    """The mask's outline (drawn inside its edge, so the object's extent is the outline's outer edge)
    and its light fill, each a transparent PNG at `display_size`, and the outline's colour."""
    colour = contrasting_colour(image, mask)
    width, height = display_size(image.size)
    shown = Image.fromarray(np.asarray(mask, dtype=bool)).resize((width, height), Image.Resampling.NEAREST)
    big = np.asarray(shown, dtype=bool)
    outer, inner = mask_outline(big, max(2, round(min(width, height) / 170)))
    layers = []
    for selected, alpha in ((outer | inner, 255), (big, round(255 * FILL_ALPHA))):
        rgba = np.zeros((height, width, 4), dtype=np.uint8)
        rgba[selected] = (*colour, alpha)
        layers.append(data_uri(Image.fromarray(rgba, mode="RGBA")))
    return layers[0], layers[1], colour


def map_layer(values: np.ndarray, low: float, high: float) -> str:
    """A token-grid map [h, w] colour-mapped on the scale low..high, at the grid's size: the browser
    stretches it over the image, smoothly, as `refam.prompts.point.upsample` does (cell centres at
    pixel centres)."""
    from matplotlib import colormaps

    span = high - low
    scaled = np.clip((values - low) / span, 0.0, 1.0) if span > 0 else np.zeros_like(values)
    coloured = (colormaps[COLORMAP](scaled)[..., :3] * 255).round().astype(np.uint8)
    return data_uri(Image.fromarray(coloured))


def colour_scale_css(stops: int = 9) -> str:
    """The colour map as a CSS gradient, low at the left: the colour bar under a map."""
    from matplotlib import colormaps

    colours = colormaps[COLORMAP](np.linspace(0.0, 1.0, stops))[:, :3] * 255
    return "linear-gradient(to right, " + ", ".join(
        f"rgb({r:.0f} {g:.0f} {b:.0f}) {100 * i / (stops - 1):.1f}%" for i, (r, g, b) in enumerate(colours)) + ")"


def star_points(point: tuple[float, float], size: tuple[int, int]) -> str:
    """The point's star as an SVG polygon's points, in image pixels."""
    return " ".join(f"{x:.2f},{y:.2f}" for x, y in star_polygon(*point, max(2.0, min(size) / 28)))

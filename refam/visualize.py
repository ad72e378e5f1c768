"""Pictures of a prediction: mask PNG, overlay (image + mask + argmax star), colour-mapped heatmap.

Files are written atomically (a temporary file in the same folder, then a rename), so an
interrupted run never leaves a half-written image behind.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from refam.aggregators.point import upsample


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


def current_umask() -> int:
    """The process's umask (read from /proc where there is one: setting it to read it back would
    briefly change it for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename, so a reader
    never sees half a file. The file gets the mode `open()` would give it (0666 less the umask),
    not the temporary file's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            os.fchmod(file.fileno(), 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(image: Image.Image, path: Path) -> None:
    write_atomic(path, png_bytes(image))


def save_json(record: dict, path: Path) -> None:
    write_atomic(path, (json.dumps(record, indent=1, ensure_ascii=False) + "\n").encode())


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


def overlay(image: Image.Image, mask: np.ndarray, point: tuple[float, float] | None, alpha: float = 0.5) -> Image.Image:
    """The image with the mask tinted, and the point as a star (none for frames without a point)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    selected = np.asarray(mask, dtype=bool)
    pixels[selected] = (1 - alpha) * pixels[selected] + alpha * np.array(MASK_COLOUR, dtype=np.float32)
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

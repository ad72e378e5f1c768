"""Scenes of the kind a user draws: flat shapes in shades of the model's colours, on a plain
background of any grey level or colour, at any size and aspect ratio.

This is the family refam-shapes v2 is trained and held out on (`make_varied_scene`); the fixed-
background scenes of `refam.shapes.scenes` (the demo set) are one corner of it. Each shape is 10-35 %
of the image width across, shapes do not touch, and every shape stands out from the background
(RGB distance at least `MIN_CONTRAST`), since a user draws shapes that can be seen. Deterministic by
(split, index), with split seeds disjoint from the fixed-background scenes'.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

from refam.shapes.scenes import COLOURS, SHAPES, Scene, ShapeObject, _draw, referrals_for

VARIED_SPLIT_SEEDS = {"train": 11, "demo": 12, "test": 13}
MIN_CONTRAST = 90.0  # RGB distance between every shape and the background
WIDTH_RANGE = (0.10, 0.35)  # a shape's extent across, as a fraction of the image width
BIG = 0.22  # shapes at least this wide (fraction of the width) are "big", the rest "small"


def shade(colour: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """A random shade of a named colour: hue within +-0.03 of the palette's, any strong saturation,
    a value spread around the palette's (black: any dark, greyish tone)."""
    if colour == "black":
        value = rng.uniform(0.0, 0.22)
        rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.4), value)
    else:
        h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in COLOURS[colour]))
        hue = (h + rng.uniform(-0.03, 0.03)) % 1.0
        # dark orange and yellow read as brown and olive: those two stay bright
        low = {"purple": 0.45, "orange": 0.8, "yellow": 0.8}.get(colour, 0.6)
        value = rng.uniform(low, 0.8) if colour == "purple" else rng.uniform(low, 1.0)
        rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.65, 1.0), value)
    return tuple(int(round(255 * c)) for c in rgb)


def background(rng: np.random.Generator) -> tuple[int, int, int]:
    """Half grey levels (0-255), half colours of any hue, saturation and brightness."""
    if rng.random() < 0.5:
        g = int(rng.integers(0, 256))
        return (g, g, g)
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 1))
    return tuple(int(round(255 * c)) for c in rgb)


def _contrast(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=float)))


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height): half the scenes 128 x 128, the rest 96-256 pixels a side at aspect 1:2 to 2:1."""
    if rng.random() < 0.5:
        return 128, 128
    width = int(rng.integers(96, 257))
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    return width, int(np.clip(round(width / aspect), 64, 320))


def make_varied_scene(split: str, index: int, width: int | None = None, height: int | None = None,
                      count: int | None = None) -> Scene:
    """Scene `index` of `split`: 2-4 non-touching flat shapes on a plain background."""
    rng = np.random.default_rng([VARIED_SPLIT_SEEDS[split], index])
    drawn_size = image_size(rng)
    width, height = width or drawn_size[0], height or drawn_size[1]
    count = count or int(rng.integers(2, 5))
    bg = background(rng)
    placed: list[tuple[str, str, tuple[int, int, int], float, float, float]] = []
    for _ in range(count):
        for _attempt in range(60):
            shape = SHAPES[rng.integers(len(SHAPES))]
            colour = list(COLOURS)[rng.integers(len(COLOURS))]
            rgb = shade(colour, rng)
            if _contrast(rgb, bg) < MIN_CONTRAST:
                continue
            r = rng.uniform(*WIDTH_RANGE) * width / 2
            reach = r * (1.1 if shape == "triangle" else 1.0)
            if 2 * reach + 4 > min(width, height):
                continue
            cx, cy = rng.uniform(reach + 2, width - reach - 2), rng.uniform(reach + 2, height - reach - 2)
            if all(np.hypot(cx - x, cy - y) > (reach + rr * 1.1) + 3 for _, _, _, x, y, rr in placed):
                placed.append((shape, colour, rgb, float(cx), float(cy), float(r)))
                break
    image = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(image)
    objects = []
    for shape, colour, rgb, cx, cy, r in placed:
        _draw(draw, shape, cx, cy, r, rgb)
        alone = Image.new("L", (width, height), 0)
        _draw(ImageDraw.Draw(alone), shape, cx, cy, r, 1)
        mask = np.asarray(alone).astype(bool)
        size_name = "big" if 2 * r >= BIG * width else "small"
        objects.append(ShapeObject(shape, colour, size_name, cx, cy, mask, int(mask.sum())))
    if rng.random() < 0.3:  # sometimes a faint texture, as a scanned or compressed drawing has
        pixels = np.asarray(image).astype(np.int16) + rng.integers(-5, 6, size=(height, width, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return Scene(image=image, objects=objects, referrals=referrals_for(objects, width), size=width)

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
from dataclasses import dataclass

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


def image_size(rng: np.random.Generator, heights: tuple[int, int] = (64, 320)) -> tuple[int, int]:
    """(width, height): half the scenes 128 x 128, the rest 96-256 pixels wide at aspect 1:2 to 2:1,
    the height kept within `heights`."""
    if rng.random() < 0.5:
        return 128, 128
    width = int(rng.integers(96, 257))
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    return width, int(np.clip(round(width / aspect), *heights))


@dataclass
class Layout:
    """What a varied scene is drawn from: the background and each shape (shape, colour name, RGB,
    centre x, centre y, half-extent r), in pixels of a width x height image."""

    width: int
    height: int
    background: tuple[int, int, int]
    shapes: list[tuple[str, str, tuple[int, int, int], float, float, float]]
    texture_seed: int | None = None  # faint per-pixel noise, as a scanned or compressed drawing has


def _reach(shape: str, r: float) -> float:
    return r * (1.1 if shape == "triangle" else 1.0)


def fits(layout: Layout, shape: str, cx: float, cy: float, r: float, ignore: int | None = None) -> bool:
    """Inside the image with a 2 pixel margin, and 3 pixels clear of every other shape."""
    reach = _reach(shape, r)
    if not (reach + 2 <= cx <= layout.width - reach - 2 and reach + 2 <= cy <= layout.height - reach - 2):
        return False
    return all(np.hypot(cx - x, cy - y) > reach + _reach(s, rr) + 3
               for i, (s, _, _, x, y, rr) in enumerate(layout.shapes) if i != ignore)


def draw_layout(rng: np.random.Generator, width: int, height: int, count: int) -> Layout:
    layout = Layout(width, height, background(rng), [])
    for _ in range(count):
        for _attempt in range(60):
            shape = SHAPES[rng.integers(len(SHAPES))]
            colour = list(COLOURS)[rng.integers(len(COLOURS))]
            rgb = shade(colour, rng)
            if _contrast(rgb, layout.background) < MIN_CONTRAST:
                continue
            r = rng.uniform(*WIDTH_RANGE) * width / 2
            reach = _reach(shape, r)
            if 2 * reach + 4 > min(width, height):
                continue
            cx, cy = rng.uniform(reach + 2, width - reach - 2), rng.uniform(reach + 2, height - reach - 2)
            if fits(layout, shape, cx, cy, r):
                layout.shapes.append((shape, colour, rgb, float(cx), float(cy), float(r)))
                break
    layout.texture_seed = int(rng.integers(2**31)) if rng.random() < 0.3 else None
    return layout


def render_layout(layout: Layout) -> Scene:
    """The image, each shape's mask (shapes never touch, so visible = whole) and its expressions."""
    width, height = layout.width, layout.height
    image = Image.new("RGB", (width, height), layout.background)
    draw = ImageDraw.Draw(image)
    objects = []
    for shape, colour, rgb, cx, cy, r in layout.shapes:
        _draw(draw, shape, cx, cy, r, rgb)
        alone = Image.new("L", (width, height), 0)
        _draw(ImageDraw.Draw(alone), shape, cx, cy, r, 1)
        mask = np.asarray(alone).astype(bool)
        size_name = "big" if 2 * r >= BIG * width else "small"
        objects.append(ShapeObject(shape, colour, size_name, cx, cy, mask, int(mask.sum())))
    if layout.texture_seed is not None:
        noise = np.random.default_rng(layout.texture_seed).integers(-5, 6, size=(height, width, 3))
        image = Image.fromarray(np.clip(np.asarray(image).astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return Scene(image=image, objects=objects, referrals=referrals_for(objects, width), size=width)


def varied_layout(split: str, index: int, width: int | None = None, height: int | None = None,
                  count: int | None = None) -> Layout:
    rng = np.random.default_rng([VARIED_SPLIT_SEEDS[split], index])
    drawn_size = image_size(rng)
    return draw_layout(rng, width or drawn_size[0], height or drawn_size[1], count or int(rng.integers(2, 5)))


def make_varied_scene(split: str, index: int, width: int | None = None, height: int | None = None,
                      count: int | None = None) -> Scene:
    """Scene `index` of `split`: 2-4 non-touching flat shapes on a plain background; `width` and
    `height` override the drawn image size, `count` the number of shapes (fewer when they do not fit)."""
    return render_layout(varied_layout(split, index, width, height, count))

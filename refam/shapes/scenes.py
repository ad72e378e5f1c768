"""Procedural scenes of coloured shapes with referring expressions and exact masks.

Deterministic by seed: scene `i` of a split is drawn from `numpy.random.default_rng([split seed, i])`,
so train and evaluation scenes never coincide (different split seeds) and any scene can be
regenerated alone. Masks are the visible pixels of each object (later objects occlude earlier ones).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import numpy as np
from PIL import Image, ImageDraw

from refam.embedded.palette import COLOURS, SHAPES, SIZES  # the models' card names them too

BACKGROUND = (225, 225, 220)
SPLIT_SEEDS = {"train": 1, "demo": 2, "test": 3}
MARGIN = 0.12  # fraction of the image a spatial relation must hold by


@dataclass
class ShapeObject:
    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    mask: np.ndarray = field(repr=False)  # visible pixels, bool [H, W]
    full_area: int = 0  # pixels it would cover unoccluded


@dataclass
class Referral:
    text: str
    target: int  # index into Scene.objects
    kind: str


@dataclass
class Scene:
    image: Image.Image | None  # dropped once encoded, when only the objects are needed
    objects: list[ShapeObject]
    referrals: list[Referral]
    size: int = 128

    def caption(self) -> str:
        """The objects listed, as the demo conditions the denoising stream on."""
        return describe_objects([(o.size, o.colour, o.shape, None) for o in self.objects])


def describe_objects(parts: list[tuple[str | None, str | None, str, str | None]]) -> str:
    phrases = []
    for size, colour, shape, where in parts:
        words = ["a"] + [w for w in (size, colour, shape) if w] + ([where] if where else [])
        phrases.append(" ".join(words))
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r * 1.1), (cx + r * 1.1, cy + r * 0.8), (cx - r * 1.1, cy + r * 0.8)]
    return None


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    polygon = _polygon(shape, cx, cy, r)
    if polygon is None:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(polygon, fill=fill)


def render(objects: list[tuple[str, str, str, float, float]], size: int = 128, noise: np.random.Generator | None = None):
    """Draw (shape, colour, size name, cx, cy) in order; returns the image and visible masks."""
    scale = size / 128
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    labels = Image.new("L", (size, size), 0)
    label_draw = ImageDraw.Draw(labels)
    for k, (shape, colour, size_name, cx, cy) in enumerate(objects):
        r = SIZES[size_name] * scale
        _draw(draw, shape, cx, cy, r, COLOURS[colour])
        _draw(label_draw, shape, cx, cy, r, k + 1)
    label_array = np.asarray(labels)
    masks = [label_array == k + 1 for k in range(len(objects))]
    full_areas = []
    for shape, _, size_name, cx, cy in objects:
        alone = Image.new("L", (size, size), 0)
        _draw(ImageDraw.Draw(alone), shape, cx, cy, SIZES[size_name] * scale, 1)
        full_areas.append(int(np.asarray(alone).sum()))
    if noise is not None:  # faint texture so that the model cannot rely on exact flat colours
        pixels = np.asarray(image).astype(np.int16) + noise.integers(-6, 7, size=(size, size, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image, masks, full_areas


def _unique(objects: list[ShapeObject], target: int, key) -> bool:
    value = key(objects[target])
    return sum(key(o) == value for o in objects) == 1


def referrals_for(objects: list[ShapeObject], size: int) -> list[Referral]:
    """Every unambiguous expression of the supported kinds, for every object."""
    margin = MARGIN * size
    out: list[Referral] = []
    for t, o in enumerate(objects):
        if o.mask.sum() < 0.5 * o.full_area:  # mostly hidden: not a fair target
            continue
        if _unique(objects, t, lambda x: (x.colour, x.shape)):
            out.append(Referral(f"the {o.colour} {o.shape}", t, "colour+shape"))
        elif _unique(objects, t, lambda x: (x.size, x.colour, x.shape)):
            out.append(Referral(f"the {o.size} {o.colour} {o.shape}", t, "size+colour+shape"))
        if _unique(objects, t, lambda x: x.shape):
            out.append(Referral(f"the {o.shape}", t, "shape"))
        if _unique(objects, t, lambda x: x.colour):
            out.append(Referral(f"the {o.colour} {'shape' if t % 2 else 'object'}", t, "colour"))
        others = [x for i, x in enumerate(objects) if i != t]
        if all(o.cx < x.cx - margin for x in others):
            out.append(Referral("the object on the left", t, "absolute position"))
        if all(o.cx > x.cx + margin for x in others):
            out.append(Referral("the object on the right", t, "absolute position"))
        same = [x for i, x in enumerate(objects) if i != t and x.shape == o.shape]
        if same and all(o.cy < x.cy - margin for x in same):
            out.append(Referral(f"the {o.shape} at the top", t, "position within shape"))
        if same and all(o.cy > x.cy + margin for x in same):
            out.append(Referral(f"the {o.shape} at the bottom", t, "position within shape"))
        if _unique(objects, t, lambda x: x.shape):
            for j, anchor in enumerate(objects):
                if j == t or not _unique(objects, j, lambda x: x.shape):
                    continue
                if o.cx < anchor.cx - margin:
                    out.append(Referral(f"the {o.shape} left of the {anchor.shape}", t, "relation"))
                elif o.cx > anchor.cx + margin:
                    out.append(Referral(f"the {o.shape} right of the {anchor.shape}", t, "relation"))
    return out


class _Still(NamedTuple):
    """A still object as drawn, in the (shape, colour, size name, cx, cy) order `render` takes."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float


Placed = TypeVar("Placed", _Still, "MovingObject")


def _radius(size_name: str, size: int) -> float:
    return SIZES[size_name] * size / 128


def _place(rng: np.random.Generator, size: int, propose: Callable[[str, str, str, float], Placed],
           distance: Callable[[Placed, Placed], float]) -> list[Placed]:
    """2-4 objects, each drawn up to 20 times until it keeps clear of every placed object of its colour.

    The looks (shape, colour, size) are drawn here; `propose(shape, colour, size name, radius)` draws
    the rest (position, motion) from the same `rng`, and `distance(placed, candidate)` is the nearest
    the two ever come. Overlaps are allowed (the later object is in front), but two objects of one
    colour must never touch: they would merge into one blob."""
    placed: list[Placed] = []
    for _ in range(int(rng.integers(2, 5))):
        for _attempt in range(20):
            shape = SHAPES[rng.integers(len(SHAPES))]
            colour = list(COLOURS)[rng.integers(len(COLOURS))]
            size_name = list(SIZES)[rng.integers(len(SIZES))]
            r = _radius(size_name, size)
            candidate = propose(shape, colour, size_name, r)
            if all(o.colour != colour or distance(o, candidate) >= (r + _radius(o.size, size)) * 1.5 for o in placed):
                placed.append(candidate)
                break
    return placed


def make_scene(split: str, index: int, size: int = 128) -> Scene:
    rng = np.random.default_rng([SPLIT_SEEDS[split], index])

    def at_rest(shape: str, colour: str, size_name: str, r: float) -> _Still:
        cx, cy = (float(v) for v in rng.uniform(r + 2, size - r - 2, size=2))
        return _Still(shape, colour, size_name, cx, cy)

    placed = _place(rng, size, at_rest, lambda a, b: float(np.hypot(b.cx - a.cx, b.cy - a.cy)))
    image, masks, full_areas = render(placed, size, noise=rng)
    objects = [ShapeObject(s, c, z, x, y, m, a) for (s, c, z, x, y), m, a in zip(placed, masks, full_areas)]
    return Scene(image=image, objects=objects, referrals=referrals_for(objects, size), size=size)


def training_caption(scene: Scene, rng: np.random.Generator, omit_colour: float = 0.0) -> str:
    """A randomised description of every object (attributes and positions sometimes omitted),
    so that colour, shape, size and position words all have to be grounded by the model.

    `omit_colour` is the chance that an object is named without its colour: colour is the easiest
    thing to match in a noisy image, and a model that always gets it tends to ground only colour
    words and to read the shape from the colour word's context instead of matching shape words."""
    size = scene.size
    parts = []
    order = rng.permutation(len(scene.objects))
    for k in order:
        o = scene.objects[k]
        where = None
        if rng.random() < 0.5:
            horizontal = "left" if o.cx < size / 3 else "right" if o.cx > 2 * size / 3 else None
            vertical = "top" if o.cy < size / 3 else "bottom" if o.cy > 2 * size / 3 else None
            if horizontal and vertical:
                where = f"at the {vertical} {horizontal}"
            elif horizontal or vertical:
                where = f"on the {horizontal}" if horizontal else f"at the {vertical}"
        # sometimes a generic noun, as in "the red object" / "the object on the left"
        noun = o.shape if rng.random() < 0.8 else ("object" if rng.random() < 0.5 else "shape")
        colour = None if omit_colour and noun == o.shape and rng.random() < omit_colour else o.colour
        parts.append((o.size if rng.random() < 0.6 else None, colour, noun, where))
    return describe_objects(parts)


# -- moving scenes (clips) -------------------------------------------------------------------------

CLIP_SEED = 7  # namespaces clip draws, so clip i of a split is not a moving copy of scene i


@dataclass
class MovingObject:
    """A shape moving along a straight line at constant velocity.

    The velocity is a whole number of pixels per frame, so the object's unoccluded mask in frame
    t + 1 is exactly its mask in frame t shifted by (vx, vy)."""

    shape: str
    colour: str
    size: str
    x0: float  # centre in frame 0
    y0: float
    vx: int  # pixels per frame
    vy: int

    def centre(self, t: int) -> tuple[float, float]:
        return self.x0 + self.vx * t, self.y0 + self.vy * t


@dataclass
class ClipFrame:
    image: Image.Image
    masks: list[np.ndarray]  # visible pixels per object (Clip.objects order), bool [H, W], disjoint
    full_areas: list[int]  # pixels each object would cover unoccluded


@dataclass
class Clip:
    """A short video of moving shapes. Frames are rendered on demand (deterministically), so a
    long clip never has to be in memory. Objects are drawn in list order: where two overlap, the
    later one is in front and the earlier one's visible mask loses those pixels."""

    objects: list[MovingObject]
    referrals: list[Referral]  # judged on frame 0; `target` indexes `objects`
    num_frames: int
    size: int
    noise_seed: tuple[int, ...]

    def frame(self, t: int) -> ClipFrame:
        if not 0 <= t < self.num_frames:
            raise IndexError(f"frame {t} outside a clip of {self.num_frames} frames")
        placed = [(o.shape, o.colour, o.size, *o.centre(t)) for o in self.objects]
        image, masks, full_areas = render(placed, self.size, noise=np.random.default_rng([*self.noise_seed, t]))
        return ClipFrame(image, masks, full_areas)

    def frames(self):
        """The frames in order, one at a time."""
        for t in range(self.num_frames):
            yield self.frame(t)

    def first_scene(self) -> Scene:
        """Frame 0 as a still `Scene` (the expressions are judged on it)."""
        first = self.frame(0)
        return Scene(first.image, _shape_objects(self.objects, first, 0), list(self.referrals), self.size)

    def caption(self) -> str:
        return describe_objects([(o.size, o.colour, o.shape, None) for o in self.objects])


def _shape_objects(objects: list[MovingObject], frame: ClipFrame, t: int) -> list[ShapeObject]:
    return [ShapeObject(o.shape, o.colour, o.size, *o.centre(t), mask, area)
            for o, mask, area in zip(objects, frame.masks, frame.full_areas)]


def _extent(shape: str, radius: float) -> float:
    """Half-width/height that bounds the drawn shape (triangles reach 1.1 r sideways and up)."""
    return radius * (1.1 if shape == "triangle" else 1.0)


def _velocity_range(start: float, lo: float, hi: float, frames: int, max_speed: int) -> range:
    """Whole-pixel velocities that keep start + v * (frames - 1) within [lo, hi]."""
    if frames < 2:
        return range(0, 1)
    span = frames - 1
    low = max(-max_speed, int(np.ceil((lo - start) / span)))
    high = min(max_speed, int(np.floor((hi - start) / span)))
    return range(low, high + 1)  # holds 0: start is inside [lo, hi]


def _draw_moving(rng: np.random.Generator, frames: int, size: int, max_speed: int) -> list[MovingObject]:
    def moving(shape: str, colour: str, size_name: str, r: float) -> MovingObject:
        lo, hi = _extent(shape, r) + 2, size - _extent(shape, r) - 2
        x0, y0 = (float(v) for v in rng.uniform(lo, hi, size=2))
        vxs, vys = _velocity_range(x0, lo, hi, frames, max_speed), _velocity_range(y0, lo, hi, frames, max_speed)
        choices = [(vx, vy) for vx in vxs for vy in vys if (vx, vy) != (0, 0)] or [(0, 0)]
        vx, vy = choices[rng.integers(len(choices))]
        return MovingObject(shape, colour, size_name, x0, y0, int(vx), int(vy))

    # the two come nearest in some frame: they must not touch in any
    return _place(rng, size, moving, lambda a, b: _min_distance(a, b, frames))


def _min_distance(a: MovingObject, b: MovingObject, frames: int) -> float:
    return min(float(np.hypot(*np.subtract(a.centre(t), b.centre(t)))) for t in range(frames))


def make_clip(split: str, index: int, frames: int = 8, size: int = 128, max_speed: int = 4,
              require_referable: bool = True) -> Clip:
    """Clip `index` of `split`: 2-4 shapes moving in straight lines, deterministic by (split, index).

    Each object moves at a constant whole-pixel velocity of at most `max_speed` per axis (non-zero
    where its room allows) and stays wholly inside the image in every frame. Expressions are those
    `referrals_for` makes for frame 0 (colour, shape, size, position, relation), so "the object on
    the left" means the leftmost object in the first frame. With `require_referable` the draw is
    repeated (up to 50 times, deterministically) until every object has at least one expression,
    as in Ref-DAVIS17 where every annotated object is referred to.
    """
    if frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {frames}")
    rng = np.random.default_rng([CLIP_SEED, SPLIT_SEEDS[split], index])
    noise_seed = (CLIP_SEED, SPLIT_SEEDS[split], index)
    clip = None
    for _attempt in range(50):
        objects = _draw_moving(rng, frames, size, max_speed)
        clip = Clip(objects, [], frames, size, noise_seed)
        first = clip.frame(0)
        clip.referrals = referrals_for(_shape_objects(objects, first, 0), size)
        if not require_referable or {r.target for r in clip.referrals} == set(range(len(objects))):
            break
    return clip

"""Clips of the kind a user draws to test video grounding: 2-4 flat shapes moving on straight lines
over a plain background, referred to by looks and by motion.

This is the family refam-shapes-video is trained and held out on (`make_motion_clip`). Shapes and
backgrounds are those of `refam.shapes.varied` (shades of the model's seven colours, any grey or
coloured background, every shape at RGB distance >= `MIN_CONTRAST` from it, 10-35 % of the width
across); frames are 96-256 pixels a side at aspect 1:2 to 2:1 (half the clips 128 x 128), 8-32 of
them. Each shape stands still or moves at constant velocity, and no two shapes touch in any frame,
so every mask is the whole shape. A third of the clips hold twins: two identical shapes (one shade,
one size) that move in opposite directions (passing each other or moving apart), or one moving
and one standing still, so that only motion tells them apart. Expressions name looks ("the red
circle", "the red object", "the circle") and motion ("the red circle moving left", "the moving
red circle", "the red circle standing still", "the object moving up"), each only where it picks
out exactly one shape over the whole clip. Deterministic by (split, index), with split seeds
disjoint from every other family's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from refam.shapes.scenes import COLOURS, SHAPES, ClipFrame, Referral, _draw, describe_objects
from refam.shapes.varied import MIN_CONTRAST, WIDTH_RANGE, _contrast, _reach, background, image_size, shade

MOTION_SPLIT_SEEDS = {"train": 31, "demo": 32, "test": 33}
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
SPEED_RANGE = (1.0, 3.0)  # pixels per frame at a 128-pixel-wide frame; scaled with the frame's size
FRAME_RANGE = (8, 32)
TWIN_RATE = 1 / 3
CLEARANCE = 3.0  # pixels between any two shapes, in every frame
MOTION_WORDS = ["moving", "standing", "still", "up", "down"]  # the words motion expressions add


@dataclass
class Mover:
    """A shape moving at constant velocity (pixels per frame); `motion` is its direction word,
    "still", or "diagonal" (moving, but along no one direction word)."""

    shape: str
    colour: str
    rgb: tuple[int, int, int]
    x0: float
    y0: float
    r: float
    vx: float
    vy: float
    motion: str

    def centre(self, t: float) -> tuple[float, float]:
        return self.x0 + self.vx * t, self.y0 + self.vy * t


@dataclass
class MotionClip:
    """A clip of `Mover`s over a plain background; frames are rendered on demand."""

    width: int
    height: int
    background: tuple[int, int, int]
    objects: list[Mover]
    num_frames: int
    referrals: list[Referral]
    texture_seed: int | None = None

    def frame(self, t: int) -> ClipFrame:
        if not 0 <= t < self.num_frames:
            raise IndexError(f"frame {t} outside a clip of {self.num_frames} frames")
        image = Image.new("RGB", (self.width, self.height), self.background)
        draw = ImageDraw.Draw(image)
        masks = []
        for o in self.objects:
            cx, cy = o.centre(t)
            _draw(draw, o.shape, cx, cy, o.r, o.rgb)
            alone = Image.new("L", (self.width, self.height), 0)
            _draw(ImageDraw.Draw(alone), o.shape, cx, cy, o.r, 1)
            masks.append(np.asarray(alone).astype(bool))
        if self.texture_seed is not None:
            noise = np.random.default_rng([self.texture_seed, t]).integers(-5, 6, size=(self.height, self.width, 3))
            image = Image.fromarray(np.clip(np.asarray(image).astype(np.int16) + noise, 0, 255).astype(np.uint8))
        return ClipFrame(image, masks, [int(m.sum()) for m in masks])

    def frames(self):
        for t in range(self.num_frames):
            yield self.frame(t)

    def caption(self) -> str:
        """The objects listed, with how each moves: what a caption of the clip would say."""
        parts = []
        for o in self.objects:
            where = {"still": "standing still", "diagonal": "moving"}.get(o.motion, f"moving {o.motion}")
            parts.append((None, o.colour, o.shape, where))
        return describe_objects(parts)


def _velocity(rng: np.random.Generator, motion: str, scale: float) -> tuple[float, float]:
    if motion == "still":
        return 0.0, 0.0
    speed = rng.uniform(*SPEED_RANGE) * scale
    if motion == "diagonal":
        angle = rng.choice([1, 3, 5, 7]) * np.pi / 4 + rng.uniform(-0.3, 0.3)
        return float(speed * np.cos(angle)), float(speed * np.sin(angle))
    dx, dy = DIRECTIONS[motion]
    return speed * dx, speed * dy


def _place(rng: np.random.Generator, width: int, height: int, frames: int, shape: str, r: float,
           vx: float, vy: float) -> tuple[float, float] | None:
    """A start centre whose whole path stays inside the frame with a 2 pixel margin, or None."""
    reach = _reach(shape, r) + 2
    travel_x, travel_y = vx * (frames - 1), vy * (frames - 1)
    lo_x, hi_x = reach - min(0.0, travel_x), width - reach - max(0.0, travel_x)
    lo_y, hi_y = reach - min(0.0, travel_y), height - reach - max(0.0, travel_y)
    if lo_x > hi_x or lo_y > hi_y:
        return None
    return float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))


def _bound(shape: str, r: float) -> float:
    """The radius of the circle around the drawn shape (a square's corner, a triangle's base vertex)."""
    return r * {"circle": 1.0, "square": 1.415, "triangle": 1.37}[shape]


def _clear(a: Mover, b: Mover, frames: int) -> bool:
    """Whether the two never come within CLEARANCE pixels of each other (bounding circles)."""
    t = np.arange(frames)
    gap = np.hypot(a.x0 - b.x0 + (a.vx - b.vx) * t, a.y0 - b.y0 + (a.vy - b.vy) * t)
    return bool(gap.min() > _bound(a.shape, a.r) + _bound(b.shape, b.r) + CLEARANCE)


def _draw_mover(rng, width, height, frames, bg, motion: str | None = None, looks=None) -> Mover | None:
    if looks is None:
        shape, colour = SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))]
        rgb = shade(colour, rng)
        r = rng.uniform(*WIDTH_RANGE) * min(width, height) / 2
    else:
        shape, colour, rgb, r = looks
    if _contrast(rgb, bg) < MIN_CONTRAST or 2 * _reach(shape, r) + 4 > min(width, height):
        return None
    if motion is None:
        motion = rng.choice(["still", "left", "right", "up", "down", "diagonal"], p=[0.2, 0.17, 0.17, 0.17, 0.17, 0.12])
    vx, vy = _velocity(rng, str(motion), min(width, height) / 128)
    start = _place(rng, width, height, frames, shape, r, vx, vy)
    if start is None:
        return None
    return Mover(shape, colour, rgb, *start, float(r), vx, vy, str(motion))


def _add(movers: list[Mover], candidate: Mover | None, frames: int) -> bool:
    if candidate is None or not all(_clear(candidate, o, frames) for o in movers):
        return False
    movers.append(candidate)
    return True


def _twins(rng, width, height, frames, bg) -> list[Mover]:
    """Two identical shapes that motion alone tells apart: moving in opposite directions (most pass
    each other, offset sideways, since they may never touch), or one moving and one standing still."""
    for _attempt in range(40):
        shape, colour = SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))]
        looks = (shape, colour, shade(colour, rng), rng.uniform(*WIDTH_RANGE) * min(width, height) / 2)
        direction = str(rng.choice(list(DIRECTIONS)))
        second = OPPOSITE[direction] if rng.random() < 0.6 else "still"
        pair: list[Mover] = []
        if _add(pair, _draw_mover(rng, width, height, frames, bg, direction, looks), frames) and \
                _add(pair, _draw_mover(rng, width, height, frames, bg, second, looks), frames):
            return pair
    return []


def heads(o: Mover, direction: str) -> bool:
    """Whether `o` moves at all towards `direction` (a diagonal mover heads two ways)."""
    dx, dy = DIRECTIONS[direction]
    return o.vx * dx + o.vy * dy > 0.25 * np.hypot(o.vx, o.vy) > 0


def motion_referrals(objects: list[Mover]) -> list[Referral]:
    """Every expression of the supported kinds that picks out exactly one object over the clip."""
    out: list[Referral] = []

    def unique(t: int, key) -> bool:
        return sum(key(o) == key(objects[t]) for o in objects) == 1

    for t, o in enumerate(objects):
        looks = (o.colour, o.shape)
        same = [x for x in objects if (x.colour, x.shape) == looks]
        if len(same) == 1:
            out.append(Referral(f"the {o.colour} {o.shape}", t, "colour+shape"))
        if unique(t, lambda x: x.colour):
            out.append(Referral(f"the {o.colour} {'shape' if t % 2 else 'object'}", t, "colour"))
        if unique(t, lambda x: x.shape):
            out.append(Referral(f"the {o.shape}", t, "shape"))
        if o.motion in DIRECTIONS and sum(x.motion == o.motion for x in same) == 1:
            out.append(Referral(f"the {o.colour} {o.shape} moving {o.motion}", t, "motion"))
        moving = [x for x in same if x.motion != "still"]
        if len(same) > 1 and o.motion == "still" and len(moving) == len(same) - 1:
            out.append(Referral(f"the {o.colour} {o.shape} standing still", t, "still"))
        if len(same) > 1 and o.motion != "still" and len(moving) == 1:
            out.append(Referral(f"the moving {o.colour} {o.shape}", t, "moving"))
        # "the object moving up" only where no other object goes up at all, diagonally included
        if o.motion in DIRECTIONS and not any(heads(x, o.motion) for x in objects if x is not o):
            out.append(Referral(f"the object moving {o.motion}", t, "object motion"))
    return out


def make_motion_clip(split: str, index: int, width: int | None = None, height: int | None = None,
                     frames: int | None = None, twins: bool | None = None, twin_rate: float = TWIN_RATE) -> MotionClip:
    """Clip `index` of `split`; `width`, `height`, `frames` and `twins` override what is drawn.
    `twin_rate` (the chance of twins where `twins` is None) leaves every other draw of the clip as
    it is, so a training set drawn with more twins differs only in the clips that gained them.
    Every object gets at least one expression (the draw is repeated, deterministically, until so)."""
    rng = np.random.default_rng([MOTION_SPLIT_SEEDS[split], index])
    drawn_width, drawn_height = image_size(rng, heights=(96, 256))  # 96-256 a side
    width, height = width or drawn_width, height or drawn_height
    frames = frames or int(rng.integers(FRAME_RANGE[0], FRAME_RANGE[1] + 1))
    with_twins = rng.random() < twin_rate if twins is None else twins
    clip = None
    for _attempt in range(30):
        bg = background(rng)
        movers = _twins(rng, width, height, frames, bg) if with_twins else []
        count = int(rng.integers(max(2, len(movers)), 5))
        for _ in range(60):
            if len(movers) >= count:
                break
            _add(movers, _draw_mover(rng, width, height, frames, bg), frames)
        order = rng.permutation(len(movers))  # the twins are not always objects 1 and 2
        movers = [movers[i] for i in order]
        texture = int(rng.integers(2**31)) if rng.random() < 0.3 else None
        clip = MotionClip(width, height, bg, movers, frames, motion_referrals(movers), texture)
        if len(movers) >= 2 and {r.target for r in clip.referrals} == set(range(len(movers))):
            break
    return clip

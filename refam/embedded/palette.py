"""What the embedded models' scenes are drawn from: the colour names (with the RGB each is drawn in),
the shapes and the sizes. `refam.shapes` draws every training and evaluation scene with these, and
the model card (`refam.card`) names them: one place for both."""

from __future__ import annotations

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "purple": (140, 60, 170),
    "orange": (245, 140, 30),
    "black": (30, 30, 30),
}  # no pink: "pink" is one of the paper's attention magnets
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 11, "big": 21}  # half-extent in pixels at 128 x 128

"""Expressions that name nothing in a scene: a colour-shape pair, a shape or a colour no object has,
in the generator's own words ("the red circle", "the circle", "the red object"). One place for both
the no-referent training (`GroundingTerm`'s absent share) and its measurement
(bench/no_referent.py), so that what is taught and what is measured are the same expressions."""

from __future__ import annotations

import numpy as np

from refam.shapes.scenes import COLOURS, SHAPES, Scene

PARTS = ("neither", "colour", "shape", "both")  # what of an absent colour-shape pair the scene holds


def absent_expressions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(text, kind, part) per kind that has an absent choice, in the order colour+shape, shape,
    colour; `part` says what of an absent colour-shape pair the scene holds ("" for the others)."""
    colours, shapes = {o.colour for o in scene.objects}, {o.shape for o in scene.objects}
    pairs = {(o.colour, o.shape) for o in scene.objects}
    missing_pairs = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in pairs]
    missing_shapes = [s for s in SHAPES if s not in shapes]
    missing_colours = [c for c in COLOURS if c not in colours]
    out = []
    if missing_pairs:
        c, s = missing_pairs[int(rng.integers(len(missing_pairs)))]
        out.append((f"the {c} {s}", "colour+shape", PARTS[(c in colours) + 2 * (s in shapes)]))
    if missing_shapes:
        out.append((f"the {missing_shapes[int(rng.integers(len(missing_shapes)))]}", "shape", ""))
    if missing_colours:
        noun = "object" if rng.random() < 0.5 else "shape"
        out.append((f"the {missing_colours[int(rng.integers(len(missing_colours)))]} {noun}", "colour", ""))
    return out

"""Does a model look at the image? Three checks on scenes a user would draw (`refam.shapes.varied`),
each run through `RefAMPipeline.segment_sample` with no caption, as the default `refam predict` runs:

- `named_shape_scores`: "the <colour> <shape>" on every shape whose colour and shape are unique in
  its scene: point accuracy and mean mask IoU, at the scenes' drawn sizes or at a given one;
- `follow_rate`: one shape moved to a free place, everything else the same; the point must sit on
  the shape in both images;
- `cross_scene_correlation`: one expression's heatmaps over scenes that all hold its shape somewhere
  else; a model whose maps follow the words, not the pixels, gives the same map everywhere (high
  correlation), a model that looks gives different ones.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np
import torch

from refam.pipeline import RefAMPipeline
from refam.metrics import point_hit
from refam.metrics.iou import iou
from refam.shapes.scenes import Scene
from refam.shapes.varied import Layout, fits, render_layout, varied_layout
from refam.types import Expression, Sample


@dataclass
class NamedShapeScores:
    point_accuracy: float  # share of points inside the named shape
    mean_iou: float  # mean mask IoU
    expressions: int


def named_expressions(scene: Scene) -> list[tuple[str, int]]:
    """("the <colour> <shape>", object index) for every object unique by colour and shape."""
    keys = [(o.colour, o.shape) for o in scene.objects]
    return [(f"the {c} {s}", i) for i, (c, s) in enumerate(keys) if keys.count((c, s)) == 1]


def _run(pipeline: RefAMPipeline, scene: Scene, expressions: list[tuple[str, int]], sample_id: str):
    sample = Sample(sample_id, scene.image, [Expression(text, f"{sample_id}-{k}", scene.objects[i].mask)
                                             for k, (text, i) in enumerate(expressions)])
    return pipeline.segment_sample(sample).predictions


def named_shape_scores(pipeline: RefAMPipeline, scenes: int, split: str = "test", width: int | None = None,
                       height: int | None = None, first: int = 0) -> NamedShapeScores:
    hits, ious = [], []
    for index in range(first, first + scenes):
        scene = render_layout(varied_layout(split, index, width, height))
        expressions = named_expressions(scene)
        for prediction, (_, target) in zip(_run(pipeline, scene, expressions, f"drawn-{index}"), expressions):
            mask = scene.objects[target].mask
            hits.append(point_hit(prediction.point, torch.from_numpy(mask)))
            ious.append(iou(prediction.mask, mask))
    return NamedShapeScores(float(np.mean(hits)), float(np.mean(ious)), len(hits))


def moved(layout: Layout, target: int, rng: np.random.Generator) -> Layout | None:
    """The layout with shape `target` moved to a free place at least a third of the image away."""
    shape, colour, rgb, cx, cy, r = layout.shapes[target]
    for _ in range(200):
        x, y = rng.uniform(0, layout.width), rng.uniform(0, layout.height)
        if np.hypot(x - cx, y - cy) > min(layout.width, layout.height) / 3 and fits(layout, shape, x, y, r, ignore=target):
            shapes = list(layout.shapes)
            shapes[target] = (shape, colour, rgb, float(x), float(y), r)
            return replace(layout, shapes=shapes)
    return None


@dataclass
class FollowScores:
    moved_with: float  # share of pairs whose point moved at least half-way along the shape's move
    on_target_both: float  # share of pairs whose point is on the shape before and after the move
    pairs: int


def follow_rate(pipeline: RefAMPipeline, pairs: int, split: str = "test", size: int = 128, seed: int = 0) -> FollowScores:
    """One named shape moved (at least a third of the image away), all else the same: does the point
    move with it? A model that reads only the words gives the same point in both images."""
    rng = np.random.default_rng(seed)
    moved_with = on_target = tried = 0
    for index in itertools.count():
        if tried == pairs:
            break
        layout = varied_layout(split, 50_000 + index, size, size)
        scene = render_layout(layout)
        expressions = named_expressions(scene)
        if not expressions:
            continue
        text, target = expressions[rng.integers(len(expressions))]
        other = moved(layout, target, rng)
        if other is None:
            continue
        points, hits = [], []
        for version, drawn in (("a", scene), ("b", render_layout(other))):
            (prediction,) = _run(pipeline, drawn, [(text, target)], f"follow-{index}-{version}")
            points.append(np.asarray(prediction.point))
            hits.append(point_hit(prediction.point, torch.from_numpy(drawn.objects[target].mask)))
        shift = np.subtract(other.shapes[target][3:5], layout.shapes[target][3:5])
        moved_with += float(np.dot(points[1] - points[0], shift)) >= 0.5 * float(np.dot(shift, shift))
        on_target += all(hits)
        tried += 1
    return FollowScores(moved_with / pairs, on_target / pairs, pairs)


def cross_scene_correlation(pipeline: RefAMPipeline, text: str, scenes: int, split: str = "test", size: int = 128) -> float:
    """Mean pairwise Pearson correlation of `text`'s heatmaps over `scenes` scenes that each hold
    the shape it names (one of a kind) at a place of their own."""
    maps = []
    for index in itertools.count():
        if len(maps) == scenes:
            break
        scene = render_layout(varied_layout(split, 80_000 + index, size, size))
        targets = [i for t, i in named_expressions(scene) if t == text]
        if targets:
            (prediction,) = _run(pipeline, scene, [(text, targets[0])], f"corr-{index}")
            maps.append(prediction.heatmap.flatten().double())
    stacked = torch.stack(maps)
    centred = stacked - stacked.mean(dim=1, keepdim=True)
    unit = centred / centred.norm(dim=1, keepdim=True).clamp(min=1e-12)
    correlation = unit @ unit.T
    off_diagonal = correlation[~torch.eye(len(maps), dtype=torch.bool)]
    return float(off_diagonal.mean())

"""Spatial bias: positional priors from the expression's position words, as HybridGL applies them.

`DirectionPrior` reproduces HybridGL's `extract_dir_phrase` + `gen_dir_mask`
(fhgyuanshen/HybridGL utils.py at f7eb19b; see docs/settings.md):
- the position word (left / right / middle|between / up|top|above / down|under|bottom|low) whose
  syntactic head comes first in the sentence is the expression's direction;
- its prior over the heatmap grid's columns is `linspace(1, 0, W)` for left, `linspace(0, 1, W)` for
  right, and `cat(linspace(0, 1, W // 2), linspace(1, 0, W - W // 2))` for middle;
- HybridGL's released code has the up/down ramps commented out (they give all-ones); `vertical=True`
  turns on the same ramps over rows (up: `linspace(1, 0, H)`, down: `linspace(0, 1, H)`).
The heatmap (min-max normalised) is multiplied by the prior and normalised again; HybridGL divides
by the mean instead, which changes no argmax.

`RelationPrior` reproduces HybridGL's relation guidance (`extract_rela_word` + `relation_boxes` and
the final `0.4 * relation + 0.6 * score` choice in `Hybridgl_main.py`) on attention regions instead
of SAM proposals: candidates are the connected regions of the expression's heatmap, the objects it is
compared with are the regions of the other noun chunks' token maps (see `RelationPrior`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from refam.aggregators.base import normalise
from refam.aggregators.stopwords import PAPER_STOP_WORDS
from refam.config import Configurable
from refam.text.parsing import ExpressionParser
from refam.types import TokenInfo


@dataclass
class BiasContext:
    """What a bias may read besides the heatmaps: each expression's per-token maps."""

    probabilities: torch.Tensor  # [K, T, h, w] per-patch distribution over each expression's tokens
    tokens: list[list[TokenInfo]]  # per expression, the T tokens (character spans refer to its text)


class SpatialBias(Configurable, abc.ABC):
    @abc.abstractmethod
    def __call__(self, heatmaps: torch.Tensor, expressions: list[str], context: BiasContext | None = None) -> torch.Tensor:
        """[K, h, w] heatmaps of K expressions -> biased [K, h, w] heatmaps in [0, 1]."""


def ramp(direction: str, rows: int, cols: int, vertical: bool = False) -> torch.Tensor:
    """HybridGL's positional prior on a rows x cols grid (all ones when there is no direction)."""
    if direction == "left":
        line = torch.linspace(1, 0, cols)
    elif direction == "right":
        line = torch.linspace(0, 1, cols)
    elif direction == "middle":
        line = torch.cat([torch.linspace(0, 1, cols // 2), torch.linspace(1, 0, cols - cols // 2)])
    elif vertical and direction in ("up", "down"):
        column = torch.linspace(1, 0, rows) if direction == "up" else torch.linspace(0, 1, rows)
        return column[:, None].expand(rows, cols).clone()
    else:
        return torch.ones(rows, cols)
    return line[None, :].expand(rows, cols).clone()


class DirectionPrior(SpatialBias):
    """HybridGL's absolute-position prior (see the module docstring).

    Args:
        parser: spaCy parsing of the expression (its `spacy_model` is a setting).
        vertical: also apply up/down ramps (HybridGL's released code does not).
    """

    def __init__(self, parser: ExpressionParser | None = None, vertical: bool = False) -> None:
        self.parser = parser or ExpressionParser()
        self.vertical = vertical

    def __call__(self, heatmaps: torch.Tensor, expressions: list[str], context: BiasContext | None = None) -> torch.Tensor:
        _, rows, cols = heatmaps.shape
        priors = torch.stack([ramp(self.parser.direction(text), rows, cols, self.vertical) for text in expressions])
        return normalise(normalise(heatmaps) * priors.to(heatmaps))


@dataclass
class Region:
    """A connected region of a map above its mean, with HybridGL's XYWH box on the token grid."""

    mask: np.ndarray  # bool [h, w]
    box: tuple[float, float, float, float]  # x, y, width, height in grid cells
    score: float  # the map's peak inside the region


def regions(heat: torch.Tensor, top: int) -> list[Region]:
    """The `top` strongest 8-connected regions of `heat` above its mean (the binarisation ConceptAttention
    and HybridGL's GEM maps use), strongest first."""
    values = heat.detach().float().cpu().numpy()
    labels, count = ndimage.label(values > values.mean(), structure=np.ones((3, 3)))
    found = []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels == index
        rows, cols = window
        box = (float(cols.start), float(rows.start), float(cols.stop - cols.start), float(rows.stop - rows.start))
        found.append(Region(mask, box, float(values[mask].max())))
    return sorted(found, key=lambda r: -r.score)[:top]


def relation_score(target: Region, other: Region, kind: str) -> float:
    """HybridGL's `relation_boxes`: both scores times whether the relation holds between the boxes."""
    (xi, yi, wi, hi), (xj, yj, wj, hj) = target.box, other.box
    holds = {
        "left": xi + wi / 2 < xj + wj / 2,
        "right": xi + wi / 2 > xj + wj / 2,
        "up": yi + hi / 2 < yj + hj / 2,
        "down": yi + hi / 2 > yj + hj / 2,
        "big": float(target.mask.sum()) > float(other.mask.sum()),
        "small": float(target.mask.sum()) < float(other.mask.sum()),
    }
    if kind == "within":
        x1, y1 = max(xi, xj), max(yi, yj)
        x2, y2 = max(x1, min(xi + wi, xj + wj)), max(y1, min(yi + hi, yj + hj))
        return target.score * other.score * (x2 - x1) * (y2 - y1) / (wi * hi)
    return target.score * other.score * float(holds[kind])


class RelationPrior(SpatialBias):
    """HybridGL's relation guidance ("the cat left of the dog", "the bigger elephant") on attention maps.

    For an expression with a relation word: the candidates are the `candidates` strongest regions of
    its heatmap; the objects compared with are the `references` strongest regions of the mean map of
    the other noun chunks' content tokens (their per-patch probabilities; stop words and magnets
    excluded), or the other candidates when the expression names no other object (as HybridGL). Each
    candidate scores `alpha * peak + (1 - alpha) * softmax(sum_j relation_boxes(i, j))` (HybridGL:
    alpha 0.6, 3 candidates, 6 references; area stands in for box area in big/small). HybridGL keeps
    the winning SAM mask outright; here the winning region is lifted above every other cell
    (`0.5 + 0.5 * heat` inside, `0.5 * heat` elsewhere), so the point lands in it and the heatmap
    keeps its shape. An expression without a relation word, or with fewer than two candidates, is
    left unchanged.

    Args:
        parser: spaCy parsing of the expression.
        candidates, references, alpha: HybridGL's k1, k2 and alpha.
    """

    def __init__(self, parser: ExpressionParser | None = None, candidates: int = 3, references: int = 6,
                 alpha: float = 0.6) -> None:
        self.parser = parser or ExpressionParser()
        self.candidates = candidates
        self.references = references
        self.alpha = alpha

    def __call__(self, heatmaps: torch.Tensor, expressions: list[str], context: BiasContext | None = None) -> torch.Tensor:
        if context is None:
            raise ValueError("RelationPrior needs the per-token maps (a BiasContext); RefAMPipeline passes them")
        out = heatmaps.clone()
        for k, text in enumerate(expressions):
            relation = self.parser.relation(text)
            if relation.kind == "none":
                continue
            candidates = regions(heatmaps[k], self.candidates)
            if len(candidates) < 2:
                continue
            others = self._reference_regions(context, k, relation.references)
            scores = []
            for i, candidate in enumerate(candidates):
                compared = others if others else [c for j, c in enumerate(candidates) if j != i]
                scores.append(sum(relation_score(candidate, other, relation.kind) for other in compared))
            guidance = torch.tensor(scores).softmax(dim=0)
            final = self.alpha * torch.tensor([c.score for c in candidates]) + (1 - self.alpha) * guidance
            winner = torch.from_numpy(candidates[int(final.argmax())].mask).to(out.device)
            heat = normalise(heatmaps[k : k + 1])[0]
            out[k] = torch.where(winner, 0.5 + 0.5 * heat, 0.5 * heat)
        return normalise(out)

    def _reference_regions(self, context: BiasContext, k: int, spans: tuple[tuple[int, int], ...]) -> list[Region]:
        tokens = context.tokens[k]
        chosen = [t for t, token in enumerate(tokens)
                  if not (token.special or token.magnet) and token.word not in PAPER_STOP_WORDS
                  and any(start <= token.start < end for start, end in spans)]
        if not chosen:
            return []
        reference = context.probabilities[k, chosen].mean(dim=0)
        return regions(normalise(reference[None])[0], self.references)

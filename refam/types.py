"""Data that flows between components (see DESIGN.md, "One sample's journey")."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

# given a text encoder's input-embedding table [V, D], the magnet rows [M, D] to insert into every
# expression (or None): magnets that are vectors, not words (`MagnetStrategy.vectors`)
MagnetVectors = Callable[[torch.Tensor], "torch.Tensor | None"]


@dataclass
class Expression:
    """One referring expression of a sample, with its ground truth when labelled."""

    text: str
    expression_id: str
    mask: np.ndarray | None = None  # bool [H, W] at the image's original resolution


@dataclass
class Sample:
    """One image with all of its referring expressions (one transformer forward serves them all)."""

    sample_id: str
    image: Image.Image  # RGB
    expressions: list[Expression]
    caption: str = ""
    source: str = ""  # where it came from, for error messages


@dataclass
class BadSample:
    """A sample that could not be read; it is reported and skipped, never fatal to the run."""

    sample_id: str
    reason: str


@dataclass
class TokenInfo:
    """One DiT-tokenizer token of an expression (with magnets appended)."""

    piece: str  # the tokenizer's piece, e.g. "▁dog"
    word: str  # the word of the text it belongs to ("_" for a bare word-start marker, "" for specials)
    special: bool  # EOS / BOS / padding
    magnet: bool  # belongs to the appended attention magnets
    start: int = -1  # character span in the (magnet-augmented) expression; -1 for special tokens
    end: int = -1
    # a prompt template's token around the expression (an LLM's system prompt, role markers), not its
    # end token: it rides in the branch as context but enters the per-patch softmax only when the
    # extractor's `template_tokens` is "include" (special too)
    template: bool = False
    # the tokenizer does not know this piece's text: it became the tokenizer's unknown token (`<unk>`),
    # so the model reads no word here; `word` is still the user's word it stands for
    unknown: bool = False


@dataclass
class TokenMaps:
    """What an extractor observed for the K expressions of one sample.

    `scores[k, t, i, j]` is token t of expression k at the patch in row i, column j of the image.
    `kind` says whether scores are raw scores averaged over heads and blocks (cross-attention
    logits, or attention-output dot products; "logits": the aggregator applies the per-patch softmax
    across tokens) or already softmax-normalised per head and block ("probs").
    """

    scores: torch.Tensor  # [K, T, h, w] float32
    # [K, T] bool: the tokens the per-patch softmax runs over: not padding, and not a prompt template's
    # (`TokenInfo.template`) unless the extractor's `template_tokens` is "include"
    valid: torch.Tensor
    text_mass: torch.Tensor  # [K, T] mean text-to-text attention each token receives (GAS detection)
    tokens: list[list[TokenInfo]]  # per expression, the T tokens (padding included, marked special)
    kind: str = "logits"
    # video maps only (scores [K, T, F_lat, h, w], one map per latent frame): frame_to_latent[i] is the
    # latent frame that video frame i was compressed into; frames past its end were not encoded
    frame_to_latent: list[int] | None = None


@dataclass(frozen=True)
class Point:
    """A point prompt in the original image's pixels (a video's: the key frame's): `label` 1 says
    "this" (the mask covers what lies under it), 0 says "not this" (the mask leaves it out);
    `source` says who placed it: "model" (the heatmap's argmax) or "user" (a correction).
    `refam.prompts.corrections` says how a user's points join the model's."""

    x: float
    y: float
    label: int = 1
    source: str = "user"

    def to_record(self) -> dict:
        """The JSON form `refam predict` and `refam serve` write: x, y, label, source."""
        return {"x": self.x, "y": self.y, "label": self.label, "source": self.source}

    @classmethod
    def from_record(cls, record: Mapping) -> "Point":
        """A point from its JSON form (`to_record`)."""
        return cls(float(record["x"]), float(record["y"]), int(record["label"]), str(record.get("source", "user")))


@dataclass
class Prediction:
    """The answer for one expression."""

    expression_id: str
    mask: np.ndarray  # bool [H, W]
    point: tuple[float, float]  # (x, y) in image pixels
    heatmap: torch.Tensor  # [h, w] on the token grid, min-max normalised
    kept_tokens: list[str] = field(default_factory=list)
    dropped_tokens: list[str] = field(default_factory=list)
    sinks: list[str] = field(default_factory=list)
    sink_categories: list[str] = field(default_factory=list)  # "stop word", "colour" or "other" per sink
    iou: float | None = None  # filled when the expression has a ground-truth mask (images)
    point_hit: bool | None = None
    # per real token (padding excluded), in order: filled when asked for (API, predict, analyze)
    tokens: list[str] = field(default_factory=list)
    token_maps: torch.Tensor | None = None  # [T, h, w] each patch's distribution over the tokens
    text_mass: list[float] = field(default_factory=list)  # text-to-text attention received (GAS)
    token_kept: list[bool] = field(default_factory=list)  # per real token: its map entered the heatmap
    token_sink: list[bool] = field(default_factory=list)  # per real token: a global attention sink
    frame: int | None = None  # videos: the frame the point prompts (`mask` is that frame's mask)
    # what the answer cannot rest on, in sentences a user reads (words the model does not know, an
    # expression left with no content word): `refam.text.caveats`
    warnings: list[str] = field(default_factory=list)
    # the points that prompted the segmenter, in order: the model's (`point`, unless a user's negative
    # point dropped it) and the user's (`refam.prompts.corrections`)
    points: list[Point] = field(default_factory=list)
    # the no-referent flag (`refam.referent`): True when the model's calibrated statistic says the
    # expression may name nothing in the image (a warning then says so, with the flag's measured
    # rates); None where the model has no calibration, or the call is not what it was measured on
    # (other settings, a caption, a video)
    no_referent: bool | None = None
    referent_statistic: float | None = None  # the calibrated statistic's value, where it was computed

    def referent_record(self) -> dict:
        """The flag as `refam predict`'s JSON (and `refam serve`'s run entries) hold it."""
        return {"no_referent": self.no_referent, "referent_statistic": self.referent_statistic}


@dataclass
class VideoExpression:
    """One referring expression of a video; `object_ids` name the ground-truth objects it refers to
    (several for MeViS), None when the video is unlabelled (Ref-YouTube-VOS valid)."""

    text: str
    expression_id: str
    object_ids: list[int] | None = None


class VideoTruth(abc.ABC):
    """Ground-truth masks of a video, read on demand (a video's masks are never all in memory)."""

    @abc.abstractmethod
    def mask(self, expression: VideoExpression, frame_index: int) -> np.ndarray | None:
        """bool [H, W] union of the expression's objects in that frame; None where the frame is not
        annotated (the frame then counts for no score)."""

    def identity(self) -> object | None:
        """What this ground truth is made of (e.g. its files' content sha256), for the result store's
        key; None: `refam.identity.truth_identity` hashes every mask `mask` gives instead."""
        return None


@dataclass
class VideoSample:
    """One video with all its expressions. Frames are files read lazily, in order."""

    sample_id: str
    frames: list[str]  # paths of the frames in temporal order
    expressions: list[VideoExpression]
    caption: str = ""
    source: str = ""
    truth: VideoTruth | None = None
    frame_names: list[str] = field(default_factory=list)  # names the submission layouts use (default: file stems)

    def frame(self, index: int) -> Image.Image:
        """Frame `index` as RGB, read from disk now."""
        from refam.io.images import to_rgb  # transparency composited as every image's

        with Image.open(self.frames[index]) as image:
            return to_rgb(image, self.frames[index])

    @property
    def names(self) -> list[str]:
        from pathlib import Path

        return self.frame_names or [Path(p).stem for p in self.frames]

    @property
    def images(self) -> "LazyFrames":
        """The frames as a sequence of RGB images, each read from disk when indexed."""
        return LazyFrames(self)


class LazyFrames(Sequence):
    """A video's frames as a sequence of images read on demand (extractors index it clip by clip)."""

    def __init__(self, video: VideoSample) -> None:
        self.video = video

    def __len__(self) -> int:
        return len(self.video.frames)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.video.frame(i) for i in range(*index.indices(len(self)))]
        return self.video.frame(index)

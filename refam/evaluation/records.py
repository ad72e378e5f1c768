"""One sample's record: what `refam test` measured for a sample, the one value that is scored,
stored by the result store and replayed.

A record is a small typed value (`SampleRecord` holding one `ExpressionRecord` per expression).
It writes to JSON (`dumps`) with a digest of its own content, and reads back (`loads`) only when
every field has its type and the digest matches; anything else raises `RecordError` saying why,
so a store can warn once and recompute the sample instead of crashing or replaying edited numbers.

A record holds the predicted masks, run-length encoded as COCO does (`Rle`; for a video one per
expression and frame), so that a replayed sample gives every output a fresh run gives: mask PNGs,
overlays, palettes and submission zips, even when those are switched on only at the rerun.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
from pycocotools import mask as mask_utils

from refam.identity import RECORD_FORMAT, digest
from refam.pipeline import SampleResult
from refam.types import Prediction


class RecordError(ValueError):
    """A stored record that cannot be replayed (malformed, or its content does not match its digest)."""


class OtherFormat(RecordError):
    """A record written in another layout (`refam.identity.RECORD_FORMAT`) than this code's."""


@dataclass(frozen=True)
class Rle:
    """A binary mask as COCO's run-length encoding (`pycocotools.mask`): `size` is (height, width)."""

    size: tuple[int, int]
    counts: str

    @classmethod
    def encode(cls, mask: Any) -> Rle:
        rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=bool).astype(np.uint8)))
        return cls((int(rle["size"][0]), int(rle["size"][1])), rle["counts"].decode("ascii"))

    def decode(self) -> np.ndarray:
        """The mask, bool [height, width]."""
        try:
            with warnings.catch_warnings():  # pycocotools 2.0's own use of numpy 2's __array__
                warnings.simplefilter("ignore", DeprecationWarning)
                mask = mask_utils.decode({"size": list(self.size), "counts": self.counts.encode("ascii")})
        except (ValueError, UnicodeEncodeError) as err:
            raise RecordError(f"a mask's run-length encoding does not decode ({err})") from err
        return mask.astype(bool)


@dataclass(frozen=True)
class DavisObject:
    """One annotated object's scores in one annotator run of the DAVIS 2017 unsupervised evaluation."""

    object: int
    pred_id: int
    j: list[float]
    f: list[float]


@dataclass(frozen=True)
class ExpressionRecord:
    """One expression's answer and, where it has ground truth, its scores.

    Images: `mask`, pixel `intersection` / `union`, `iou`, `point_hit`, and `saliency` (what
    `SaliencyScores.contribution` gave) where the dataset scores saliency. Videos: `frame` (the
    prompted one), `track` (one mask per frame, None where none was made), per-frame `j` and `f`.
    """

    expression_id: str
    point: tuple[float, float]
    kept_tokens: list[str] = field(default_factory=list)
    dropped_tokens: list[str] = field(default_factory=list)
    sinks: list[str] = field(default_factory=list)
    sink_categories: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # `Prediction.warnings`: what the answer cannot rest on
    no_referent: bool | None = None  # `Prediction.no_referent`: the model's no-referent flag, where it has one
    referent_statistic: float | None = None
    frame: int | None = None
    intersection: int | None = None
    union: int | None = None
    iou: float | None = None
    point_hit: bool | None = None
    saliency: dict[str, int | float | list[int]] | None = None
    j: list[float] | None = None
    f: list[float] | None = None
    mask: Rle | None = None
    track: list[Rle | None] | None = None

    @classmethod
    def of(cls, prediction: Prediction, **fields: Any) -> ExpressionRecord:
        """A prediction's record, its scores given as `fields`."""
        return cls(
            expression_id=str(prediction.expression_id),
            point=(float(prediction.point[0]), float(prediction.point[1])),
            kept_tokens=list(prediction.kept_tokens), dropped_tokens=list(prediction.dropped_tokens),
            sinks=list(prediction.sinks), sink_categories=list(prediction.sink_categories),
            warnings=list(prediction.warnings), no_referent=prediction.no_referent,
            referent_statistic=prediction.referent_statistic, frame=prediction.frame, **fields,
        )

    def prediction(self) -> Prediction:
        """The prediction as a fresh run hands it to the writers (the mask of the prompted frame for a
        video); no heatmap, which is not stored."""
        mask = self.mask
        if mask is None and self.track is not None and self.frame is not None and 0 <= self.frame < len(self.track):
            mask = self.track[self.frame]
        return Prediction(
            expression_id=self.expression_id, mask=None if mask is None else mask.decode(), point=tuple(self.point),
            heatmap=None, kept_tokens=list(self.kept_tokens), dropped_tokens=list(self.dropped_tokens),
            sinks=list(self.sinks), sink_categories=list(self.sink_categories), iou=self.iou,
            point_hit=self.point_hit, frame=self.frame, warnings=list(self.warnings), no_referent=self.no_referent,
            referent_statistic=self.referent_statistic,
        )


@dataclass(frozen=True)
class SampleRecord:
    """One sample's record. `dataset`, `inputs` (`refam.identity.sample_identity`), `fingerprint`
    (the config's, per dataset) and `numbers` (`refam.identity.numbers_key`: the weights', code's and
    libraries' identity) say what made it;
    the result store fills them in (`stamped`)."""

    sample_id: str
    video: bool
    expressions: list[ExpressionRecord]
    skipped: list[str] = field(default_factory=list)
    davis_runs: dict[str, list[DavisObject]] | None = None
    dataset: str | None = None
    inputs: str | None = None
    fingerprint: str | None = None
    numbers: dict[str, str | dict[str, str | None] | None] | None = None
    format: int = RECORD_FORMAT

    def stamped(self, **provenance: Any) -> SampleRecord:
        return dataclasses.replace(self, **provenance)

    def result(self) -> SampleResult:
        """The sample's result as a fresh run hands it to the writers, masks included."""
        return SampleResult(self.sample_id, [e.prediction() for e in self.expressions], list(self.skipped))

    # ------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        """The record as plain JSON values, without its digest."""
        return _plain(self)

    def dumps(self) -> str:
        """One line of JSON: the record and the digest of its content."""
        content = self.to_json()
        return json.dumps({**content, "digest": digest(content)}, ensure_ascii=False) + "\n"

    @classmethod
    def loads(cls, text: str) -> SampleRecord:
        """A record written by `dumps`; RecordError when it is not JSON, a field is missing or of
        another type, or the content does not match its digest."""
        try:
            data = json.loads(text)
        except ValueError as err:
            raise RecordError(f"not JSON ({err})") from err
        if not isinstance(data, dict):
            raise RecordError(f"not a JSON object but {type(data).__name__}")
        if data.get("format") != RECORD_FORMAT:
            raise OtherFormat(f"record format {data.get('format')!r}, not {RECORD_FORMAT}")
        stored = data.pop("digest", None)
        record = _build(cls, data, "record")
        if stored != digest(data):
            raise RecordError("its content does not match its digest (edited or damaged since it was written)")
        return record


# ------------------------------------------------------------ typed JSON
def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _build(hint: Any, value: Any, where: str) -> Any:
    """`value` (parsed JSON) as `hint` says, or RecordError naming the field."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _build(option, value, where)
            except RecordError as err:
                errors.append(str(err))
        raise RecordError(errors[0] if len(errors) == 1 else f"{where}: {value!r:.60} is none of {hint}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object, got {type(value).__name__}")
        fields = {f.name: f for f in dataclasses.fields(hint)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise RecordError(f"{where}: unknown field(s) {', '.join(unknown)}")
        missing = [name for name, f in fields.items() if name not in value
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise RecordError(f"{where}: missing field(s) {', '.join(missing)}")
        hints = _hints(hint)
        return hint(**{name: _build(hints[name], item, f"{where}.{name}") for name, item in value.items()})
    if origin is list:
        if not isinstance(value, list):
            raise RecordError(f"{where}: expected a list, got {type(value).__name__}")
        return [_build(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list) or len(value) != len(args):
            raise RecordError(f"{where}: expected a list of {len(args)}, got {value!r:.60}")
        return tuple(_build(a, item, f"{where}[{i}]") for i, (a, item) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object, got {type(value).__name__}")
        return {key: _build(args[1], item, f"{where}.{key}") for key, item in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecordError(f"{where}: expected a number, got {value!r:.60}")
        return float(value)
    if hint in (int, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise RecordError(f"{where}: expected {hint.__name__}, got {value!r:.60}")
        return value
    raise TypeError(f"no JSON rule for {hint}")  # a field type this module does not know: a bug here

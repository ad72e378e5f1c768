"""MeViS (Ding et al., ICCV 2023), in the layout of henghuiding/MeViS (README, "File Structure").

    {root}/{split}/JPEGImages/<video>/<frame>.jpg
    {root}/{split}/meta_expressions.json
        {"videos": {<video>: {"expressions": {<exp_id>: {"exp": str, "obj_id": [int, ...],
                                                         "anno_id": [int, ...]}},
                              "frames": ["00000", ...]}}}
    {root}/{split}/mask_dict.json     {"<anno_id>": [COCO RLE or null, one per frame of the video]}

Splits: `valid_u` (50 videos and 793 expressions in MeViS v1, the set the RefAM paper scores;
ground truth included for offline scoring), `valid` (140 videos, no mask_dict.json: scored by the
online server) and `train`.

Ground truth as henghuiding/MeViS tools/eval_mevis.py builds it: in frame i (the position in the
video's "frames" list) the mask is the union of `mask_dict[str(anno_id)][i]` over the expression's
anno_ids; a null entry means that object is absent from the frame, so the mask there is empty (and the
frame is still scored). J and F of an expression are means over all its frames; the dataset's J and F
are means over expressions. Frame i of a sample is the i-th name in sorted order; the RLE index is the
name's position in the file's list (the two agree in the release, whose lists are sorted).

mask_dict.json is read once per dataset; only the RLE strings of this split's expressions are kept,
and a frame's masks are decoded when asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from refam.data.refcoco import decode_segmentation
from refam.data.files import load_json, require
from refam.data.video_common import VideoDataset, VideoFrames, frame_size, load_captions, load_meta_expressions
from refam.errors import DataError
from refam.types import BadSample, VideoExpression, VideoTruth

LABELLED_SPLITS = ("valid_u", "train")  # splits whose release includes mask_dict.json


@dataclass(frozen=True)
class _Video:
    video: str
    frame_names: tuple[str, ...]  # sorted
    positions: tuple[int, ...]  # frame_names[i] is at positions[i] in the file's "frames" list
    expressions: tuple[tuple[str, str, list[int] | None, list[str] | None], ...]  # exp_id, text, obj_ids, anno_ids


class MeViSTruth(VideoTruth):
    """One video's ground truth: per frame, the union of the expression's objects' RLEs, decoded now."""

    def __init__(
        self,
        rles: Mapping[str, list[Any]],
        anno_ids: Mapping[str, list[str]],
        positions: list[int],
        frames: list[str],
    ) -> None:
        self._rles = rles  # anno_id -> per-frame RLE (None where the object is absent)
        self._anno_ids = dict(anno_ids)  # expression_id -> anno_ids
        self._positions = list(positions)
        self._frames = list(frames)
        self._size: tuple[int, int] | None = None

    def _frame_size(self, anno_ids: list[str]) -> tuple[int, int]:
        """(height, width): from any RLE of the video, else from the first frame's header."""
        if self._size is None:
            for anno_id in [*anno_ids, *self._rles]:
                rle = next((r for r in self._rles.get(anno_id, []) if r), None)
                if rle is not None:
                    self._size = (int(rle["size"][0]), int(rle["size"][1]))
                    break
            else:
                width, height = frame_size(self._frames[0])  # the header only; upright, as frames are read
                self._size = (height, width)
        return self._size

    def identity(self) -> str:
        """sha256 of the RLEs of this video's frames, per expression (what `mask` decodes)."""
        from refam.identity import digest

        return digest({"frames": self._frames, "positions": self._positions,
                       "expressions": {e: {a: [self._rles[a][p] for p in self._positions] if a in self._rles else None
                                           for a in ids} for e, ids in self._anno_ids.items()}})

    def mask(self, expression: VideoExpression, frame_index: int) -> np.ndarray | None:
        if expression.expression_id not in self._anno_ids:
            raise DataError(f"expression '{expression.expression_id}' is not one of this video's expressions")
        anno_ids = self._anno_ids[expression.expression_id]
        position = self._positions[frame_index]
        union: np.ndarray | None = None
        for anno_id in anno_ids:
            rle = self._rles[anno_id][position]
            if rle:
                height, width = (int(v) for v in rle["size"])
                mask = decode_segmentation(rle, height, width)
                union = mask if union is None else union | mask
        return union if union is not None else np.zeros(self._frame_size(anno_ids), dtype=bool)


def _ids(value: Any, what: str, where: str) -> list[Any] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        value = [value]
    if not all(isinstance(v, (int, str)) and str(v).lstrip("-").isdigit() for v in value):
        raise DataError(f"{where} has a \"{what}\" that is not a list of integers: {value!r}")
    return value


class MeViS(VideoDataset):
    """MeViS: one item per video with all its expressions (see the module docstring)."""

    benchmark = "mevis"
    submission_root = ''  # the server's zip layout (MaskWriter)

    def __init__(self, root: str, split: str = "valid_u", captions_file: str | None = None) -> None:
        self.root = Path(root)
        self.split = split
        require(self.root, "root", "MeViS root")
        split_dir = self.root / split
        require(split_dir, "root", f"MeViS split folder '{split}'",
                f" (with split; the release has {', '.join(('valid_u', 'valid', 'train'))})")
        meta_path = split_dir / "meta_expressions.json"
        meta = load_meta_expressions(meta_path, "root")
        require(split_dir / "JPEGImages", "root", "MeViS frame folder")
        mask_path = split_dir / "mask_dict.json"
        labelled = mask_path.is_file()
        if not labelled and split in LABELLED_SPLITS:
            require(mask_path, "root", "MeViS mask_dict.json",
                    f" ({split} is scored offline from it; restore it from the release)")

        self._videos: list[_Video] = []
        for video, entry in sorted(meta.items()):
            expressions = []
            for exp_id, expression in entry["expressions"].items():
                where = f"{meta_path}: video '{video}', expression '{exp_id}'"
                obj_ids = _ids(expression.get("obj_id"), "obj_id", where)
                anno_ids = _ids(expression.get("anno_id"), "anno_id", where)
                if labelled and anno_ids is None:
                    raise DataError(f"{where} has no \"anno_id\", so its masks cannot be found in {mask_path}")
                expressions.append((
                    str(exp_id),
                    expression["exp"],
                    None if obj_ids is None else [int(v) for v in obj_ids],
                    None if anno_ids is None else [str(v) for v in anno_ids],
                ))
            if not expressions:
                continue
            frames = entry["frames"]
            order = sorted(range(len(frames)), key=lambda i: frames[i])
            self._videos.append(_Video(video, tuple(frames[i] for i in order), tuple(order), tuple(expressions)))
        if not self._videos:
            raise DataError(f"{meta_path} lists no video with expressions; check it and split", field="root")

        # Only the RLEs this split's expressions use; decoded per frame when asked for.
        self._rles: dict[str, list[Any]] | None = None
        if labelled:
            raw = load_json(mask_path, "root", "MeViS mask_dict.json")
            if not isinstance(raw, dict):
                raise DataError(f"{mask_path}: expected an object {{\"<anno_id>\": [RLE or null per frame]}}")
            needed = {a for v in self._videos for *_, anno_ids in v.expressions for a in anno_ids or []}
            self._rles = {a: raw[a] for a in needed if a in raw}
            self._mask_path = mask_path
        self._captions = load_captions(captions_file)

    def _expressions_and_truth(
        self, entry: _Video, frames: VideoFrames
    ) -> tuple[list[VideoExpression], MeViSTruth | None] | BadSample:
        expressions = [
            VideoExpression(text=text, expression_id=exp_id, object_ids=obj_ids)
            for exp_id, text, obj_ids, _ in entry.expressions
        ]
        if self._rles is None:
            return expressions, None
        anno_ids = {exp_id: ids or [] for exp_id, _, _, ids in entry.expressions}
        for exp_id, ids in anno_ids.items():
            for anno_id in ids:
                rles = self._rles.get(anno_id)
                if rles is None:
                    return BadSample(entry.video, f"expression '{exp_id}' names anno_id {anno_id}, absent from "
                                                  f"{self._mask_path}; the two files do not match")
                if not isinstance(rles, list) or len(rles) != len(frames.names):
                    length = len(rles) if isinstance(rles, list) else type(rles).__name__
                    return BadSample(entry.video, f"anno_id {anno_id} in {self._mask_path} has {length} frame "
                                                  f"entries but the video has {len(frames.names)} frames")
        # This video's RLE lists only, so a sample sent between loader processes stays small.
        rles = {a: self._rles[a] for ids in anno_ids.values() for a in ids}
        return expressions, MeViSTruth(rles, anno_ids, list(entry.positions), frames.paths)

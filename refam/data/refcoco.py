"""RefCOCO / RefCOCO+ / RefCOCOg read from the REFER layout (github.com/lichengunc/refer).

    {data_root}/{dataset}/refs({split_by}).p   pickle (Python 2): list of ref dicts
    {data_root}/{dataset}/instances.json       COCO images / annotations / categories
    {image_dir}/{file_name}                    COCO train2014 images

One item is one image with every expression of the split that refers into it, so the extractor
runs one transformer forward per image (DESIGN.md, "One sample's journey").
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from refam.types import BadSample, Expression, Sample
from refam.data.files import load_json, require
from refam.io.images import read_rgb
from refam.errors import ConfigError, DataError

DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
CAPTION_CHOICES = ("first", "none")


class UnreadablePickleError(DataError, pickle.UnpicklingError):
    """A refs pickle that cannot be loaded: truncated, not a pickle, or refused (below). A DataError,
    so the CLI reports it as one line; an UnpicklingError, so pickle-aware callers still catch it."""


class RefusedGlobalError(UnreadablePickleError):
    """An untrusted pickle asked to import something (the only way a pickle can run code)."""


class RestrictedUnpickler(pickle.Unpickler):
    """Loads plain containers and scalars only: every global lookup is refused.

    `encoding="bytes"` keeps Python 2 `str` objects as raw bytes; `load_untrusted_pickle` then
    decodes them as UTF-8. (`encoding="latin1"` would turn UTF-8 text such as "café" into mojibake.)
    """

    def __init__(self, file: io.BufferedIOBase, path: Path | str) -> None:
        super().__init__(file, encoding="bytes")
        self.path = str(path)

    def find_class(self, module: str, name: str) -> Any:
        raise RefusedGlobalError(
            f"{self.path}: refusing to load global '{module}.{name}'. A REFER refs pickle holds only "
            "lists, dicts, strings and numbers, so this file is not one or has been tampered with; "
            "replace it with the original from the REFER release"
        )


def _decode_text(obj: Any) -> Any:
    """Turn every bytes object (Python 2 `str`) inside lists/tuples/dicts into str."""
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            # latin-1 maps every byte, so a stray non-UTF-8 sentence still loads, if oddly spelled.
            return obj.decode("latin-1")
    if isinstance(obj, dict):
        return {_decode_text(k): _decode_text(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_text(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_decode_text(v) for v in obj)
    return obj


def load_untrusted_pickle(path: Path | str) -> Any:
    """Load a pickle that may come from anywhere: no globals, Python 2 strings decoded as UTF-8."""
    with open(path, "rb") as f:
        try:
            obj = RestrictedUnpickler(f, path).load()
        except RefusedGlobalError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as e:
            raise UnreadablePickleError(
                f"{path}: not a readable pickle ({type(e).__name__}: {e}); the file is truncated or not a "
                "REFER refs file: replace it with the original from the REFER release"
            ) from e
    return _decode_text(obj)


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, RLE, or uncompressed RLE) as a bool [height, width] mask."""
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), dtype=bool)
        if all(isinstance(v, (int, float)) for v in segmentation):
            segmentation = [segmentation]  # one bare polygon
        # A ref's object may be several polygons (occluded parts); they form one mask.
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict):
        size = [int(v) for v in segmentation.get("size", ())]
        if size != [height, width]:
            raise DataError(f"RLE size {size} differs from the image size [{height}, {width}]")
        counts = segmentation.get("counts")
        if isinstance(counts, list):  # uncompressed RLE (iscrowd annotations)
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:
            raise DataError(f"RLE counts must be a list, str or bytes, got {type(counts).__name__}")
    else:
        raise DataError(f"segmentation must be a polygon list or an RLE dict, got {type(segmentation).__name__}")
    with warnings.catch_warnings():
        # pycocotools 2.0.x trips numpy 2's `__array__(copy=...)` deprecation on every decode.
        warnings.filterwarnings("ignore", message=r"__array__ implementation", category=DeprecationWarning)
        mask = mask_utils.decode(rle)
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    if mask.shape != (height, width):
        raise DataError(f"decoded mask has shape {mask.shape}, expected ({height}, {width})")
    return mask.astype(bool)


@dataclass(frozen=True)
class _Ref:
    ref_id: int
    ann_id: int
    sentences: tuple[tuple[int, str], ...]  # (sent_id, sent), by sent_id


def _parse_refs(raw: Any, path: Path, split: str) -> tuple[list[dict], list[str]]:
    """The refs of `split`, and every split name the file has (for the error message)."""
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a list of refs, got {type(raw).__name__}")
    chosen, splits = [], set()
    for i, ref in enumerate(raw):
        if not isinstance(ref, dict) or "split" not in ref:
            raise DataError(f"{path}: ref #{i} is not a dict with a 'split' key")
        splits.add(str(ref["split"]))
        if ref["split"] != split:
            continue
        for key in ("ref_id", "ann_id", "image_id", "sentences"):
            if key not in ref:
                raise DataError(f"{path}: ref #{i} (split {split}) has no '{key}'")
        for sentence in ref["sentences"]:
            if not isinstance(sentence, dict) or "sent_id" not in sentence or "sent" not in sentence:
                raise DataError(f"{path}: ref #{i} (ref_id {ref['ref_id']}) has a sentence without sent_id/sent")
        chosen.append(ref)
    return chosen, sorted(splits)


def _json_object(path: Path, field: str, what: str) -> dict:
    """A COCO-style JSON object (instances, captions)."""
    document = load_json(path, field, what)
    if not isinstance(document, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(document).__name__}", field=field)
    return document


def _first_captions(path: Path, image_ids: set[int]) -> dict[int, str]:
    """Per image, the caption with the lowest annotation id: a fixed choice, so runs are repeatable."""
    annotations = _json_object(path, "captions_file", "COCO captions file").get("annotations", [])
    best: dict[int, tuple[int, str]] = {}
    for ann in annotations:
        image_id = ann["image_id"]
        if image_id in image_ids and (image_id not in best or ann["id"] < best[image_id][0]):
            best[image_id] = (ann["id"], ann["caption"])
    # COCO captions carry stray trailing spaces and newlines that would become prompt tokens.
    return {image_id: " ".join(caption.split()) for image_id, (_, caption) in best.items()}


class RefCOCODataset(Dataset):
    """RefCOCO, RefCOCO+ or RefCOCOg: one item per image with all its expressions in `split`."""

    def __init__(
        self,
        data_root: str,
        dataset: str = "refcoco",
        split: str = "val",
        split_by: str | None = None,
        image_dir: str | None = None,
        captions_file: str | None = None,
        caption_choice: str = "first",
    ) -> None:
        self.data_root = Path(data_root)
        self.dataset = dataset
        self.split = split
        if split_by is None:
            if dataset not in DEFAULT_SPLIT_BY:
                raise ConfigError(f"no default for dataset '{dataset}' (known: {sorted(DEFAULT_SPLIT_BY)}); set it",
                                  field="split_by")
            split_by = DEFAULT_SPLIT_BY[dataset]
        self.split_by = split_by
        if caption_choice not in CAPTION_CHOICES:
            raise ConfigError(f"must be one of {CAPTION_CHOICES}, got '{caption_choice}'", field="caption_choice")

        require(self.data_root, "data_root", "REFER data root")
        refs_path = self.data_root / dataset / f"refs({split_by}).p"
        require(refs_path, "data_root", "REFER refs file", " (made with dataset and split_by)")
        instances_path = self.data_root / dataset / "instances.json"
        require(instances_path, "data_root", "REFER instances.json", " (made with dataset)")
        self.image_dir = Path(image_dir) if image_dir else self.data_root / "images/mscoco/images/train2014"
        require(self.image_dir, "image_dir", "COCO image folder")

        refs, splits = _parse_refs(load_untrusted_pickle(refs_path), refs_path, split)
        if not refs:
            raise DataError(f"{refs_path} has no refs in split '{split}'; it must be one of {splits}", field="split")

        by_image: dict[int, list[_Ref]] = defaultdict(list)
        for ref in refs:
            sentences = sorted((int(s["sent_id"]), str(s["sent"])) for s in ref["sentences"])
            by_image[int(ref["image_id"])].append(_Ref(int(ref["ref_id"]), int(ref["ann_id"]), tuple(sentences)))
        self._items = [(image_id, sorted(by_image[image_id], key=lambda r: r.ref_id)) for image_id in sorted(by_image)]

        # Keep only what the split needs: instances.json is large and every loader worker copies it.
        instances = _json_object(instances_path, "data_root", "REFER instances.json")
        ann_ids = {r.ann_id for _, rs in self._items for r in rs}
        self._images = {img["id"]: img for img in instances.get("images", []) if img["id"] in by_image}
        self._segmentations = {
            ann["id"]: ann.get("segmentation") for ann in instances.get("annotations", []) if ann["id"] in ann_ids
        }

        self._captions: dict[int, str] = {}
        if captions_file is not None:
            require(Path(captions_file), "captions_file", "COCO captions file")
            if caption_choice == "first":
                self._captions = _first_captions(Path(captions_file), set(by_image))

    @property
    def name(self) -> str:
        """Prefix for metric names, e.g. "refcoco/val" ("refcocog_google/val" for a non-default split_by)."""
        base = self.dataset if self.split_by == DEFAULT_SPLIT_BY.get(self.dataset) else f"{self.dataset}_{self.split_by}"
        return f"{base}/{self.split}"

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Sample | BadSample:
        image_id, refs = self._items[index]
        sample_id = str(image_id)
        info = self._images.get(image_id)
        if info is None:
            return BadSample(sample_id, f"image {image_id} is referred to by refs but absent from instances.json "
                                        f"under {self.data_root / self.dataset}; the two files do not match")
        path = self.image_dir / info["file_name"]
        image = read_rgb(path)
        if isinstance(image, str):
            return BadSample(sample_id, f"{image}. Check that the dataset's image_dir points at the COCO train2014 "
                                        "images, or restore the file")
        height, width = int(info["height"]), int(info["width"])
        if image.size != (width, height):
            return BadSample(sample_id, f"image {path} is {image.size[0]}x{image.size[1]} but instances.json "
                                        f"says {width}x{height}; the image folder and annotations do not match")

        expressions = []
        for ref in refs:
            if ref.ann_id not in self._segmentations:
                return BadSample(sample_id, f"ref {ref.ref_id} names annotation {ref.ann_id}, absent from "
                                            f"{self.data_root / self.dataset / 'instances.json'}")
            try:
                mask = decode_segmentation(self._segmentations[ref.ann_id], height, width)
            # pycocotools signals malformed input with a bare Exception.
            except Exception as e:  # noqa: BLE001
                return BadSample(sample_id, f"annotation {ref.ann_id} (ref {ref.ref_id}) cannot be decoded: {e}")
            for sent_id, text in ref.sentences:
                expressions.append(Expression(text=text, expression_id=f"{ref.ref_id}_{sent_id}", mask=mask))
        return Sample(
            sample_id=sample_id,
            image=image,
            expressions=expressions,
            caption=self._captions.get(image_id, ""),
            source=str(path),
        )

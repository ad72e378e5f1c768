"""Your own images and expressions, listed in a JSON or JSONL manifest.

Each record (a JSON list item, or one line of JSONL):

    {"id": "kitchen",                      # optional; default: the image file's stem
     "image": "imgs/kitchen.jpg",           # relative paths are relative to the manifest's folder
     "expressions": ["the red mug",         # plain text: no ground truth (predict only)
                     {"text": "the kettle", "mask": "masks/kettle.png", "id": "kettle"}],
     "caption": "a kitchen counter"}        # optional

Masks are image files of the image's size (both compared upright, after EXIF orientation), read by
`refam.io.pixels.binary_mask`: a cutout (an alpha channel that is not fully opaque) is its alpha
>= 128; otherwise any nonzero pixel (palette index, gray value or RGB channel) belongs to the
object; a JPEG mask is read at >= 128 with a warning. docs/settings.md, "Pixels", states the rules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from refam.types import BadSample, Expression, Sample
from refam.io.images import read_rgb
from refam.errors import DataError, MissingInputError
from refam.io.pixels import check_mask_size, read_mask_file


def _read_records(path: Path) -> list[tuple[str, Any]]:
    """(where, record) pairs, `where` being "line N" (JSONL) or "record N" (JSON list), 1-based."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start} is {e.object[e.start:e.start + 1]!r}); "
                        "save the manifest as UTF-8") from e
    except OSError as e:
        raise MissingInputError(f"cannot read manifest {path}: {e.strerror or e}", field="path") from e
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
        return [(f"record {i}", r) for i, r in enumerate(records, start=1)]
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {lineno} is not valid JSON ({e.msg})") from e
    return records


class ManifestDataset(Dataset):
    """Samples listed in a JSON / JSONL manifest; see the module docstring for the record format."""

    def __init__(self, path: str, name: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingInputError(f"manifest not found: {self.path}", field="path")
        self._name = name or self.path.stem
        self._samples = [self._parse(where, record) for where, record in _read_records(self.path)]
        if not self._samples:
            raise DataError(f"{self.path}: the manifest lists no records")
        seen: dict[str, str] = {}
        for sample_id, _, _, _, where in self._samples:
            if sample_id in seen:
                raise DataError(
                    f"{self.path}: {where}: id '{sample_id}' repeats {seen[sample_id]}; give each record a unique \"id\""
                )
            seen[sample_id] = where

    def _error(self, where: str, field: str, problem: str) -> DataError:
        return DataError(f"{self.path}: {where}: field \"{field}\" {problem}")

    def _resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.path.parent / path

    def _parse(self, where: str, record: Any) -> tuple[str, Path, list[tuple[str, str, Path | None]], str, str]:
        if not isinstance(record, dict):
            raise DataError(f"{self.path}: {where}: expected an object, got {type(record).__name__}")
        image = record.get("image")
        if not isinstance(image, str) or not image:
            raise self._error(where, "image", "is required and must be a non-empty string (an image path)")
        sample_id = record.get("id", Path(image).stem)
        if not isinstance(sample_id, str) or not sample_id:
            raise self._error(where, "id", "must be a non-empty string")
        caption = record.get("caption", "")
        if not isinstance(caption, str):
            raise self._error(where, "caption", "must be a string")
        raw = record.get("expressions")
        if not isinstance(raw, list) or not raw:
            raise self._error(where, "expressions", "is required and must be a non-empty list")

        expressions: list[tuple[str, str, Path | None]] = []
        for k, item in enumerate(raw):
            field = f"expressions[{k}]"
            if isinstance(item, str):
                item = {"text": item}
            if not isinstance(item, dict):
                raise self._error(where, field, "must be a string or an object with \"text\"")
            text = item.get("text")
            # An empty string is a sample-level problem: the run reports and skips that expression.
            if not isinstance(text, str):
                raise self._error(where, f"{field}.text", "is required and must be a string")
            expression_id = item.get("id", f"{sample_id}_{k}")
            if not isinstance(expression_id, str) or not expression_id:
                raise self._error(where, f"{field}.id", "must be a non-empty string")
            if any(expression_id == e[0] for e in expressions):
                raise self._error(where, f"{field}.id", f"'{expression_id}' repeats within the record")
            mask = item.get("mask")
            if mask is not None and (not isinstance(mask, str) or not mask):
                raise self._error(where, f"{field}.mask", "must be a non-empty string (a PNG path)")
            expressions.append((expression_id, text, self._resolve(mask) if mask else None))
        return sample_id, self._resolve(image), expressions, caption, where

    def parsed_records(self) -> list[tuple[str, Path, list[tuple[str, str, Path | None]], str, str]]:
        """(sample id, image path, [(expression id, text, mask path)], caption, where) per record,
        validated but not read: for tools that open the images themselves."""
        return list(self._samples)

    @property
    def name(self) -> str:
        """Prefix for metric names: the `name` argument, else the manifest's file stem."""
        return self._name

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> Sample | BadSample:
        sample_id, image_path, specs, caption, where = self._samples[index]
        image = read_rgb(image_path)
        if isinstance(image, str):
            return BadSample(sample_id, f"{image} ({self.path}, {where}); fix the \"image\" path or the file")

        expressions = []
        for expression_id, text, mask_path in specs:
            mask = None
            if mask_path is not None:
                try:
                    mask = read_mask_file(mask_path)
                    check_mask_size(mask, image.size, mask_path, image_path)
                except FileNotFoundError:
                    return BadSample(sample_id, f"mask file not found: {mask_path} ({self.path}, {where}, "
                                                f"expression '{expression_id}'); fix the \"mask\" path or restore it")
                except DataError as e:
                    return BadSample(sample_id, f"{e} ({self.path}, {where})")
                except (OSError, Image.DecompressionBombError) as e:
                    return BadSample(sample_id, f"cannot read mask {mask_path} ({self.path}, {where}): {e}")
            expressions.append(Expression(text=text, expression_id=expression_id, mask=mask))
        return Sample(sample_id=sample_id, image=image, expressions=expressions, caption=caption,
                      source=f"{self.path}:{where}")

"""A tiny REFER tree in the real formats, for tests and offline demos.

    {root}/{dataset}/refs(unc).p        (refs(umd).p for refcocog) Python-2-style protocol-2 pickle
    {root}/{dataset}/instances.json     COCO instances: polygons, compressed RLE, uncompressed RLE
    {root}/images/mscoco/images/train2014/COCO_train2014_{image_id:012d}.jpg
    {root}/captions_train2014.json      COCO captions

Geometry is fixed so tests can draw the expected masks by hand; `seed` only changes the
background noise of the JPEGs. Image k (k = 0..n_images-1) uses scene k % 3, has image_id 100 + k
and annotation ids 1000 * (k + 1) + j:

    scene 0, 128x96 (w x h): j=0 red box, polygon x 10..50, y 30..70  (mask[30:70, 10:50])
                             j=1 blue ellipse, compressed RLE, PIL ellipse box (76, 24, 115, 71)
                             j=2 green square, polygon, referred to by no ref
    scene 1, 80x80:          j=0 green triangle, polygon (40,10) (70,70) (10,70)
                             j=1 brown square, polygon x 5..30, y 5..30, with a non-ASCII sentence
    scene 2, 112x72:         j=0 yellow bar, uncompressed RLE, x 8..104, y 6..18 (mask[6:18, 8:104])
                             j=1 purple oval, 16-gon polygon

Splits cycle over images: val, testA, val, testB, train (refcocog: val, test, val, train). One extra
image (id 99) is in instances.json and on disk but no ref points at it, as in the real release.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

_SPLITS = {"unc": ["val", "testA", "val", "testB", "train"], "umd": ["val", "test", "val", "train"]}
_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
_CATEGORIES = [
    {"id": 1, "name": "box", "supercategory": "shape"},
    {"id": 2, "name": "ellipse", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
]


class _Unicode(str):
    """Marks text that Python 2 held as `unicode` (pickled as BINUNICODE, not as a byte string)."""


def _py2_pickle(obj: Any) -> bytes:
    """Protocol-2 pickle as Python 2 wrote it: `str` as byte strings (SHORT_BINSTRING / BINSTRING).

    Python 3's pickler cannot produce these opcodes (protocol 2 writes bytes through a
    `_codecs.encode` global), and they are what makes reading the real REFER files tricky.
    """
    out = bytearray(b"\x80\x02")

    def emit(value: Any) -> None:
        if value is None:
            out.extend(b"N")
        elif isinstance(value, bool):
            out.extend(b"\x88" if value else b"\x89")
        elif isinstance(value, int):
            if 0 <= value < 256:
                out.extend(b"K" + bytes([value]))
            elif -(2**31) <= value < 2**31:
                out.extend(b"J" + struct.pack("<i", value))
            else:
                data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
                out.extend(b"\x8a" + bytes([len(data)]) + data)
        elif isinstance(value, float):
            out.extend(b"G" + struct.pack(">d", value))
        elif isinstance(value, _Unicode):
            data = value.encode("utf-8")
            out.extend(b"X" + struct.pack("<I", len(data)) + data)
        elif isinstance(value, str):
            data = value.encode("utf-8")
            out.extend((b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<I", len(data))) + data)
        elif isinstance(value, list):
            out.extend(b"]")
            if value:
                out.extend(b"(")
                for item in value:
                    emit(item)
                out.extend(b"e")
        elif isinstance(value, dict):
            out.extend(b"}")
            if value:
                out.extend(b"(")
                for key, item in value.items():
                    emit(key)
                    emit(item)
                out.extend(b"u")
        else:
            raise TypeError(f"cannot write {type(value).__name__} into a REFER fixture pickle")

    emit(obj)
    out.extend(b".")
    return bytes(out)


def _ellipse_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    canvas = Image.new("L", size, 0)
    ImageDraw.Draw(canvas).ellipse(box, fill=1)
    return np.asarray(canvas, dtype=bool)


def _rect_polygon(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def _oval_polygon(cx: float, cy: float, rx: float, ry: float, n: int = 16) -> list[float]:
    points = []
    for i in range(n):
        a = 2 * math.pi * i / n
        points += [round(cx + rx * math.cos(a), 2), round(cy + ry * math.sin(a), 2)]
    return points


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths in column-major order, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = int(v), 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _scene(index: int) -> dict:
    """Size, background and objects of scene `index`: (colour, segmentation kind, geometry, category, sentences)."""
    if index == 0:
        return {
            "size": (128, 96),
            "objects": [
                ((200, 30, 30), "polygon", _rect_polygon(10, 30, 50, 70), 1,
                 ["the red box on the left", "red rectangle"]),
                ((30, 60, 210), "rle", (76, 24, 115, 71), 2,
                 ["blue circle", "the round blue thing on the right"]),
                ((40, 170, 60), "polygon", _rect_polygon(56, 4, 72, 20), 1, []),
            ],
        }
    if index == 1:
        return {
            "size": (80, 80),
            "objects": [
                ((40, 170, 60), "polygon", [40.0, 10.0, 70.0, 70.0, 10.0, 70.0], 3,
                 ["green triangle pointing up"]),
                ((120, 80, 40), "polygon", _rect_polygon(5, 5, 30, 30), 1,
                 ["the café-coloured square in the corner", "small brown square"]),
            ],
        }
    return {
        "size": (112, 72),
        "objects": [
            ((230, 200, 30), "uncompressed", (8, 6, 104, 18), 1, ["yellow bar at the top"]),
            ((140, 50, 160), "polygon", _oval_polygon(56, 48, 20, 12), 2, ["purple oval", "the oval below the bar"]),
        ],
    }


def _draw_image(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    width, height = size
    noise = rng.integers(-8, 9, size=(height, width, 3))
    return Image.fromarray(np.clip(225 + noise, 0, 255).astype(np.uint8), "RGB")


def write_refer_fixture(root: Path, dataset: str = "refcoco", n_images: int = 3, seed: int = 0) -> Path:
    """Write a tiny REFER tree for `dataset` under `root` and return `root` (the data_root)."""
    if dataset not in _SPLIT_BY:
        raise ValueError(f"dataset must be one of {sorted(_SPLIT_BY)}, got '{dataset}'")
    root = Path(root)
    split_by = _SPLIT_BY[dataset]
    rng = np.random.default_rng(seed)
    image_dir = root / "images/mscoco/images/train2014"
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / dataset).mkdir(parents=True, exist_ok=True)

    images, annotations, refs, captions = [], [], [], []
    next_ref, next_sent = 1, 1
    for k in range(n_images):
        scene = _scene(k % 3)
        image_id, (width, height) = 100 + k, scene["size"]
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        image = _draw_image(scene["size"], rng)
        draw = ImageDraw.Draw(image)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for j, (colour, kind, geometry, category_id, sentences) in enumerate(scene["objects"]):
            ann_id = 1000 * (k + 1) + j
            if kind == "polygon":
                draw.polygon(list(zip(geometry[::2], geometry[1::2])), fill=colour)
                segmentation = [geometry]
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            elif kind == "rle":
                mask = _ellipse_mask(scene["size"], geometry)
                image.paste(colour, mask=Image.fromarray(mask.astype(np.uint8) * 255))
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            else:
                x0, y0, x1, y1 = geometry
                mask = np.zeros((height, width), dtype=bool)
                mask[y0:y1, x0:x1] = True
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
                segmentation = _uncompressed_rle(mask)
                rle = mask_utils.frPyObjects(segmentation, height, width)
            annotations.append({
                "id": ann_id, "image_id": image_id, "segmentation": segmentation, "category_id": category_id,
                "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": float(mask_utils.area(rle)),
                "iscrowd": int(kind == "uncompressed"),
            })
            if not sentences:
                continue
            ref_sentences = []
            for text in sentences:
                ref_sentences.append({"tokens": text.split(), "raw": _Unicode(text.capitalize() + "."),
                                      "sent_id": next_sent, "sent": text})
                next_sent += 1
            refs.append({
                "image_id": image_id, "split": _SPLITS[split_by][k % len(_SPLITS[split_by])],
                # REFER's ref file_name carries an ann suffix and names no real file.
                "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg", "category_id": category_id,
                "ann_id": ann_id, "ref_id": next_ref, "sent_ids": [s["sent_id"] for s in ref_sentences],
                # Stored newest first so that readers must sort by sent_id themselves.
                "sentences": ref_sentences[::-1],
            })
            next_ref += 1
        image.save(image_dir / file_name, quality=95)
        if k % 3 != 2:  # scene 2 has no caption, to exercise the "" default
            # Higher id listed first: "first" means lowest annotation id, not file order.
            captions.append({"image_id": image_id, "id": 50 * (k + 1) + 1, "caption": "A second caption.  \n"})
            captions.append({"image_id": image_id, "id": 50 * (k + 1), "caption": f"Coloured shapes on grey, scene {k}. "})

    distractor = {"id": 99, "file_name": f"COCO_train2014_{99:012d}.jpg", "height": 40, "width": 40}
    images.append(distractor)
    _draw_image((40, 40), rng).save(image_dir / distractor["file_name"], quality=95)

    with open(root / dataset / "instances.json", "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": annotations, "categories": _CATEGORIES}, f)
    # Refs stored newest first, as grouping and ordering must not depend on file order.
    (root / dataset / f"refs({split_by}).p").write_bytes(_py2_pickle(refs[::-1]))
    with open(root / "captions_train2014.json", "w", encoding="utf-8") as f:
        json.dump({"images": [{"id": i["id"]} for i in images], "annotations": captions}, f)
    return root

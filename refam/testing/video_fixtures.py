"""Tiny Ref-DAVIS17, Ref-YouTube-VOS and MeViS trees in the real layouts, for tests and offline demos.

Frames are solid-colour JPEGs whose grey level tells the frame apart (`frame_grey`). Geometry is
fixed so tests can state the expected masks:

Ref-DAVIS17 (`write_ref_davis`), video "dogs-scale", 4 frames of 32x24 (w x h), palette PNGs:
    object 1: rows 2..10, columns 2+2f..12+2f in frame f (moves right)
    object 2: rows 12..20, columns 16..28, absent from frame 1
    frame 2: rows 0..2 are void (255) across the frame, over object 1's top rows
    frame 3: no PNG (an unannotated frame)
  Each object has four expressions (two annotators x first frame / full video), ids 4k+s as
  ReferFormer's converter numbers them. Video "ghost" is listed but its folders are missing.
Ref-YouTube-VOS (`write_ref_ytvos`), valid: video "a1b2" lists frames 00000, 00005, 00010 while its
  folder also holds 00001..00004 (which must not be read); "t3st" is a competition test video;
  "gone" is listed without a frame folder. train: video "tr41" with obj_id and palette annotations.
MeViS (`write_mevis`), valid_u: video "cats", 3 frames of 20x16, two objects:
    anno 10 (obj 0): rows 2..8, columns 1..7 in every frame
    anno 11 (obj 1): rows 9..14, columns 10..18 in frames 0 and 2, absent (null) in frame 1
  expressions "0" both cats (anno 10 + 11), "1" left cat (10), "2" right cat (11); video "lost"
  is listed without a frame folder. valid: video "dogs" with expressions and no mask_dict.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

DAVIS_SIZE = (32, 24)  # (w, h)
MEVIS_SIZE = (20, 16)
YTVOS_SIZE = (24, 16)

# (obj_id, [annotator 1 first frame, annotator 1 full video, annotator 2 first frame, annotator 2 full video])
DAVIS_EXPRESSIONS = {
    "dogs-scale": [
        (1, ["a big brown dog", "a big dog walking right", "the brown dog on the left", "dog moving to the right"]),
        (2, ["a small white dog", "a small dog that sits", "the white dog under the café sign", "a dog that vanishes"]),
    ],
    "ghost": [(1, ["a ghost", "a ghost floating", "the white ghost", "a ghost flying away"])],
}


def frame_grey(frame_index: int) -> int:
    return 20 + 20 * frame_index  # distinct for frame numbers 0..11


def _write_frames(folder: Path, names: list[str], size: tuple[int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        grey = frame_grey(int(name))
        Image.new("RGB", size, (grey, grey, grey)).save(folder / f"{name}.jpg", quality=95)


def _davis_palette() -> list[int]:
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (3 * 253)
    palette[3 * 255: 3 * 256] = [224, 224, 192]
    return palette


def write_palette_png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = labels.shape
    image = Image.frombytes("P", (width, height), labels.astype(np.uint8).tobytes())
    image.putpalette(_davis_palette())
    image.save(path)


def davis_labels(frame_index: int) -> np.ndarray | None:
    """The palette indices written for frame `frame_index` of "dogs-scale" (None: no PNG)."""
    if frame_index == 3:
        return None
    width, height = DAVIS_SIZE
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[2:10, 2 + 2 * frame_index: 12 + 2 * frame_index] = 1
    if frame_index != 1:
        labels[12:20, 16:28] = 2
    if frame_index == 2:
        labels[0:3, :] = 255
    return labels


def _davis_meta() -> dict:
    videos = {}
    for video, objects in DAVIS_EXPRESSIONS.items():
        expressions = {}
        for k, (obj_id, texts) in enumerate(objects):
            for s, text in enumerate(texts):
                expressions[str(4 * k + s)] = {"exp": text, "obj_id": str(obj_id)}
        frames = [f"{i:05d}" for i in range(4 if video == "dogs-scale" else 1)]
        videos[video] = {"expressions": expressions, "frames": frames}
    return {"videos": videos}


def _write_davis_video(frames_dir: Path, annotations_dir: Path) -> None:
    _write_frames(frames_dir, [f"{i:05d}" for i in range(4)], DAVIS_SIZE)
    for i in range(4):
        labels = davis_labels(i)
        if labels is not None:
            write_palette_png(annotations_dir / f"{i:05d}.png", labels)


def write_ref_davis(root: Path, layout: str = "converted") -> Path:
    """Ref-DAVIS17 in ReferFormer's converted layout or in the original releases' layout."""
    root = Path(root)
    if layout == "converted":
        _write_davis_video(root / "valid/JPEGImages/dogs-scale", root / "valid/Annotations/dogs-scale")
        meta = root / "meta_expressions/valid/meta_expressions.json"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps(_davis_meta()), encoding="utf-8")
        return root
    if layout != "original":
        raise ValueError(f"layout must be 'converted' or 'original', got {layout!r}")
    davis = root / "DAVIS"
    _write_davis_video(davis / "JPEGImages/480p/dogs-scale", davis / "Annotations_unsupervised/480p/dogs-scale")
    (davis / "ImageSets/2017").mkdir(parents=True, exist_ok=True)
    (davis / "ImageSets/2017/val.txt").write_text("dogs-scale\nghost\n", encoding="utf-8")
    (davis / "ImageSets/2017/train.txt").write_text("", encoding="utf-8")
    texts = root / "davis_text_annotations"
    texts.mkdir(parents=True, exist_ok=True)
    files = ["Davis17_annot1.txt", "Davis17_annot1_full_video.txt", "Davis17_annot2.txt", "Davis17_annot2_full_video.txt"]
    for s, name in enumerate(files):
        lines = []
        # Objects in reverse order and "dogs-scale" misspelt, as in the release: the reader sorts and fixes.
        for video, objects in DAVIS_EXPRESSIONS.items():
            for obj_id, expressions in reversed(objects):
                lines.append(f'{"dog-scale" if video == "dogs-scale" else video} {obj_id} "{expressions[s]}"')
        encoding = "utf-8" if s < 2 else "latin-1"  # the converter reads annotator 2's files as Latin-1
        (texts / name).write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return root


def write_ref_ytvos(root: Path) -> Path:
    root = Path(root)
    listed = ["00000", "00005", "00010"]
    _write_frames(root / "valid/JPEGImages/a1b2", listed + ["00001", "00002", "00003", "00004"], YTVOS_SIZE)
    _write_frames(root / "valid/JPEGImages/t3st", ["00000"], YTVOS_SIZE)
    valid = {
        "a1b2": {"expressions": {"0": {"exp": "a person riding a horse"}, "1": {"exp": "the brown horse"}},
                 "frames": listed},
        "t3st": {"expressions": {"0": {"exp": "a test video"}}, "frames": ["00000"]},
        "gone": {"expressions": {"0": {"exp": "a missing video"}}, "frames": ["00000"]},
    }
    test = {"t3st": valid["t3st"]}
    _write_frames(root / "train/JPEGImages/tr41", ["00000", "00005"], YTVOS_SIZE)
    labels = np.zeros(YTVOS_SIZE[::-1], dtype=np.uint8)
    labels[4:12, 3:9] = 1
    labels[4:12, 12:20] = 2
    write_palette_png(root / "train/Annotations/tr41/00000.png", labels)
    write_palette_png(root / "train/Annotations/tr41/00005.png", np.where(labels == 2, 0, labels))
    train = {"tr41": {"expressions": {"0": {"exp": "the left box", "obj_id": "1"},
                                      "1": {"exp": "the right box", "obj_id": "2"}},
                      "frames": ["00000", "00005"]}}
    for split, videos in (("valid", valid), ("test", test), ("train", train)):
        path = root / "meta_expressions" / split / "meta_expressions.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"videos": videos}), encoding="utf-8")
    return root


def mevis_object_masks() -> dict[str, list[np.ndarray | None]]:
    """Per anno_id, the mask written for each frame of "cats" (None: null in mask_dict.json)."""
    width, height = MEVIS_SIZE
    left = np.zeros((height, width), dtype=bool)
    left[2:8, 1:7] = True
    right = np.zeros((height, width), dtype=bool)
    right[9:14, 10:18] = True
    return {"10": [left, left, left], "11": [right, None, right]}


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def write_mevis(root: Path) -> Path:
    root = Path(root)
    frames = ["00000", "00001", "00002"]
    _write_frames(root / "valid_u/JPEGImages/cats", frames, MEVIS_SIZE)
    meta = {"videos": {
        "cats": {"expressions": {
            "0": {"exp": "two cats playing", "obj_id": [0, 1], "anno_id": [10, 11]},
            "1": {"exp": "the cat sitting still on the left", "obj_id": [0], "anno_id": [10]},
            "2": {"exp": "the cat that walks away and comes back", "obj_id": [1], "anno_id": [11]},
        }, "frames": frames},
        "lost": {"expressions": {"0": {"exp": "a lost dog", "obj_id": [0], "anno_id": [20]}}, "frames": ["00000"]},
    }}
    (root / "valid_u/meta_expressions.json").write_text(json.dumps(meta), encoding="utf-8")
    masks = {anno: [None if m is None else _rle(m) for m in per_frame] for anno, per_frame in mevis_object_masks().items()}
    masks["20"] = [_rle(np.ones(MEVIS_SIZE[::-1], dtype=bool))]
    (root / "valid_u/mask_dict.json").write_text(json.dumps(masks), encoding="utf-8")

    _write_frames(root / "valid/JPEGImages/dogs", ["00000", "00001"], MEVIS_SIZE)
    valid = {"videos": {"dogs": {"expressions": {"0": {"exp": "the dog jumping over the fence"}},
                                 "frames": ["00000", "00001"]}}}
    (root / "valid/meta_expressions.json").write_text(json.dumps(valid), encoding="utf-8")
    return root

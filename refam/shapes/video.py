"""Write moving-shape clips in the Ref-DAVIS17 layout, as ReferFormer's converter leaves it.

    <root>/<subset>/JPEGImages/<video>/00000.jpg ...
    <root>/<subset>/Annotations/<video>/00000.png ...     palette PNGs: pixel = object id, 0 = background
    <root>/<subset>/meta.json                             {"videos": {video: {"objects": {"1": {"category": ...}}}}}
    <root>/meta_expressions/<subset>/meta_expressions.json
        {"videos": {video: {"expressions": {"0": {"exp": text, "obj_id": "1"}, ...}, "frames": ["00000", ...]}}}

Source: wjn922/ReferFormer @9a2d4f6 `tools/data/convert_davis_to_ytvos.py` (`mv_images_to_folder`,
`create_meta_expressions`, `create_meta_annotaions`), read by `datasets/davis.py::prepare_metas`
and `inference_davis.py`. As there, expression ids count from "0" over the whole video, `obj_id`
is a string counting from "1", expressions are grouped by object in object order with four per
object (Ref-DAVIS17's two annotators x first-frame/full-video; `inference_davis.py` takes
`num_obj = len(expressions) // 4` and expression `obj * 4 + annotator`), frames are the sorted
file stems, and each JSON is written with a plain `json.dump`. Annotation PNGs carry the DAVIS
palette (ReferFormer copies it from `valid/Annotations/blackswan/00000.png`).

Two families: "fixed" (`refam.shapes.scenes.make_clip`: the demo's fixed background, square
frames of `size`, `frames` frames) and "motion" (`refam.shapes.motion.make_motion_clip`: what
refam-shapes-video is trained on, any background, size, aspect and length, expressions of motion).
Deterministic by seed: clip `i` of a split is the family's clip `i`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from refam.shapes.motion import MotionClip, make_motion_clip
from refam.shapes.scenes import Clip, make_clip
from refam.visualize import DAVIS_PALETTE


CLIP_FAMILIES = ("fixed", "motion")
EXPRESSIONS_PER_OBJECT = 4  # Ref-DAVIS17: 2 annotators x (first-frame, full-video)


def frame_name(t: int) -> str:
    return f"{t:05d}"


def label_map(masks: list[np.ndarray]) -> np.ndarray:
    """uint8 [H, W]: object k's visible pixels hold k + 1, the rest 0."""
    labels = np.zeros(masks[0].shape, dtype=np.uint8)
    for k, mask in enumerate(masks):
        labels[mask] = k + 1
    return labels


def write_palette_png(labels: np.ndarray, path: Path) -> None:
    image = Image.fromarray(labels.astype(np.uint8))  # "L"; putpalette turns it into "P"
    image.putpalette(DAVIS_PALETTE)
    image.save(path)


def clip_expressions(clip: Clip, per_object: int | None = EXPRESSIONS_PER_OBJECT) -> dict[str, dict[str, str]]:
    """The "expressions" entry of one video: grouped by object, `per_object` each (the object's
    expressions in order, repeated when it has fewer; None keeps each expression once). Objects
    without an expression get none, which breaks `inference_davis.py`'s positional convention:
    `make_clip(require_referable=True)` (the default) gives every object one."""
    texts: dict[int, list[str]] = {}
    for referral in clip.referrals:
        texts.setdefault(referral.target, []).append(referral.text)
    expressions: dict[str, dict[str, str]] = {}
    for k in sorted(texts):
        chosen = texts[k] if per_object is None else [texts[k][i % len(texts[k])] for i in range(per_object)]
        for text in chosen:
            expressions[str(len(expressions))] = {"exp": text, "obj_id": str(k + 1)}
    return expressions


def write_davis_clip(root: Path, clip: Clip | MotionClip, video: str, subset: str = "valid",
                     per_object: int | None = EXPRESSIONS_PER_OBJECT, quality: int = 95) -> dict:
    """Write one clip's JPEG frames and palette annotations; returns its meta_expressions entry.
    Frames are rendered and written one at a time."""
    root = Path(root)
    images = root / subset / "JPEGImages" / video
    annotations = root / subset / "Annotations" / video
    images.mkdir(parents=True, exist_ok=True)
    annotations.mkdir(parents=True, exist_ok=True)
    names = []
    for t in range(clip.num_frames):
        frame = clip.frame(t)
        name = frame_name(t)
        frame.image.save(images / f"{name}.jpg", quality=quality)
        write_palette_png(label_map(frame.masks), annotations / f"{name}.png")
        names.append(name)
    return {"expressions": clip_expressions(clip, per_object), "frames": sorted(names)}


def write_shapes_davis(root: Path, split: str = "demo", videos: int = 3, frames: int = 8, size: int = 128,
                       first: int = 0, subset: str = "valid", per_object: int | None = EXPRESSIONS_PER_OBJECT,
                       family: str = "fixed") -> Path:
    """Clips `first` .. `first + videos - 1` of `split` as a Ref-DAVIS17-layout folder; returns the
    path of meta_expressions.json. The two JSON files list the videos of this call (rewritten).
    `frames` and `size` apply to the "fixed" family; "motion" clips draw their own."""
    if family not in CLIP_FAMILIES:
        raise ValueError(f"family must be one of {sorted(CLIP_FAMILIES)}, got {family!r}")
    root = Path(root)
    meta_expressions: dict[str, dict] = {}
    meta_objects: dict[str, dict] = {}
    for index in range(first, first + videos):
        if family == "fixed":
            clip, video = make_clip(split, index, frames=frames, size=size), f"shapes-{split}-{index:04d}"
        else:
            clip, video = make_motion_clip(split, index), f"motion-{split}-{index:04d}"
        meta_expressions[video] = write_davis_clip(root, clip, video, subset, per_object)
        meta_objects[video] = {"objects": {str(k + 1): {"category": o.shape} for k, o in enumerate(clip.objects)}}
    meta_dir = root / "meta_expressions" / subset
    meta_dir.mkdir(parents=True, exist_ok=True)
    path = meta_dir / "meta_expressions.json"
    with open(path, "w") as out:
        json.dump({"videos": meta_expressions}, out)
    with open(root / subset / "meta.json", "w") as out:
        json.dump({"videos": meta_objects}, out)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="Write moving-shape clips in the Ref-DAVIS17 layout")
    parser.add_argument("root", type=Path)
    parser.add_argument("--split", default="demo", choices=["train", "demo", "test"])
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--family", default="fixed", choices=CLIP_FAMILIES)
    args = parser.parse_args()
    print(write_shapes_davis(args.root, args.split, args.videos, args.frames, args.size, family=args.family))


if __name__ == "__main__":
    main()

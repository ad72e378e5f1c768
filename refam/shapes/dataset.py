"""Write procedural scenes as a refam manifest (images, one mask PNG per expression, JSONL)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from refam.shapes.scenes import make_scene
from refam.shapes.varied import make_varied_scene

FAMILIES = {"fixed": make_scene, "varied": make_varied_scene}


def write_shapes_set(folder: Path, split: str, scenes: int, per_scene: int = 5, first: int = 0,
                     family: str = "fixed") -> Path:
    """Scenes `first` .. `first + scenes - 1` of `split`; at most `per_scene` expressions each,
    spread over the expression kinds. `family`: "fixed" (the demo set's one background and two
    sizes, `refam.shapes.scenes`) or "varied" (any background, size and aspect ratio,
    `refam.shapes.varied`). Returns the manifest path."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(first, first + scenes):
        scene = FAMILIES[family](split, index)
        sample_id = f"{split}-{index:05d}" if family == "fixed" else f"{family}-{split}-{index:05d}"
        scene.image.save(folder / "images" / f"{sample_id}.png")
        chosen, kinds = [], set()
        for referral in scene.referrals:  # one per kind first, then the rest in order
            if referral.kind not in kinds:
                chosen.append(referral)
                kinds.add(referral.kind)
        chosen += [r for r in scene.referrals if r not in chosen]
        expressions = []
        for k, referral in enumerate(chosen[:per_scene]):
            expression_id = f"{sample_id}-{k}"
            mask = scene.objects[referral.target].mask
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "masks" / f"{expression_id}.png")
            expressions.append({"text": referral.text, "id": expression_id, "mask": f"masks/{expression_id}.png",
                                "kind": referral.kind})
        lines.append(json.dumps({"id": sample_id, "image": f"images/{sample_id}.png", "caption": scene.caption(),
                                 "expressions": expressions}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="refam make-shapes-set", description=write_shapes_set.__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--split", default="demo", choices=["demo", "test", "train"])
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--per-scene", type=int, default=5)
    parser.add_argument("--family", default="fixed", choices=list(FAMILIES))
    args = parser.parse_args(argv)
    print(write_shapes_set(args.folder, args.split, args.scenes, args.per_scene, family=args.family))


if __name__ == "__main__":
    main()

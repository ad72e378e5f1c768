"""How well refam-shapes-video grounds: the key frame's point on held-out motion clips, by kind.

    python -m refam.shapes.evaluate_video [--model refam/embedded/refam-shapes-video] [--clips 40]

A hit is the first frame's argmax point (the paper's key frame) inside the referent's mask there,
read exactly as `refam predict --video` reads it: `MochiExtractor` with the embedded section's
settings, the paper's magnets and stop-word filter, the softmax-mean aggregator. No segmenter runs,
so this scores the model alone; `refam test` scores the whole video path (J&F).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Iterable

import torch

from refam.aggregators.base import SoftmaxMeanAggregator
from refam.aggregators.magnets import PAPER_MAGNETS, AppendMagnets
from refam.extractors.mochi import MochiExtractor
from refam.prompts.point import argmax_points
from refam.shapes.motion import make_motion_clip
from refam.shapes.video_model import CLIP_FRAMES, FRAME

LOOKS = ("colour+shape", "colour", "shape")


def video_extractor(model: str, **settings) -> MochiExtractor:
    """The extractor as the embedded refam-shapes-video section builds it (refam-shapes-video.yaml)."""
    extractor = MochiExtractor(model, height=FRAME[0], width=FRAME[1], clip_frames=CLIP_FRAMES, torch_dtype="float32",
                               caption_max_tokens=32, **settings)
    extractor.setup(torch.device("cpu"))
    return extractor


def key_point_accuracy(model: str, indices: Iterable[int], split: str = "test",
                       extractor: MochiExtractor | None = None) -> dict[str, float]:
    """Point accuracy (%) on the first frame, over every expression of clips `indices` of `split`,
    for looks ("the red circle"), motion (every kind that needs it) and all."""
    extractor = extractor or video_extractor(model)
    magnets, aggregator = AppendMagnets(PAPER_MAGNETS, filter_stop_words=True), SoftmaxMeanAggregator()
    hits: dict[str, list[bool]] = defaultdict(list)
    for index in indices:
        clip = make_motion_clip(split, index)
        if not clip.referrals:
            continue
        frames = [clip.frame(t) for t in range(min(clip.num_frames, extractor.clip_frames))]
        augmented = [magnets.augment(r.text) for r in clip.referrals]
        maps = extractor.extract_video([f.image for f in frames], "", augmented, f"{split}-{index}",
                                       magnet_vectors=magnets.vectors)
        keep = torch.tensor([magnets.keep(tokens, r.text) for tokens, r in zip(maps.tokens, clip.referrals)])
        heatmaps = aggregator(maps, keep).heatmaps[:, 0]  # latent frame 0 holds frame 0 alone
        points = argmax_points(heatmaps, clip.height, clip.width)
        for referral, (x, y) in zip(clip.referrals, points.tolist()):
            mask = frames[0].masks[referral.target]
            hit = bool(mask[min(int(y), clip.height - 1), min(int(x), clip.width - 1)])
            hits["looks" if referral.kind in LOOKS else "motion"].append(hit)
            hits["all"].append(hit)
    return {kind: round(100.0 * sum(v) / len(v), 1) for kind, v in sorted(hits.items()) if v}


def main(argv: list[str] | None = None) -> None:
    from refam.embedded import FOLDER

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(FOLDER / "refam-shapes-video"))
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--split", default="test", choices=["demo", "test"])
    args = parser.parse_args(argv)
    print(json.dumps(key_point_accuracy(args.model, range(args.clips), args.split)))


if __name__ == "__main__":
    main()

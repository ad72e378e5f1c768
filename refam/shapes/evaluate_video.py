"""How well refam-shapes-video grounds, on held-out clips of the kind a user draws.

    python -m refam.shapes.evaluate_video [--model refam/embedded/refam-shapes-video] [--clips 40] [--jf]

`key_point_accuracy`: a hit is the first frame's argmax point (the paper's key frame) inside the
referent's mask there, read exactly as `refam predict --video` reads it (`MochiExtractor` with the
embedded section's settings, the paper's magnets and stop-word filter, the softmax-mean aggregator);
no segmenter runs, so this scores the model alone. `clip_scores` runs the whole default video
pipeline (the point, then the tracker) on the clips written as JPEG frames, and scores each
expression's track with J (region IoU) and F (boundary F, as davis2017-evaluation computes them)
over every frame: "the <colour> <shape>" and the twins' "the <colour> <shape> moving <direction>".
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
    for looks ("the red circle"), motion (every kind that needs it), twins (a direction expression
    whose referent has an identical twin: only motion tells them apart) and all."""
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
            if referral.kind == "motion" and twin_of(clip, referral.target):
                hits["twins"].append(hit)
            hits["all"].append(hit)
    return {kind: round(100.0 * sum(v) / len(v), 1) for kind, v in sorted(hits.items()) if v}


def default_video_pipeline(model: str | None = None):
    """The embedded video section's pipeline (`refam/embedded/refam-shapes-video.yaml`), on `model`
    instead of the shipped weights when given."""
    import copy

    from refam.embedded import DEFAULT_VIDEO_CONFIG
    from refam.sections import build_pipeline, config_section

    section = copy.deepcopy(config_section(DEFAULT_VIDEO_CONFIG))
    if model is not None:
        section["extractor"]["init_args"]["pretrained"] = str(model)
    pipeline = build_pipeline(section, origin=str(DEFAULT_VIDEO_CONFIG))
    pipeline.setup("cpu")
    return pipeline


def twin_of(clip, target: int) -> bool:
    o = clip.objects[target]
    return sum((x.colour, x.shape, x.rgb, x.r) == (o.colour, o.shape, o.rgb, o.r) for x in clip.objects) > 1


def clip_scores(pipeline, indices: Iterable[int], split: str = "test", folder=None, **overrides) -> dict[str, dict]:
    """J, F and J&F (%) of every expression's track, averaged per group: "looks" ("the <colour>
    <shape>"), "twins" (a motion expression whose referent has an identical twin), "motion" (every
    motion kind) and "all". `overrides` go to `make_motion_clip` (width, height, frames, twins)."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from refam.metrics.jf import contour_accuracy, region_similarity
    from refam.types import VideoExpression, VideoSample

    per_group: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        for index in indices:
            clip = make_motion_clip(split, index, **overrides)
            frames, truths = [], []  # each frame rendered once: written as JPEG, its masks kept for scoring
            for t in range(clip.num_frames):
                path = Path(scratch) / f"{split}-{index}-{t:05d}.jpg"
                frame = clip.frame(t)
                frame.image.save(path, quality=95)
                frames.append(str(path))
                truths.append(frame.masks)
            expressions = [VideoExpression(r.text, str(k)) for k, r in enumerate(clip.referrals)]
            scores: dict[str, list[tuple[float, float]]] = defaultdict(list)

            def score(expression, t, mask, clip=clip, scores=scores, truths=truths):
                truth = truths[t][clip.referrals[int(expression.expression_id)].target]
                scores[expression.expression_id].append((region_similarity(mask, truth), contour_accuracy(mask, truth)))

            pipeline.segment_video(VideoSample(f"{split}-{index}", frames, expressions), on_mask=score)
            for k, referral in enumerate(clip.referrals):
                j, f = np.mean(scores[str(k)], axis=0) if scores[str(k)] else (0.0, 0.0)
                groups = ["all"]
                if referral.kind == "colour+shape":
                    groups.append("looks")
                elif referral.kind not in LOOKS:
                    groups.append("motion")
                    if referral.kind == "motion" and twin_of(clip, referral.target):
                        groups.append("twins")
                for group in groups:
                    per_group[group].append((float(j), float(f)))
    out = {}
    for group, values in sorted(per_group.items()):
        j, f = (float(np.mean(column)) for column in zip(*values))
        out[group] = {"J&F": round(50.0 * (j + f), 1), "J": round(100.0 * j, 1), "F": round(100.0 * f, 1),
                      "expressions": len(values)}
    return out


def main(argv: list[str] | None = None) -> None:
    from refam.embedded import FOLDER

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(FOLDER / "refam-shapes-video"))
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--split", default="test", choices=["demo", "test"])
    parser.add_argument("--jf", action="store_true", help="also run the tracker and score J&F per expression")
    args = parser.parse_args(argv)
    print(json.dumps(key_point_accuracy(args.model, range(args.clips), args.split)))
    if args.jf:
        pipeline = default_video_pipeline(args.model)
        print(json.dumps(clip_scores(pipeline, range(args.clips), args.split)))
        print("twins:", json.dumps(clip_scores(pipeline, range(args.clips), args.split, twins=True)))


if __name__ == "__main__":
    main()

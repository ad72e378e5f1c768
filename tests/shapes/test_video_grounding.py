"""End to end on the embedded video model: the video demo's clips (assets/shapes-video-demo, the
Ref-DAVIS17 layout) through the default video pipeline (refam-shapes-video, the key frame's point,
the weightless tracker), scored per expression with J and F over every frame.

The correct code stays far above four classic video bugs, each injected alone: the frames reversed
in time before the DiT, the frame-to-latent mapping off by one latent frame, the point applied to a
frame of another window than the one it was read on, and tracking only forward from a middle key
frame. Scored per expression (not with the unsupervised protocol's matching, which forgives two
twins swapped), so a model that confuses the twins loses here.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import refam.extractors.video_template as video_template
import refam.pipeline as pipeline_module
from refam.data.davis import RefDAVIS17
from refam.metrics.jf import contour_accuracy, region_similarity
from refam.segmenters.flood_track import FloodTrackSegmenter
from refam.shapes.evaluate_video import default_video_pipeline
from refam.shapes.motion import make_motion_clip
from refam.shapes.video_model import CLIP_FRAMES

pytestmark = pytest.mark.slow
DEMO = Path(__file__).resolve().parents[2] / "assets" / "shapes-video-demo"
FLOOR = 70.0  # issue K's target for the demo; the shipped model is far under it (below)
MARGIN = 5.0  # what each injected bug costs at least (measured: 7.8, 7.8 and 9.7 points)
# Measured with the shipped refam-shapes-video (2026-12-07): per-expression J&F 36.0 on the demo;
# frames reversed 28.2, frame-to-latent off by one 37.7, key frame from another window 28.2, forward
# only from a confident (middle) key frame 27.4 against 37.1 both ways. The model grounds looks
# weakly and motion not at all (twins at chance), so the floor and the off-by-one bug, which needs a
# model whose latent frames differ in what they ground, are expected failures until a stronger model
# ships (issue K stays open); strict, so they turn into failures to fix the moment one passes.
WEAK_MODEL = pytest.mark.xfail(strict=True, reason="refam-shapes-video is too weak for issue K's targets (see above)")


@pytest.fixture(scope="module")
def pipeline():
    return default_video_pipeline()


@pytest.fixture(scope="module")
def demo():
    return RefDAVIS17(str(DEMO), split="valid")


def per_expression_jf(pipeline, dataset, settings=None) -> float:
    """Mean over the demo's expressions of (J + F) / 2, each averaged over every frame (%)."""
    values = []
    for index in range(len(dataset)):
        video = dataset[index]
        scores: dict[str, list[tuple[float, float]]] = {e.expression_id: [] for e in video.expressions}

        def score(expression, t, mask, video=video, scores=scores):
            truth = video.truth.mask(expression, t)
            scores[expression.expression_id].append((region_similarity(mask, truth), contour_accuracy(mask, truth)))

        pipeline.segment_video(video, on_mask=score, settings=settings)
        for expression in video.expressions:
            frames = scores[expression.expression_id]
            assert len(frames) == len(video.frames)  # every frame scored once
            values.append(50.0 * sum(np.mean(frames, axis=0)))
    print(f"per-expression J&F {np.mean(values):.1f} over {len(values)} expressions")
    return float(np.mean(values))


@pytest.fixture(scope="module")
def correct(pipeline, demo):
    return per_expression_jf(pipeline, demo)


@WEAK_MODEL
def test_correct_code_clears_the_floor(correct):
    assert correct >= FLOOR, f"per-expression J&F {correct:.1f} under the floor {FLOOR}"


def test_frames_reversed_in_time(pipeline, demo, correct, monkeypatch):
    original = video_template.as_frames
    monkeypatch.setattr(video_template, "as_frames", lambda frames: list(original(frames))[::-1])
    bugged = per_expression_jf(pipeline, demo)
    assert bugged <= correct - MARGIN, (bugged, correct)


@WEAK_MODEL
def test_frame_to_latent_off_by_one(pipeline, demo, correct, monkeypatch):
    original = video_template.latent_frames
    monkeypatch.setattr(video_template, "latent_frames",
                        lambda clips: [min(latent + 1, max(original(clips))) for latent in original(clips)])
    bugged = per_expression_jf(pipeline, demo)
    assert bugged <= correct - MARGIN, (bugged, correct)


def test_key_frame_from_another_window(pipeline, demo, correct, monkeypatch):
    """The point read on the first window's key frame, applied to the next window's first frame."""
    original = pipeline_module.RefAMPipeline._track

    def elsewhere(self, video, frame, point):
        return original(self, video, min(frame + CLIP_FRAMES, len(video.frames) - 1), point)

    monkeypatch.setattr(pipeline_module.RefAMPipeline, "_track", elsewhere)
    bugged = per_expression_jf(pipeline, demo)
    assert bugged <= correct - MARGIN, (bugged, correct)


def test_tracking_only_forward_from_a_middle_key_frame(pipeline, demo, monkeypatch):
    """With the key frame in the middle ("confident" picks the latent frame whose heatmap peaks),
    frames before it must be tracked backward."""
    settings = replace(pipeline.settings, key_frame="confident")
    both_ways = per_expression_jf(pipeline, demo, settings)
    original = FloodTrackSegmenter.track

    def forward_only(self, frames, frame_index, point):
        for index, mask in original(self, frames, frame_index, point):
            yield index, mask if index >= frame_index else np.zeros_like(mask)

    monkeypatch.setattr(FloodTrackSegmenter, "track", forward_only)
    bugged = per_expression_jf(pipeline, demo, settings)
    assert bugged <= both_ways - MARGIN, (bugged, both_ways)


@WEAK_MODEL
def test_the_twins_of_a_motion_clip_get_different_masks(pipeline):
    """Two identical shapes that only motion tells apart: the two expressions that name each one's
    motion get different masks on the key frame, each on its own twin."""
    told_apart, pairs = 0, 0
    for index in range(10):
        clip = make_motion_clip("test", index, twins=True)
        twin_looks = [(o.shape, o.colour, o.rgb, o.r) for o in clip.objects]
        twins = [k for k, looks in enumerate(twin_looks) if twin_looks.count(looks) == 2]
        chosen = {}
        for referral in clip.referrals:  # one motion expression per twin
            if referral.target in twins and referral.kind in ("motion", "still", "moving"):
                chosen.setdefault(referral.target, referral.text)
        if len(chosen) < 2:
            continue
        pairs += 1
        frames = [clip.frame(t) for t in range(clip.num_frames)]
        texts = [chosen[k] for k in twins]
        predictions = run_on_frames(pipeline, frames, texts)
        first, second = (p.mask for p in predictions)
        truth = [frames[0].masks[k] for k in twins]
        if (first & second).sum() == 0 and all(region_similarity(p.mask, t) > 0.9 for p, t in zip(predictions, truth)):
            told_apart += 1
    assert pairs >= 8 and told_apart >= 0.75 * pairs, f"twins told apart in {told_apart} of {pairs} clips"


def run_on_frames(pipeline, frames, texts):
    """The default pipeline on frames written as JPEG files, as a user's clip arrives."""
    import tempfile

    from refam.types import VideoExpression, VideoSample

    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for t, frame in enumerate(frames):
            paths.append(str(Path(folder) / f"{t:05d}.jpg"))
            frame.image.save(paths[-1], quality=95)
        video = VideoSample("twins", paths, [VideoExpression(text, str(k)) for k, text in enumerate(texts)])
        result = pipeline.segment_video(video)
    return sorted(result.predictions, key=lambda p: int(p.expression_id))


def test_unchanged_extractor_reads_the_model(pipeline):
    """The shipped folder is a plain Mochi pipeline the unchanged MochiExtractor reads."""
    from diffusers import MochiPipeline

    assert isinstance(pipeline.extractor.pipe, MochiPipeline)
    assert pipeline.extractor.pipe.vae.temporal_compression_ratio == 6
    assert type(pipeline.extractor.pipe.transformer).__name__ == "MochiTransformer3DModel"
    assert torch.is_tensor(next(pipeline.extractor.pipe.transformer.parameters()))

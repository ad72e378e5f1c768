"""End to end on the embedded video model: the video demo's clips (assets/shapes-video-demo, the
Ref-DAVIS17 layout) through the default video pipeline (refam-shapes-video, the key frame's point,
the weightless tracker), scored per expression with J and F over every frame.

The correct code stays far above four classic video bugs, each injected alone, each scored where it
does its harm: the frames reversed in time before the DiT, the frame-to-latent mapping off by one
latent frame and the point applied to a frame of another window than the one it was read on, on
the expressions whose referent moves (a still referent is where it was in every frame); tracking
only forward from a middle key frame, on the frames before the key frame. Scored per expression
(not with the unsupervised protocol's matching, which forgives two twins swapped), so a model that
confuses the twins loses here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

import refam.extractors.video_template as video_template
import refam.pipeline as pipeline_module
from refam.data.davis import RefDAVIS17
from refam.metrics.jf import contour_accuracy, region_similarity
from refam.segmenters.flood_track import FloodTrackSegmenter
from refam.shapes.evaluate_video import clip_scores, default_video_pipeline
from refam.shapes.motion import make_motion_clip
from refam.shapes.video_model import CLIP_FRAMES

pytestmark = pytest.mark.slow
DEMO = Path(__file__).resolve().parents[2] / "assets" / "shapes-video-demo"
FLOOR = 70.0  # issue K's target for the demo, asked here of the per-expression J&F (stricter than its protocol's)
MARGIN = 5.0  # what each injected bug costs at least
# Measured with the shipped refam-shapes-video (2026-12-08, session 13, run 4): per-expression J&F
# 71.1 on the demo (its unsupervised protocol: 77.1). On the 56 expressions whose referent moves at
# least its own diameter: correct 80.8; frames reversed 22.7; frame-to-latent off by one latent
# frame 61.3; the point applied to the next window's first frame 23.0. Over the frames before a
# confident key frame: both ways 64.9, forward only 41.9. Twins told apart in 8 of 10 clips (7
# before the tracker took in the inside of a small shape clicked on its JPEG-blended edge; per
# expression 69.7 then). Session 12's run 3 failed both the floor (65.9) and the twins test.


@pytest.fixture(scope="module")
def pipeline():
    return default_video_pipeline()


@pytest.fixture(scope="module")
def demo():
    return RefDAVIS17(str(DEMO), split="valid")


@dataclass
class Scored:
    """One expression's run: (J, F) on every frame, its key frame, and whether its referent moves at
    least its own diameter between the first and last frames (read off the ground truth)."""

    frames: list[tuple[float, float]]
    key_frame: int
    moves: bool


def run_demo(pipeline, dataset, settings=None) -> list[Scored]:
    runs = []
    for index in range(len(dataset)):
        video = dataset[index]
        scores: dict[str, list[tuple[float, float]]] = {e.expression_id: [] for e in video.expressions}
        truths: dict[str, list[np.ndarray]] = {e.expression_id: [] for e in video.expressions}

        def score(expression, t, mask, video=video):
            truth = video.truth.mask(expression, t)
            scores[expression.expression_id].append((region_similarity(mask, truth), contour_accuracy(mask, truth)))
            truths[expression.expression_id].append(truth)

        result = pipeline.segment_video(video, on_mask=score, settings=settings)
        key_frames = {p.expression_id: p.frame for p in result.predictions}
        for expression in video.expressions:
            frames = scores[expression.expression_id]
            assert len(frames) == len(video.frames)  # every frame scored once
            runs.append(Scored(frames, key_frames[expression.expression_id], moves(truths[expression.expression_id])))
    return runs


def moves(truth: list[np.ndarray]) -> bool:
    """The referent's centre travels at least its own (equivalent) diameter over the clip."""
    present = [m for m in truth if m.any()]
    if len(present) < 2:
        return False
    first, last = (np.argwhere(m).mean(0) for m in (present[0], present[-1]))
    return float(np.linalg.norm(last - first)) >= 2.0 * np.sqrt(present[0].sum() / np.pi)


def jf(runs: list[Scored], frames=lambda run: range(len(run.frames))) -> float:
    """Mean over `runs` of (J + F) / 2 over the `frames` of each that has any (%)."""
    values = [50.0 * sum(np.mean([run.frames[t] for t in chosen], axis=0))
              for run in runs if (chosen := list(frames(run)))]
    return float(np.mean(values))


def moving(runs: list[Scored]) -> float:
    """J&F of the expressions whose referent moves: where reading the wrong frame costs."""
    return jf([run for run in runs if run.moves])


def before_key_frame(runs: list[Scored]) -> float:
    """J&F over the frames before each expression's key frame: what backward tracking makes."""
    return jf(runs, lambda run: range(run.key_frame))


@pytest.fixture(scope="module")
def correct(pipeline, demo):
    runs = run_demo(pipeline, demo)
    print(f"correct: per-expression J&F {jf(runs):.1f}, moving referents {moving(runs):.1f} "
          f"({sum(r.moves for r in runs)} of {len(runs)})")
    return runs


def test_correct_code_clears_the_floor(correct):
    assert jf(correct) >= FLOOR, f"per-expression J&F {jf(correct):.1f} under the floor {FLOOR}"


def test_frames_reversed_in_time(pipeline, demo, correct, monkeypatch):
    original = video_template.as_frames
    monkeypatch.setattr(video_template, "as_frames", lambda frames: list(original(frames))[::-1])
    bugged = moving(run_demo(pipeline, demo))
    print(f"moving referents: bugged {bugged:.1f}, correct {moving(correct):.1f}")
    assert bugged <= moving(correct) - MARGIN, (bugged, moving(correct))


def test_frame_to_latent_off_by_one(pipeline, demo, correct, monkeypatch):
    original = video_template.latent_frames
    monkeypatch.setattr(video_template, "latent_frames",
                        lambda clips: [min(latent + 1, max(original(clips))) for latent in original(clips)])
    bugged = moving(run_demo(pipeline, demo))
    print(f"moving referents: bugged {bugged:.1f}, correct {moving(correct):.1f}")
    assert bugged <= moving(correct) - MARGIN, (bugged, moving(correct))


def test_key_frame_from_another_window(pipeline, demo, correct, monkeypatch):
    """The point read on the first window's key frame, applied to the next window's first frame."""
    original = pipeline_module.RefAMPipeline._track

    def elsewhere(self, video, frame, point):
        return original(self, video, min(frame + CLIP_FRAMES, len(video.frames) - 1), point)

    monkeypatch.setattr(pipeline_module.RefAMPipeline, "_track", elsewhere)
    bugged = moving(run_demo(pipeline, demo))
    print(f"moving referents: bugged {bugged:.1f}, correct {moving(correct):.1f}")
    assert bugged <= moving(correct) - MARGIN, (bugged, moving(correct))


def test_tracking_only_forward_from_a_middle_key_frame(pipeline, demo, monkeypatch):
    """With the key frame in the middle ("confident" picks the latent frame whose heatmap peaks),
    frames before it must be tracked backward."""
    settings = replace(pipeline.settings, key_frame="confident")
    both_ways = before_key_frame(run_demo(pipeline, demo, settings))
    original = FloodTrackSegmenter.track

    def forward_only(self, frames, frame_index, point):
        for index, mask in original(self, frames, frame_index, point):
            yield index, mask if index >= frame_index else np.zeros_like(mask)

    monkeypatch.setattr(FloodTrackSegmenter, "track", forward_only)
    bugged = before_key_frame(run_demo(pipeline, demo, settings))
    print(f"frames before the key frame: forward only {bugged:.1f}, both ways {both_ways:.1f}")
    assert bugged <= both_ways - MARGIN, (bugged, both_ways)


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


def test_issue_k_targets_on_held_out_clips(pipeline, tmp_path):
    """Issue K's targets with the default pipeline, scored as `python -m refam.shapes.evaluate_video
    --jf` scores them: "the <colour> <shape>" J&F >= 85 on test clips 0-19, and the twins' "the
    <colour> <shape> moving <direction>" J&F >= 75 on clips 0-19 drawn with twins (measured with
    run 4: 90.3 on 42 expressions, 97.0 on 34)."""
    looks = clip_scores(pipeline, range(20), folder=tmp_path)["looks"]
    twins = clip_scores(pipeline, range(20), folder=tmp_path, twins=True)["twins"]
    print(f"looks J&F {looks['J&F']} ({looks['expressions']}), twins J&F {twins['J&F']} ({twins['expressions']})")
    assert looks["expressions"] >= 40 and looks["J&F"] >= 85.0, looks
    assert twins["expressions"] >= 30 and twins["J&F"] >= 75.0, twins


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

"""Without a config, a video runs the embedded video pipeline (a video backbone, the key frame's
point, the weightless tracker), not per-frame image segmentation: in the API (`RefAM.load()` then a
video), in `refam predict --video` and in `refam serve`. The wiring is tested here on a tiny Mochi
standing in for the shipped refam-shapes-video (its accuracy is tests/shapes/test_video_grounding.py's)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import refam.api
from refam import RefAM
from refam.shapes.motion import make_motion_clip
from refam.testing.tiny_mochi import save_tiny_mochi


@pytest.fixture(scope="module")
def video_default(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("video-default")
    mochi = save_tiny_mochi(folder / "mochi")
    section = {"extractor": {"class_path": "refam.extractors.mochi.MochiExtractor",
                             "init_args": {"pretrained": str(mochi), "torch_dtype": "float32", "height": 48, "width": 80,
                                           "clip_frames": 7, "caption_max_tokens": 16}},
               "segmenter": {"class_path": "refam.segmenters.flood_track.FloodTrackSegmenter"}}
    config = folder / "default-video.yaml"
    config.write_text(yaml.safe_dump({"model": section}))
    return config


@pytest.fixture
def embedded_video(video_default, monkeypatch):
    monkeypatch.setattr(refam.api, "DEFAULT_VIDEO_CONFIG", video_default)
    return video_default


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip") / "clip"
    folder.mkdir()
    clip = make_motion_clip("test", 0, frames=9)
    for t in range(clip.num_frames):
        clip.frame(t).image.save(folder / f"{t:05d}.jpg", quality=95)
    return folder


def test_the_embedded_default_runs_videos_on_the_embedded_video_pipeline(embedded_video, clip_folder):
    model = RefAM.load()
    assert not model.pipeline.reads_video
    video = model.for_video()
    assert video.pipeline.reads_video and video is model.for_video()  # loaded once
    assert video.pipeline.extractor.pretrained.endswith("mochi")
    results = model.segment_video(clip_folder, ["the red circle", "the object moving left"])
    assert len(results) == 2
    for prediction, masks in results:
        assert prediction.frame == 0 and len(masks) == 9
        assert all(m.shape == (masks[0].shape) and m.dtype == bool for m in masks)
        assert np.array_equal(masks[prediction.frame], prediction.mask)


def test_a_configured_image_model_keeps_its_own_video_path(embedded_video, clip_folder):
    from refam.embedded import REFAM_SHAPES

    model = RefAM.load(REFAM_SHAPES)  # a folder: the user chose this model
    assert model.for_video() is model
    with pytest.raises(refam.errors.ConfigError, match="reads images only"):
        model.segment_video(clip_folder, ["the red circle"])


def test_predict_video_without_config_tracks_from_the_key_frame(embedded_video, clip_folder, tmp_path, refam_here):
    result = refam_here("predict", "--video", str(clip_folder), "--expression", "the red circle",
                        "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "clip" / "0-the-red-circle.json").read_text())
    assert record["key_frame"] == 0 and "frames" not in record  # the tracker's record, not per-frame segmentation
    masks = sorted((tmp_path / "out" / "clip" / "0-the-red-circle").glob("*.png"))
    assert [m.stem for m in masks] == [f"{t:05d}" for t in range(9)]
    expected = RefAM.load().segment_video(clip_folder, ["the red circle"])[0][1]
    for path, mask in zip(masks, expected):
        assert np.array_equal(np.asarray(Image.open(path)) == 255, mask)


def test_serve_runs_a_video_on_the_embedded_video_pipeline(embedded_video, clip_folder, tmp_path):
    import cv2

    from refam.apps.serve.session import Session
    from refam.sections import model_section

    video = tmp_path / "clip.avi"
    frames = sorted(clip_folder.glob("*.jpg"))
    first = cv2.imread(str(frames[0]))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"FFV1"), 5, (first.shape[1], first.shape[0]))
    for path in frames:
        writer.write(cv2.imread(str(path)))
    writer.release()
    model = RefAM.load()
    session = Session(model, model_section(None), workdir=tmp_path / "serve")
    run = session.run(video, "the red circle")
    assert run.frames == 9
    assert run.record["model"]["extractor"]["class_path"].endswith("MochiExtractor")
    assert run.record["run"]["expressions"][0]["key_frame"] == 0
    assert session.settings == model.for_video().settings
    image_run = session.run(frames[0], "the red circle")  # an image still runs on the image model
    assert image_run.record["model"]["extractor"]["class_path"].endswith("FluxExtractor")

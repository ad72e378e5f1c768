"""`refam serve`'s videos and restores, in-process on the embedded models: an animated GIF is a
video and a still one an image; the uploaded video and the tracked masks become clips a browser plays
(VP8 WebM), the masks' clip showing each expression's masks frame by frame; a video's maps are its
key frame's and say so; a downloaded run given as `--config` puts its input, expressions and caption
back; a busy port is refused before the model loads. (The playing itself: test_serve_browser.py.)"""

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from refam.apps.serve import RestoredRun, Session, build_app, page_preview, restored_run  # noqa: E402
from refam.apps.serve.clips import fitted, is_video, TILE_SIDE  # noqa: E402
from refam.errors import ConfigError  # noqa: E402
from tests.fixtures.serve_session import session  # noqa: E402,F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "assets/shapes-demo/images/demo-00005.png"
CAPTION = "a big red triangle, a big black square, a big purple circle and a big green circle"
CLIP_FRAMES = sorted((ROOT / "assets/shapes-video-demo/valid/JPEGImages/motion-demo-0000").glob("*.jpg"))[:5]


def save_gif(path: Path, frames: list[Path], milliseconds: int = 200) -> Path:
    pictures = [Image.open(p).convert("RGB") for p in frames]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=milliseconds, loop=0)
    return path


def save_mp4(path: Path, frames: list[Path], fps: float = 5) -> Path:
    """MPEG-4 Part 2, what OpenCV writes as MP4 here and what browsers do not play."""
    import cv2

    first = Image.open(frames[0])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, first.size)
    for frame in frames:
        writer.write(np.asarray(Image.open(frame).convert("RGB"))[:, :, ::-1].copy())
    writer.release()
    return path


def decoded(clip) -> tuple[list[np.ndarray], float, str]:
    """A clip's frames (RGB), frame rate and codec, as a player decodes them."""
    import cv2

    capture = cv2.VideoCapture(str(clip))
    codec = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode()
    fps, frames = capture.get(cv2.CAP_PROP_FPS), []
    ok, frame = capture.read()
    while ok:
        frames.append(frame[:, :, ::-1])
        ok, frame = capture.read()
    capture.release()
    return frames, fps, codec


def test_an_animated_gif_is_a_video_and_a_still_gif_or_png_an_image(tmp_path):
    animated = save_gif(tmp_path / "moving.gif", CLIP_FRAMES)
    still = save_gif(tmp_path / "still.gif", CLIP_FRAMES[:1])
    mp4 = save_mp4(tmp_path / "clip.mp4", CLIP_FRAMES)
    assert is_video(animated) and is_video(mp4)
    assert not is_video(still) and not is_video(SCENE)


def test_an_uploaded_video_or_gif_is_previewed_as_a_clip_a_browser_plays(session, tmp_path):
    for video, fps in ((save_mp4(tmp_path / "clip.mp4", CLIP_FRAMES, fps=5), 5.0),
                       (save_gif(tmp_path / "moving.gif", CLIP_FRAMES, milliseconds=100), 10.0)):
        image, clip, line = page_preview(session, str(video))
        assert image is None and line == f"video: {video.name}, 5 frames at {fps:g} fps"
        frames, rate, codec = decoded(clip)
        assert codec == "VP80" and Path(clip).suffix == ".webm" and rate == pytest.approx(fps, rel=0.01)
        assert len(frames) == 5 and frames[0].shape == (512, 512, 3)  # every frame, 128 px enlarged 4x
        source = np.asarray(Image.open(CLIP_FRAMES[3]).convert("RGB").resize((512, 512), Image.Resampling.NEAREST))
        assert np.abs(frames[3].astype(int) - source).mean() < 8  # the frames in order (VP8 is lossy)
    image, clip, line = page_preview(session, str(save_gif(tmp_path / "still.gif", CLIP_FRAMES[:1])))
    assert image.size == (128, 128) and clip is None and line == ""


def test_a_gif_runs_as_a_video_its_masks_play_as_a_clip_and_its_maps_are_the_key_frames(session, tmp_path):
    import zipfile

    from refam.apps.serve.page import shown_run
    from refam.visualize import mask_image, mask_overlay

    gif = save_gif(tmp_path / "moving.gif", CLIP_FRAMES)
    texts = ["the black square", "the orange circle"]
    run = session.run(str(gif), "\n".join(texts), "")
    assert run.frames == 5 and run.record["run"]["frames"] == 5  # every frame, not the first one as a still
    with zipfile.ZipFile(run.downloads[0]) as bundle:
        assert len([n for n in bundle.namelist() if n.startswith("1-the-orange-circle/")]) == 5
    # the key frame's maps, named as such: the mask and heatmap pictures, and each card's token maps
    keys = [p.frame or 0 for p in run.predictions]
    assert [c for _, c in run.pictures] == [f"{t} (key frame {k}): {what}" for t, k in zip(texts, keys)
                                            for what in ("mask and point", "heatmap")]
    cards = shown_run(run, (), session.defaults, gif.name).cards
    assert [f"· key frame {k}</span>" in card for card, k in zip(cards, keys)] == [True, True]
    assert all('data-layer="token-0"' in card for card in cards) and all(p.token_maps is not None for p in run.predictions)
    # the tracked masks' clip: each frame holds, tile by tile, that expression's mask over that frame
    frames, rate, codec = decoded(run.clip)
    assert codec == "VP80" and len(frames) == 5 and rate == pytest.approx(5.0, rel=0.01) and run.clip in run.downloads
    stems = ("0-the-black-square", "1-the-orange-circle")
    for index in (0, 4):
        frame = Image.open(CLIP_FRAMES[index]).convert("RGB")
        masks = [np.asarray(Image.open(run.folder / "moving" / stem / f"{index:05d}.png")) > 127 for stem in stems]
        region = np.asarray(fitted(mask_image(masks[0] | masks[1]), TILE_SIDE)) > 127  # where either is drawn
        for k in range(2):
            def drawn(mask):
                point = run.predictions[k].point if index == keys[k] else None
                return np.asarray(fitted(mask_overlay(frame, mask, point), TILE_SIDE)).astype(int)[region]

            height, width = region.shape
            shown = frames[index][:height, k * width:(k + 1) * width].astype(int)[region]
            errors = [np.abs(shown - drawn(mask)).mean() for mask in (masks[k], masks[1 - k], np.zeros_like(masks[k]))]
            assert errors[0] < 8 and min(errors[1:]) > 3 * errors[0]  # this expression's mask, on this frame


def test_a_downloaded_run_restores_its_input_expressions_and_caption(session, tmp_path):
    texts = "the black square\nthe purple circle"
    run = session.run(str(SCENE), texts, CAPTION)
    record, kept = Path(run.downloads[-1]), Path(next(p for p in run.downloads if "/input/" in p))
    assert record.name == "run.json" and kept.name == SCENE.name and kept.read_bytes() == SCENE.read_bytes()
    downloaded = tmp_path / "downloads"
    downloaded.mkdir()
    shutil.copy(record, downloaded)
    missing = restored_run(downloaded / "run.json")  # the input not saved beside it: said, not refused
    assert missing.input is None and (missing.expressions, missing.caption) == (texts, CAPTION)
    assert missing.note == (f"run.json was run on {SCENE.name}, which is not beside it: save {SCENE.name} from the "
                            "run's downloads next to it, or upload it")
    shutil.copy(kept, downloaded)
    restored = restored_run(downloaded / "run.json")
    assert restored == RestoredRun(texts, CAPTION, downloaded / SCENE.name)
    # the page starts with them
    app = build_app(Session(session.model, session.section, workdir=tmp_path / "work", restored=restored))
    values = {block.elem_id: getattr(block, "value", None) for block in app.blocks.values() if getattr(block, "elem_id", None)}
    assert values["refam-expressions"] == texts and values["refam-caption"] == CAPTION
    assert Path(values["refam-input"]["path"]).read_bytes() == SCENE.read_bytes()
    assert restored_run(ROOT / "configs/demo.yaml") is None and restored_run(None) is None  # other configs
    broken = json.loads(record.read_text())
    broken["run"]["caption"] = ["not", "a", "text"]
    (downloaded / "run.json").write_text(json.dumps(broken))
    with pytest.raises(ConfigError, match=r"run.json: run.caption must be a text; give the run.json the app"):
        restored_run(downloaded / "run.json")


def test_a_busy_port_is_reported_before_the_model_loads(refam_here, monkeypatch, tmp_path):
    from refam.api import RefAM

    loads = []
    monkeypatch.setattr(RefAM, "load", classmethod(lambda cls, *args, **kwargs: loads.append(args) or pytest.fail("loaded")))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = refam_here("serve", "--port", str(port))
        assert result.returncode == 2 and loads == []
        assert result.stderr.strip() == (f"refam: error: cannot serve on 127.0.0.1:{port}: Address already in use; "
                                         "choose another --port (or --host)")
    run = tmp_path / "run.json"  # a malformed run given back is refused before loading, too
    run.write_text(json.dumps({"model": {}, "run": {"expressions": "the black square"}}))
    result = refam_here("serve", "--port", str(port), "--config", str(run))
    assert result.returncode == 2 and loads == [] and "run.expressions must be a list" in result.stderr

"""`refam predict` and the Python API on the embedded refam-shapes model: outputs checked for content.

The first test runs the real console script; the others run the same `main` in this process
(`refam_here`), which skips a new process's imports."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refam.prompts.point import argmax_points
from refam.shapes.scenes import make_scene
from refam.visualize import STAR_FILL

ROOT = Path(__file__).resolve().parents[1]
REFAM = str(Path(sys.executable).parent / "refam")


def predict_in_a_new_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([REFAM, "predict", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    make_scene("test", 100).image.save(path)
    return path


@pytest.fixture(scope="module")
def model():
    from refam import RefAM

    return RefAM.load()


def star_centre(image: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(np.all(image == np.array(STAR_FILL), axis=-1))
    assert len(xs) > 10, "no star drawn"
    return float(xs.mean()), float(ys.mean())


@pytest.mark.slow
def test_predict_writes_mask_overlay_heatmap_and_record(tmp_path, scene_file, model):
    result = predict_in_a_new_process("--image", str(scene_file), "--expression", "the orange square",
                                      "--expression", "the square", "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    folder = tmp_path / "out" / "scene"
    record = json.loads((folder / "0-the-orange-square.json").read_text())
    assert {"▁with", "▁to", "▁and", "▁pink", "</s>", "▁the"} <= set(record["dropped_tokens"])  # magnets listed
    assert record["kept_tokens"] == ["▁orange", "▁square"]

    expected = model.segment(scene_file, ["the orange square"])[0]
    mask = np.asarray(Image.open(folder / record["files"]["mask"]))
    assert set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask == 255, expected.mask)  # the PNG round-trips to the predicted mask
    point = argmax_points(expected.heatmap[None], 128, 128)[0].tolist()
    assert record["point"] == pytest.approx(point)  # the recorded point is the heatmap's argmax
    scale = 4  # a 128 px scene is drawn 4x larger (whole pixels), the heatmap with a colour bar at its right
    for kind in ("overlay", "heatmap"):
        picture = np.asarray(Image.open(folder / record["files"][kind]).convert("RGB"))
        assert picture.shape[0] == 512 and (picture.shape[1] == 512 if kind == "overlay" else picture.shape[1] > 512)
        assert star_centre(picture[:, :512]) == pytest.approx([v * scale for v in point], abs=2.0)  # the star marks the argmax
    overlay = np.asarray(Image.open(folder / record["files"]["overlay"]).convert("RGB")).astype(int)
    original = np.asarray(Image.open(scene_file).convert("RGB")).astype(int).repeat(scale, 0).repeat(scale, 1)
    big_mask = expected.mask.repeat(scale, 0).repeat(scale, 1)
    grid = np.meshgrid(np.arange(512) - point[0] * scale, np.arange(512) - point[1] * scale)
    far_from_star = np.hypot(*grid) > 12 * scale
    changed = np.any(overlay != original, axis=-1)
    assert np.array_equal(changed[far_from_star], big_mask[far_from_star])  # tinted exactly where the mask is
    assert not list(folder.glob(".*.part"))  # nothing half-written


def test_api_returns_masks_points_heatmaps_and_token_maps(scene_file, model):
    first, second = model.segment(Image.open(scene_file), ["the orange square", "the triangle"])
    for result in (first, second):
        assert result.mask.shape == (128, 128) and result.mask.dtype == bool
        assert result.token_maps.shape[0] == len(result.tokens) == len(result.text_mass)
        assert result.token_maps.shape[1:] == result.heatmap.shape
        assert np.allclose(result.token_maps.sum(0).numpy(), 1.0, atol=1e-4)  # softmax across tokens per patch
    assert first.tokens[:3] == ["▁the", "▁orange", "▁square"]
    kept = [first.tokens.index(t) for t in first.kept_tokens]
    mean = first.token_maps[kept].mean(0)
    span = mean.max() - mean.min()
    assert np.allclose(((mean - mean.min()) / span).numpy(), first.heatmap.numpy(), atol=1e-5)


def test_readme_example_runs(monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)[:1]
    assert len(example.strip().splitlines()) <= 6
    monkeypatch.chdir(ROOT)  # its paths are relative to the checkout, as for a reader there
    exec(compile(example, "README.md", "exec"), {"__name__": "__main__"})
    assert "point" in capsys.readouterr().out


@pytest.mark.parametrize("args, culprit", [
    (["--image", "missing.png", "--expression", "the dog"], "--image missing.png"),
    (["--image", "{scene}", "--expression", "  "], "--expression is empty"),
    (["--image", "{scene}", "--expression", " ".join(["red"] * 200)], "the limit is 128"),
    (["--image", "{scene}"], "--expression"),
    (["--image", "{scene}", "--expression", "the dog", "--model", "{tmp}"], "model_index.json"),
])
def test_bad_input_is_one_line_naming_the_culprit_and_writes_nothing(tmp_path, scene_file, refam_here, args, culprit):
    args = [a.format(scene=scene_file, tmp=tmp_path) for a in args]
    result = refam_here("predict", *args, "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("refam: error:") and culprit in message
    assert not list((tmp_path / "out").rglob("*.png"))


def test_unreadable_image_and_unwritable_output(tmp_path, scene_file, refam_here):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    result = refam_here("predict", "--image", str(broken), "--expression", "the square",
                        "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and "cannot read image" in result.stderr and str(broken) in result.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = refam_here("predict", "--image", str(scene_file), "--expression", "the square",
                        "--output", str(blocker / "out"))
    assert result.returncode == 2 and "is not writable" in result.stderr and "--output" in result.stderr


@pytest.mark.slow
def test_a_folder_with_one_bad_image_keeps_the_others(tmp_path, scene_file, refam_here):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(scene_file.read_bytes())
    (folder / "b.png").write_bytes(b"broken")
    result = refam_here("predict", "--image", str(folder), "--expression", "the square",
                        "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "b.png" in result.stderr and "1 of 2 images" in result.stderr
    assert (tmp_path / "out/a/0-the-square_mask.png").exists()


def moving_clip(folder: Path, frames: int = 4) -> list[Image.Image]:
    """A red circle moving right past a still blue square (issue B's renderer), as frame PNGs."""
    from refam.shapes.scenes import render

    folder.mkdir(parents=True)
    images = []
    for t in range(frames):
        image, _, _ = render([("square", "blue", "big", 90.0, 40.0), ("circle", "red", "big", 30.0 + 15 * t, 90.0)])
        image.save(folder / f"{t:05d}.png")
        images.append(image)
    return images


@pytest.mark.slow
@pytest.mark.parametrize("as_file", [False, True], ids=["frame-folder", "video-file"])
def test_video_gives_a_mask_per_frame_and_an_overlay_gif(tmp_path, model, refam_here, as_file):
    import cv2

    frames = moving_clip(tmp_path / "clip")
    source = tmp_path / "clip"
    if as_file:  # lossless AVI so that the decoded frames equal the PNGs
        source = tmp_path / "clip.avi"
        writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"FFV1"), 5, (128, 128))
        for frame in frames:
            writer.write(np.asarray(frame)[:, :, ::-1])
        writer.release()
    result = refam_here("predict", "--video", str(source), "--expression", "the red circle",
                        "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    folder = tmp_path / "out" / "clip"
    record = json.loads((folder / "0-the-red-circle.json").read_text())
    assert [f["frame"] for f in record["frames"]] == [0, 1, 2, 3]
    assert "▁pink" in record["dropped_tokens"]
    for t, frame in enumerate(frames):  # each frame is segmented as the image API segments it
        expected = model.segment(frame, ["the red circle"])[0]
        mask = np.asarray(Image.open(folder / "0-the-red-circle" / f"{t:05d}.png")) == 255
        assert np.array_equal(mask, expected.mask)
        assert record["frames"][t]["point"] == pytest.approx(list(expected.point))
    with Image.open(folder / "0-the-red-circle_overlay.gif") as gif:
        assert gif.n_frames == 4


def test_unreadable_video_is_one_line(tmp_path, refam_here):
    broken = tmp_path / "clip.mp4"
    broken.write_bytes(b"not a video")
    result = refam_here("predict", "--video", str(broken), "--expression", "the square",
                        "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and "cannot read video" in result.stderr and str(broken) in result.stderr
    result = refam_here("predict", "--video", str(tmp_path / "nope.mp4"), "--expression", "the square",
                        "--output", str(tmp_path / "o"))
    assert result.returncode == 2 and "--video" in result.stderr and "nope.mp4" in result.stderr


def test_config_with_missing_weights_names_the_key(tmp_path, scene_file, refam_here):
    config = tmp_path / "mine.yaml"
    from refam.embedded import DEFAULT_MODEL_SECTION

    section = DEFAULT_MODEL_SECTION.read_text()
    config.write_text("model:\n" + "".join(f"  {line}\n" for line in
                      section.replace("pretrained: embedded:refam-shapes", f"pretrained: {tmp_path / 'no-weights'}").splitlines()))
    result = refam_here("predict", "--config", str(config), "--image", str(scene_file), "--expression", "the square",
                        "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert "model.extractor.init_args.pretrained" in message and "no-weights" in message
    assert not list((tmp_path / "out").rglob("*.png"))


@pytest.mark.slow
def test_manifest_gives_each_image_its_own_expressions_and_caption(tmp_path, model, refam_here):
    from refam.shapes.dataset import write_shapes_set

    manifest = write_shapes_set(tmp_path / "set", "test", scenes=2, per_scene=2)
    result = refam_here("predict", "--manifest", str(manifest), "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    for line in manifest.read_text().splitlines():
        record = json.loads(line)
        texts = [e["text"] for e in record["expressions"]]
        expected = model.segment(manifest.parent / record["image"], texts, caption=record["caption"])
        for k, (text, prediction) in enumerate(zip(texts, expected)):
            written = json.loads((tmp_path / "out" / record["id"] / f"{k}-{text.replace(' ', '-')}.json").read_text())
            assert written["expression"] == text and written["point"] == pytest.approx(list(prediction.point))

"""`refam predict` and the Python API on the embedded refam-shapes model: outputs checked for content.

The first test runs the real console script; the others run the same `main` in this process
(`refam_here`), which skips a new process's imports."""

import json
import re
import subprocess
import sys
import unicodedata
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
    (["--image", "{scene}", "--expression", "  "], "an expression is empty"),
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
def test_an_image_model_segments_each_frame_of_a_video_and_writes_an_overlay_gif(tmp_path, model, refam_here, as_file):
    import cv2

    frames = moving_clip(tmp_path / "clip")
    source = tmp_path / "clip"
    if as_file:  # lossless AVI so that the decoded frames equal the PNGs
        source = tmp_path / "clip.avi"
        writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"FFV1"), 5, (128, 128))
        for frame in frames:
            writer.write(np.asarray(frame)[:, :, ::-1])
        writer.release()
    # an image model given by its folder segments each frame alone (without --model a video runs the
    # embedded video pipeline: test_video_default.py)
    from refam.embedded import REFAM_SHAPES

    result = refam_here("predict", "--video", str(source), "--expression", "the red circle",
                        "--model", str(REFAM_SHAPES), "--output", str(tmp_path / "out"))
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


# ---- names: no two outputs share a path, nothing a user names writes outside --output ----

def square_at(x: float, colour: str = "blue") -> Image.Image:
    """A scene whose square's place tells the images apart."""
    from refam.shapes.scenes import render

    return render([("square", colour, "big", x, 64.0), ("circle", "red", "small", 64.0, 110.0)])[0]


SCENES = {"left": square_at(30.0), "right": square_at(98.0), "green": square_at(64.0, "green")}


SEGMENTED: dict = {}


@pytest.fixture
def segment_once(monkeypatch):
    """`RefAM.segment` computed once per (pixels, expressions, caption) in this module: the tests of
    names run many inputs of the same few scenes; what is written is still the real model's result."""
    import hashlib

    from refam.api import RefAM, as_image

    real = RefAM.segment

    def segment(self, image, expressions, caption="", settings=None):
        pixels = as_image(image)
        key = (hashlib.sha256(pixels.tobytes()).hexdigest(), pixels.size, tuple(expressions), caption,
               settings or self.settings)
        if key not in SEGMENTED:
            SEGMENTED[key] = real(self, pixels, expressions, caption, settings)
        return SEGMENTED[key]

    monkeypatch.setattr(RefAM, "segment", segment)


@pytest.fixture
def expected_masks(model, segment_once):
    """The mask of "the square" in each scene, as the API segments it."""
    return {name: model.segment(image, ["the square"])[0].mask for name, image in SCENES.items()}


def written_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def check_sample_folder(folder: Path, texts: list[str]) -> None:
    """Every file of the sample sits in its own folder: one record per expression, naming files beside it."""
    records = sorted(folder.glob("*.json"))
    assert [json.loads(r.read_text())["expression"] for r in records] == texts
    named = set()
    for path in records:
        for file in json.loads(path.read_text())["files"].values():
            assert (folder / file).resolve().parent == folder.resolve() and (folder / file).exists()
            named.add((folder / file).resolve())
    assert {p.resolve() for p in folder.iterdir()} == named | {r.resolve() for r in records}


@pytest.mark.parametrize("images, folders", [
    ({"a/photo.png": "left", "b/photo.png": "right"}, ["photo", "photo-2"]),  # same file name, other folders
    ({"a/Photo.png": "left", "b/photo.png": "right"}, ["Photo", "photo-2"]),  # differs only in case
    ({"a/photo.png": "left", "b/photo.bmp": "right"}, ["photo", "photo-2"]),  # same stem, other suffix
    ({"a/photo.png": "left", "b/photo.png": "right", "c/photo.png": "green"}, ["photo", "photo-2", "photo-3"]),
    ({"a/my photo.png": "left", "b/my-photo.png": "right"}, ["my-photo~*", "my-photo"]),  # made safe vs kept
], ids=["two-folders", "case", "suffix", "three", "made-safe"])
def test_images_of_one_name_get_one_folder_each_in_the_order_given(tmp_path, refam_here, expected_masks, images, folders):
    arguments = []
    for relative, scene in images.items():
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        SCENES[scene].save(tmp_path / relative)
        arguments += ["--image", str(tmp_path / relative)]
    out = tmp_path / "out"
    result = refam_here("predict", *arguments, "--expression", "the square", "--output", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    made = sorted(p.name for p in out.iterdir())
    assert len(made) == len(images) and all(p.is_dir() for p in out.iterdir())
    for relative, scene, wanted in zip(images, images.values(), folders):
        (folder,) = [out / name for name in made if Path(name).match(wanted)]
        check_sample_folder(folder, ["the square"])
        mask = np.asarray(Image.open(folder / "0-the-square_mask.png")) == 255
        assert np.array_equal(mask, expected_masks[scene]), f"{relative} -> {folder.name} holds another image's mask"
        assert f"{tmp_path / relative}: 1 expression(s) -> {folder}" in result.stdout


@pytest.mark.parametrize("twice", [["a/photo.png", "a/photo.png"], ["a/photo.png", "a/../a/photo.png"], ["a", "a/photo.png"]],
                         ids=["same-path", "other-spelling", "folder-and-file"])
def test_an_image_given_twice_is_segmented_once(tmp_path, refam_here, segment_once, twice):
    (tmp_path / "a").mkdir()
    SCENES["left"].save(tmp_path / "a/photo.png")
    arguments = [a for relative in twice for a in ("--image", str(tmp_path / relative))]
    result = refam_here("predict", *arguments, "--expression", "the square", "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["photo"]
    assert result.stdout.count("expression(s) ->") == 1


@pytest.mark.parametrize("ids", [
    ["../x", "../../x"],  # climbing out of --output
    ["{tmp}/absolute", "/"],  # absolute paths
    ["a/b", "a-b", "a b", "a\\b"],  # collide once made file-safe
    ["A", "a"],  # differ only in case
    [".", "..", "~"],
    ["caf\u00e9", "cafe\u0301", "\u65e5\u672c"],  # unicode: composed and decomposed é differ as strings
    ["x" * 300, "x" * 299 + "y"],  # cut to the limit
], ids=["climb", "absolute", "separators", "case", "dots", "unicode", "long"])
def test_manifest_ids_stay_inside_output_and_never_share_a_folder(tmp_path, refam_here, scene_file, segment_once, ids):
    ids = [i.format(tmp=tmp_path) for i in ids]
    texts = ["the square", "the circle"]
    work = tmp_path / "work"
    work.mkdir()
    manifest = work / "mine.jsonl"
    # expression ids are user-named too: they climb and collide as well
    manifest.write_text("".join(json.dumps({"id": sample_id, "image": str(scene_file), "expressions": [
        {"text": texts[0], "id": "../../e"}, {"text": texts[1], "id": f"{tmp_path}/e"}]}) + "\n" for sample_id in ids))
    out = work / "out"
    before = written_files(tmp_path)
    result = refam_here("predict", "--manifest", str(manifest), "--output", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    new = written_files(tmp_path) - before
    assert new and all(out.resolve() in p.resolve().parents for p in new), "a file was written outside --output"
    folders = list(out.iterdir())  # a folder per record: two records in one folder would leave fewer
    assert len(folders) == len(ids) and all(f.is_dir() for f in folders)
    # distinct also where the file system folds case (macOS, Windows) or Unicode normalisation (macOS)
    assert len({unicodedata.normalize("NFC", f.name).casefold() for f in folders}) == len(ids)
    for folder in folders:
        check_sample_folder(folder, texts)
    assert result.stdout.count("expression(s) ->") == len(ids)


def test_a_link_in_output_to_a_folder_outside_is_refused(tmp_path, scene_file, refam_here):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "scene").symlink_to(elsewhere)
    result = refam_here("predict", "--image", str(scene_file), "--expression", "the square", "--output", str(out))
    assert result.returncode == 2 and result.stderr.strip().startswith("refam: error:") and "link" in result.stderr
    assert not list(elsewhere.iterdir())


def frame_folder(folder: Path, scenes: list[str]) -> Path:
    folder.mkdir(parents=True)
    for t, scene in enumerate(scenes):
        SCENES[scene].save(folder / f"{t:05d}.png")
    return folder


def test_videos_and_images_of_one_name_get_one_folder_each(tmp_path, refam_here, expected_masks):
    first = frame_folder(tmp_path / "a" / "clip", ["left", "right"])
    second = frame_folder(tmp_path / "b" / "clip", ["right", "green"])
    image = tmp_path / "c" / "clip.png"
    image.parent.mkdir()
    SCENES["green"].save(image)
    out = tmp_path / "out"
    from refam.embedded import REFAM_SHAPES

    # the image model by its folder: each frame segmented alone, so each frame's mask is its scene's
    result = refam_here("predict", "--image", str(image), "--video", str(first), "--video", str(second),
                        "--video", str(first), "--expression", "the square", "--model", str(REFAM_SHAPES),
                        "--output", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["clip", "clip-2", "clip-3"]  # the image first, then the videos
    check_sample_folder(out / "clip", ["the square"])
    for name, scenes in (("clip-2", ["left", "right"]), ("clip-3", ["right", "green"])):
        folder = out / name
        record = json.loads((folder / "0-the-square.json").read_text())
        assert record["files"] == {"masks": "0-the-square/", "overlay": "0-the-square_overlay.gif"}
        assert sorted(p.name for p in folder.iterdir()) == ["0-the-square", "0-the-square.json", "0-the-square_overlay.gif"]
        for t, scene in enumerate(scenes):
            mask = np.asarray(Image.open(folder / "0-the-square" / f"{t:05d}.png")) == 255
            assert np.array_equal(mask, expected_masks[scene]), f"{name} frame {t} holds another video's mask"
        assert len(list((folder / "0-the-square").iterdir())) == len(scenes)


def test_writers_return_what_they_wrote(tmp_path, model, segment_once):
    from refam.io.names import safe_name
    from refam.apps.predict import Written, write_prediction, write_video_predictions

    image = SCENES["left"]
    prediction = model.segment(image, ["the square"])[0]
    written = write_prediction(tmp_path / "image", 0, "the square", image, prediction)
    assert isinstance(written, Written) and set(written.paths) == {"mask", "overlay", "heatmap", "record"}
    assert json.loads(written.paths["record"].read_text()) == written.record
    assert all(path.exists() and path.parent == tmp_path / "image" for path in written.paths.values())
    assert np.array_equal(np.asarray(Image.open(written.paths["mask"])) == 255, prediction.mask)

    from refam import RefAM
    from refam.embedded import REFAM_SHAPES

    clip = frame_folder(tmp_path / "my clip", ["left", "right"])
    image_model = RefAM.load(REFAM_SHAPES)  # a video segmented frame by frame (the embedded default would track)
    video = write_video_predictions(image_model, clip, ["the square", "the circle"], "", tmp_path / "out")
    assert video.folder == tmp_path / "out" / safe_name("my clip")  # the folder's name made safe
    assert video.frames == 2
    assert [w.record["expression"] for w in video.expressions] == ["the square", "the circle"]
    for k, entry in enumerate(video.expressions):
        assert json.loads(entry.paths["record"].read_text()) == entry.record
        assert sorted(p.name for p in entry.paths["masks"].iterdir()) == ["00000.png", "00001.png"]
        assert entry.paths["overlay"].exists() and entry.paths["record"].parent == video.folder
        frame, key = video.key_frames[k]
        assert frame.size == (128, 128) and key.tokens and key.token_maps is not None
        assert entry.record["frames"][0]["point"] == [round(v, 2) for v in key.point]


@pytest.mark.parametrize("args, culprit", [
    (["--image", "missing.png", "--expression", "the dog"], "--image missing.png"),
    (["--image", "{tmp}/broken.png", "--expression", "the dog"], "cannot read image"),
    (["--image", "{scene}", "--expression", "  "], "an expression is empty"),
    (["--image", "{scene}"], "--expression"),
    (["--video", "{tmp}/clips"], "--expression"),
    (["--manifest", "{tmp}/none.jsonl"], "none.jsonl"),
    (["--manifest", "{tmp}/bad.jsonl"], "line 1 is not valid JSON"),
    (["--manifest", "{tmp}/latin1.jsonl"], "not UTF-8"),
    (["--manifest", "{tmp}/lost.jsonl"], "lost.png"),
    (["--manifest", "{tmp}/empty-text.jsonl"], "an expression is empty"),
    (["--manifest", "{tmp}/bad.jsonl", "--image", "{scene}"], "--manifest or --image"),
    (["--video", "{tmp}/broken.mp4", "--expression", "the dog"], "cannot read video"),
    (["--video", "{tmp}/no-frames", "--expression", "the dog"], "holds no images"),
    (["--image", "{scene}", "--expression", "the dog", "--output", "{tmp}/file/out"], "is not writable"),
], ids=["missing-image", "broken-image", "empty-expression", "no-expression", "video-no-expression", "no-manifest",
        "bad-json", "not-utf8", "manifest-image-missing", "manifest-empty-text", "manifest-and-image", "broken-video",
        "empty-frame-folder", "unwritable-output"])
def test_user_errors_are_one_line_before_the_model_loads(tmp_path, scene_file, refam_here, monkeypatch, args, culprit):
    from refam.api import RefAM

    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    (tmp_path / "no-frames").mkdir()
    (tmp_path / "file").write_text("")
    (tmp_path / "bad.jsonl").write_text("{nope\n")
    (tmp_path / "latin1.jsonl").write_bytes('{"image": "caf\u00e9.png"}\n'.encode("latin-1"))
    (tmp_path / "lost.jsonl").write_text(json.dumps({"image": "lost.png", "expressions": ["the dog"]}) + "\n")
    (tmp_path / "empty-text.jsonl").write_text(json.dumps({"image": str(scene_file), "expressions": [" "]}) + "\n")
    loads = []
    monkeypatch.setattr(RefAM, "load", classmethod(lambda cls, *a, **k: loads.append(a) or pytest.fail("model loaded")))
    args = [a.format(scene=scene_file, tmp=tmp_path) for a in args]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "out")]
    result = refam_here("predict", *args)
    assert result.returncode == 2 and not loads
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refam: error:") and culprit in lines[0], result.stderr
    assert not written_files(tmp_path / "out") if (tmp_path / "out").exists() else True


def test_a_disk_that_fills_mid_run_is_one_line_and_keeps_what_was_written(tmp_path, scene_file, refam_here, monkeypatch):
    import errno as errors

    import refam.io.files

    write_atomic, written = refam.io.files.write_atomic, []

    def filling(path, data):
        if len(written) >= 2:
            raise OSError(errors.ENOSPC, "No space left on device", str(path))
        write_atomic(path, data)
        if not Path(path).name.startswith(".refam-write-check"):  # the --output check's probe, removed at once
            written.append(path)

    monkeypatch.setattr(refam.io.files, "write_atomic", filling)
    result = refam_here("predict", "--image", str(scene_file), "--expression", "the square", "--output",
                        str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("refam: error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "--output" in lines[0]
    assert all(path.is_file() for path in written)  # what was written before stays


def test_an_input_folder_name_taken_by_a_file_is_refused_before_the_model_loads(tmp_path, scene_file, refam_here,
                                                                               monkeypatch):
    import refam.api

    monkeypatch.setattr(refam.api.RefAM, "load", lambda *a, **k: pytest.fail("the model loaded"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "scene").write_text("a file where the image's folder goes")
    result = refam_here("predict", "--image", str(scene_file), "--expression", "the square", "--output",
                        str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.strip().startswith("refam: error:")
    assert "is a file" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the machine has a CUDA device")
def test_a_cuda_device_on_a_machine_without_one_is_one_line(tmp_path, scene_file, refam_here):
    result = refam_here("predict", "--image", str(scene_file), "--expression", "the square", "--output",
                        str(tmp_path / "out"), "--device", "cuda")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("refam: error: --device cuda")

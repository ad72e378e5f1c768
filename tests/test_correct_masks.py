"""Correcting a mask with points (issue M, "Correct"), on the embedded refam-shapes model and its flood
fill: through the API (`RefAM.segment(..., points=...)`), `refam predict --point / --negative-point`
and a serve session's run.json. On demo-00000 the model answers "the square" with the red circle: one
negative click on the circle and one positive click on the square move the mask to the square."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refam.errors import ConfigError
from refam.segmenters import HeatmapThresholdSegmenter
from refam.types import Point

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "shapes-demo"
SCENE = DEMO / "images" / "demo-00000.png"  # 128 x 128: a red circle, a purple square, ...
ON_CIRCLE, ON_SQUARE = (100.0, 28.0), (36.5, 27.5)  # (x, y): the circle's pixel is where the model points
MOVE = [(*ON_CIRCLE, 0), (*ON_SQUARE, 1)]  # "not this", "this"


@pytest.fixture(scope="module")
def model():
    from refam import RefAM

    return RefAM.load()


@pytest.fixture(scope="module")
def truth() -> dict[str, np.ndarray]:
    return {name: np.asarray(Image.open(DEMO / "masks" / f"demo-00000-{k}.png")) > 0
            for name, k in (("circle", 0), ("square", 4))}


def read_mask(path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture) == 255


class Spy:
    """Records the calls of a segmenter's `segment` and `segment_points` and passes them on."""

    def __init__(self, segmenter, monkeypatch) -> None:
        self.segment_calls, self.points_calls = [], []
        for name, calls in (("segment", self.segment_calls), ("segment_points", self.points_calls)):
            original = getattr(segmenter, name)

            def spied(*args, _original=original, _calls=calls):
                _calls.append(args)
                return _original(*args)

            monkeypatch.setattr(segmenter, name, spied)


def test_one_negative_and_one_positive_click_move_the_mask_to_another_object(model, truth):
    wrong = model.segment(SCENE, "the square")[0]
    assert np.array_equal(wrong.mask, truth["circle"]) and wrong.point == ON_CIRCLE  # the model's mistake
    moved = model.segment(SCENE, "the square", points=MOVE)[0]
    assert np.array_equal(moved.mask, truth["square"])
    # the negative point on the model's mask dropped the model's point; the point is still the model's argmax
    assert moved.points == [Point(*ON_CIRCLE, 0), Point(*ON_SQUARE, 1)] and moved.point == wrong.point


def test_a_positive_click_adds_to_the_models_point(model, truth):
    added = model.segment(SCENE, "the square", points=[Point(*ON_SQUARE, 1)])[0]
    assert np.array_equal(added.mask, truth["circle"] | truth["square"])
    assert added.points == [Point(*ON_CIRCLE, 1, "model"), Point(*ON_SQUARE, 1, "user")]


def test_without_points_the_segmenter_is_called_as_before_and_every_output_is_the_same(model, monkeypatch):
    texts = ["the square", "the red circle"]
    spy = Spy(model.pipeline.segmenter, monkeypatch)
    runs = [model.segment(SCENE, texts), model.segment(SCENE, texts, points=None),
            model.segment(SCENE, texts, points=[[], []])]
    assert not spy.points_calls and len(spy.segment_calls) == 3
    image, points, heatmaps = spy.segment_calls[0]
    for again in spy.segment_calls[1:]:  # the point prompt, with the very same inputs
        assert np.array_equal(again[0], image) and np.array_equal(again[1], points) and torch.equal(again[2], heatmaps)
    first = runs[0]
    for run in runs[1:]:
        for a, b in zip(first, run):
            assert np.array_equal(a.mask, b.mask) and a.point == b.point and a.points == b.points
            assert torch.equal(a.heatmap, b.heatmap) and torch.equal(a.token_maps, b.token_maps)
    assert all(p.points == [Point(*p.point, 1, "model")] for p in first)
    # points for one expression only: the other keeps its uncorrected mask, and only one prompt is corrected
    mixed = model.segment(SCENE, texts, points=[[], MOVE])
    assert len(spy.points_calls[-1][1]) == 1
    assert np.array_equal(mixed[0].mask, first[0].mask) and mixed[0].points == first[0].points


def test_a_segmenter_that_takes_no_points_refuses_them_before_the_dit_runs(model, monkeypatch):
    other = copy.copy(model)
    other.pipeline = copy.copy(model.pipeline)
    other.pipeline.segmenter = HeatmapThresholdSegmenter()
    monkeypatch.setattr(other.pipeline.extractor, "extract", lambda *a, **k: pytest.fail("the DiT ran"))
    with pytest.raises(ConfigError, match="^HeatmapThresholdSegmenter segments from the model's point alone"):
        other.segment(SCENE, "the square", points=MOVE)


@pytest.mark.parametrize("points, texts, message", [
    ([(128.5, 3, 1)], "the square", r"^points\[0\]: \(x=128.5, y=3\) lies outside the image \(128x128\)"),
    (MOVE, ["the square", "the circle"], r"^points: a flat list of points is for one expression"),
    ([MOVE], ["the square", "the circle"], r"^points: 1 lists of points for 2 expression\(s\)"),
])
def test_bad_points_are_one_line_naming_the_argument(model, points, texts, message, monkeypatch):
    monkeypatch.setattr(model.pipeline.extractor, "extract", lambda *a, **k: pytest.fail("the DiT ran"))
    with pytest.raises(ConfigError, match=message):
        model.segment(SCENE, texts, points=points)


# -- refam predict --point / --negative-point

def predict(refam_here, out, *options):
    return refam_here("predict", "--image", str(SCENE), "--expression", "the square", "--output", str(out), *options)


def test_predict_corrects_the_mask_and_records_the_points_that_reproduce_it(refam_here, tmp_path, truth):
    done = predict(refam_here, tmp_path / "a", "--negative-point", "100,28", "--point", "36.5,27.5")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "a" / "demo-00000" / "0-the-square.json").read_text())
    assert record["points"] == [{"x": 36.5, "y": 27.5, "label": 1, "source": "user"},
                                {"x": 100.0, "y": 28.0, "label": 0, "source": "user"}]
    mask_file = tmp_path / "a" / "demo-00000" / record["files"]["mask"]
    assert np.array_equal(read_mask(mask_file), truth["square"])
    # a rerun from the record's user points gives the same mask, byte for byte
    options = [option for point in map(Point.from_record, record["points"]) if point.source == "user"
               for option in ("--point" if point.label else "--negative-point", f"{point.x!r},{point.y!r}")]
    assert predict(refam_here, tmp_path / "b", *options).returncode == 0
    assert (tmp_path / "b" / "demo-00000" / record["files"]["mask"]).read_bytes() == mask_file.read_bytes()
    # without points the record lists the model's point alone
    assert predict(refam_here, tmp_path / "c").returncode == 0
    plain = json.loads((tmp_path / "c" / "demo-00000" / "0-the-square.json").read_text())
    assert plain["points"] == [{"x": 100.0, "y": 28.0, "label": 1, "source": "model"}]


@pytest.mark.parametrize("options, message", [
    (["--point", "3"], "argument --point: must be X,Y in the image's pixels (e.g. 40,25), got '3'"),
    (["--point", "a,b"], "argument --point: must be X,Y in the image's pixels (e.g. 40,25), got 'a,b'"),
    (["--negative-point", "inf,2"], "argument --negative-point: must be finite pixels X,Y, got 'inf,2'"),
    (["--point", "500,20"], "--point 500,20: (x=500, y=20) lies outside the image (128x128)"),
    (["--negative-point", "5,-1"], "--negative-point 5,-1: (x=5, y=-1) lies outside the image (128x128)"),
    (["--point", "5,5", "--expression", "the circle"], "--point and --negative-point correct one expression's mask"),
    (["--point", "5,5", "--image", str(DEMO / "images" / "demo-00001.png")], "correct one expression's mask on one image"),
])
def test_predict_rejects_bad_points_in_one_line_naming_the_option(refam_here, tmp_path, options, message):
    done = predict(refam_here, tmp_path, *options)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("refam: error:")]
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "demo-00000").exists()


# -- a serve session's run.json

def test_a_serve_session_passes_the_points_and_records_them_per_expression(model, truth, tmp_path):
    from refam.apps.serve.session import Session
    from refam.sections import model_section

    session = Session(model, model_section(None), workdir=tmp_path)
    run = session.run(str(SCENE), "the red circle\nthe square", points=[[], MOVE])
    record = json.loads((run.folder / "run.json").read_text())
    entries = record["run"]["expressions"]
    assert [e["expression"] for e in entries] == ["the red circle", "the square"]
    assert entries[0]["points"] == [{"x": 100.0, "y": 28.0, "label": 1, "source": "model"}]
    assert entries[1]["points"] == [{"x": 100.0, "y": 28.0, "label": 0, "source": "user"},
                                    {"x": 36.5, "y": 27.5, "label": 1, "source": "user"}]
    masks = [path for path in run.downloads if path.endswith("_mask.png")]
    assert np.array_equal(read_mask(masks[1]), truth["square"]) and np.array_equal(read_mask(masks[0]), truth["circle"])

"""Correcting a mask in `refam serve` (issue M, Correct), through the page's handlers: a click on an
expression's mask adds a point ("this", or "not this" with shift / the toggle), the segmenter is
re-prompted with all of them as `RefAM.segment(points=...)` is, undo removes the last one, the points
are drawn on the card and recorded in run.json, and a rerun with other settings keeps them."""

import html
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from refam.apps.serve import OUTPUTS, View  # noqa: E402
from refam.apps.serve.page import NOTHING_TO_CORRECT, page_rerun, page_run, page_select, page_undo  # noqa: E402
from tests.fixtures.serve_session import session, values  # noqa: E402,F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]
SCENE = str(ROOT / "assets/shapes-demo/images/demo-00005.png")
TEXT = "the black square"


def shown(outputs: tuple) -> dict:
    return dict(zip(OUTPUTS, outputs))


def mask_of(result: dict) -> np.ndarray:
    [path] = [p for p in result["downloads"] if p.endswith("_mask.png")]
    with Image.open(path) as picture:
        return np.asarray(picture) == 255


def record_points(result: dict) -> list[dict]:
    [entry] = json.loads(Path(result["downloads"][-1]).read_text())["run"]["expressions"]
    return entry["points"]


def test_a_click_corrects_the_mask_as_the_api_does_and_undo_takes_it_back(session):
    square, circle = session.model.segment(SCENE, [TEXT, "the purple circle"])
    controls = values(session.defaults)
    first = shown(page_run(session, View(), SCENE, TEXT, "", *controls))
    assert np.array_equal(mask_of(first), square.mask) and first["view"].shown.points == ()

    def click(result, x, y, negative):
        return shown(page_select(session, result["view"], {"expression": 0, "x": x, "y": y, "negative": negative},
                                 SCENE, TEXT, "", *controls))

    not_square = click(first, *square.point, True)  # "not this" on the model's star
    moved = click(not_square, *circle.point, False)  # "this" on the purple circle
    assert moved["status"] == ""
    points = [(round(square.point[0], 1), round(square.point[1], 1), 0), (round(circle.point[0], 1), round(circle.point[1], 1), 1)]
    [expected] = session.model.segment(SCENE, [TEXT], points=[points])
    assert np.array_equal(mask_of(moved), expected.mask) and not np.array_equal(expected.mask, square.mask)
    assert (expected.mask & circle.mask).sum() > 0.9 * circle.mask.sum()  # the mask moved to the circle
    assert [(p["x"], p["y"], p["label"]) for p in record_points(moved) if p["source"] == "user"] == points
    card = moved["results"]
    for kind in ("negative", "positive"):  # drawn on the mask and on the map
        assert card.count(f'class="refam-point refam-{kind}"') == 2
    assert "your points: 1 this, 1 not this" in card and "2 correction point(s)" in card
    # a setting changed: the rerun keeps the points
    off = shown(page_rerun(session, moved["view"], SCENE, TEXT, "", *values(replace(session.defaults, magnets=False))))
    assert off["view"].shown.points == moved["view"].shown.points
    # undo, twice: the negative point alone (no positive point left: an empty mask), then the model's mask
    once = shown(page_undo(session, moved["view"], SCENE, TEXT, "", *controls))
    assert once["view"].shown.points == moved["view"].shown.points[:1] and not mask_of(once).any()
    twice = shown(page_undo(session, once["view"], SCENE, TEXT, "", *controls))
    assert twice["view"].shown.points == () and np.array_equal(mask_of(twice), square.mask)
    assert [p["source"] for p in record_points(twice)] == ["model"] and "refam-point" not in twice["results"]


def test_a_click_with_nothing_shown_or_on_another_input_says_what_to_do(session):
    click = {"expression": 0, "x": 10, "y": 10, "negative": False}
    said = shown(page_select(session, View(), click, SCENE, TEXT, "", *values(session.defaults)))["status"]
    assert NOTHING_TO_CORRECT in html.unescape(said)
    first = shown(page_run(session, View(), SCENE, TEXT, "", *values(session.defaults)))
    other = shown(page_select(session, first["view"], click, SCENE, "the purple circle", "", *values(session.defaults)))
    assert NOTHING_TO_CORRECT in html.unescape(other["status"]) and other["view"] == first["view"]

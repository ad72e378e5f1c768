"""How a user's points join the model's (refam.prompts.corrections): the model's point first, the user's
after it, the model's dropped by a negative point on its mask or its star; the API's `points` argument
read and checked with the argument named."""

import numpy as np
import pytest

from refam.errors import ConfigError
from refam.prompts.corrections import NEAR, by_index, joined, user_points
from refam.types import Point

H, W = 10, 30  # not square: a swapped (x, y) lands elsewhere or outside


@pytest.fixture
def model_mask() -> np.ndarray:
    """What the model's point (25.5, 1.5) selects alone: rows 0-5, columns 10-29."""
    mask = np.zeros((H, W), dtype=bool)
    mask[0:6, 10:30] = True
    return mask


MODEL = (25.5, 1.5)


def test_the_models_point_comes_first_and_the_users_points_follow(model_mask):
    user = [Point(3.0, 8.0, 1), Point(12.0, 8.5, 0)]  # a negative point off the model's mask and star
    assert joined(MODEL, user, model_mask) == [Point(25.5, 1.5, 1, "model"), *user]
    assert joined(MODEL, [], model_mask) == [Point(25.5, 1.5, 1, "model")]


def test_a_negative_point_on_the_models_mask_drops_the_models_point(model_mask):
    user = [Point(11.0, 5.5, 0), Point(3.0, 8.0, 1)]  # "not this" on the mask (row 5, column 11), "this" elsewhere
    assert np.hypot(11.0 - MODEL[0], 5.5 - MODEL[1]) > NEAR  # far from the star: the mask decides
    assert joined(MODEL, user, model_mask) == user
    # (y, x) for (x, y) would read row 11 (clamped to 9), column 5: off the mask
    assert not model_mask[9, 5]


def test_a_negative_point_near_the_models_point_drops_it_even_off_its_mask():
    empty = np.zeros((H, W), dtype=bool)  # e.g. a segmenter that found nothing there
    near, far = Point(MODEL[0] - NEAR + 0.5, MODEL[1] + 0.5, 0), Point(MODEL[0] - NEAR - 2, MODEL[1], 0)
    assert joined(MODEL, [near], empty) == [near]
    assert joined(MODEL, [far], empty) == [Point(*MODEL, 1, "model"), far]
    assert joined(MODEL, [Point(*MODEL, 1)], empty)[0].source == "model"  # a positive point never drops it


def test_points_are_read_flat_for_one_expression_or_one_list_per_expression():
    flat = user_points([(1, 2, 1), Point(3.5, 4.5, 0, "model")], 1, W, H)
    assert flat == [[Point(1.0, 2.0, 1), Point(3.5, 4.5, 0)]]  # every point given is the user's
    assert user_points([[(1, 2, 0)], []], 2, W, H) == [[Point(1.0, 2.0, 0)], []]
    assert user_points(None, 2, W, H) == user_points([], 2, W, H) == [[], []]
    assert user_points([(W, H, 1)], 1, W, H) == [[Point(W, H, 1)]]  # the far edges are in the image
    assert by_index([[], [(1, 2, 1)]], 2, W, H) == {"1": [Point(1.0, 2.0, 1)]} and by_index(None, 2, W, H) is None


@pytest.mark.parametrize("points, count, message", [
    ([(1, 2)], 1, r"^points\[0\]: a point is \(x, y, label\)"),
    ([(1, 2, 3)], 1, r"^points\[0\]: the label must be 1 \(add\) or 0 \(remove\), got 3"),
    ([(1, 2, True)], 1, r"^points\[0\]: the label"),
    ([(1, float("nan"), 1)], 1, r"^points\[0\]: x and y must be finite"),
    ([("1", 2, 1)], 1, r"^points\[0\]: x and y must be finite"),
    ([(31, 2, 1)], 1, r"^points\[0\]: \(x=31, y=2\) lies outside the image \(30x10\)"),
    ([[], [(2, -1, 0)]], 2, r"^points\[1\]\[0\]: \(x=2, y=-1\) lies outside the image \(30x10\)"),
    ([(1, 2, 1)], 2, r"^points: a flat list of points is for one expression; with 2 expressions"),
    ([[(1, 2, 1)]], 2, r"^points: 1 lists of points for 2 expression\(s\)"),
    ([[(1, 2, 1)], "x"], 2, r"^points\[1\]: give a list of"),
    ("1,2", 1, r"^points: give a list of"),
])
def test_bad_points_are_one_line_naming_the_argument_and_index(points, count, message):
    with pytest.raises(ConfigError, match=message) as caught:
        user_points(points, count, W, H)
    assert "\n" not in str(caught.value)

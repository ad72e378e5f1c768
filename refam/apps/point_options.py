"""`refam predict --point X,Y` / `--negative-point X,Y`: a user's corrections of one expression's mask
on one image, read and checked before the model loads (`refam.prompts.corrections` says how they
join the model's point). Points are (x, y) in the original image's pixels; each option repeats."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

from refam.errors import ConfigError
from refam.prompts.corrections import check_inside
from refam.types import Point

if TYPE_CHECKING:
    from PIL import Image

OPTIONS = (("point", 1), ("negative_point", 0))  # argparse's name of each option and its label


def pixel_point(text: str) -> tuple[float, float]:
    """An argparse `type`: "X,Y" as two finite numbers (argparse names the option in the error)."""
    parts = text.split(",")
    try:
        x, y = (float(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be X,Y in the image's pixels (e.g. 40,25), got {text!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise argparse.ArgumentTypeError(f"must be finite pixels X,Y, got {text!r}")
    return x, y


def add_point_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--point", type=pixel_point, action="append", default=[], metavar="X,Y",
                        help="correct the mask: a pixel (x, y) of the image the mask must cover; it re-prompts the "
                             "segmenter with the model's point and yours (repeatable; one image, one expression)")
    parser.add_argument("--negative-point", type=pixel_point, action="append", default=[], metavar="X,Y",
                        help="correct the mask: a pixel it must leave out; on the model's mask (or its star) it "
                             "drops the model's point, so --negative-point on the wrong object and --point on the "
                             "right one move the mask (repeatable)")


def given(args: argparse.Namespace) -> bool:
    return any(getattr(args, name) for name, _ in OPTIONS)


def option_points(args: argparse.Namespace, jobs: list, image: Image.Image | None) -> list[Point] | None:
    """The points the options give, positive ones first, for the run's one job: one expression on
    one `image` (refused in one line for anything else), each checked inside the image with its
    option named; None without any."""
    if not given(args):
        return None
    if len(jobs) != 1 or jobs[0].is_video or len(jobs[0].texts) != 1 or image is None:
        raise ConfigError("--point and --negative-point correct one expression's mask on one image: give one "
                          "--image file and one --expression (run once per expression to correct each; videos: "
                          "RefAM.segment_video(..., points=...))")
    width, height = image.size
    return [check_inside(Point(x, y, label), width, height, f"--{name.replace('_', '-')} {x:g},{y:g}")
            for name, label in OPTIONS for x, y in getattr(args, name)]

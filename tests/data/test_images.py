"""How an image file becomes the RGB picture the model sees: transparency composited onto the stated
background (and said), tiny images warned about, images over the pixel limit refused in one line."""

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import refam.io.images as images
from refam.api import as_image
from refam.io.images import BACKGROUND, MAX_PIXELS_ENV, read_rgb
from refam.errors import DataError



@pytest.fixture(autouse=True)
def fresh_notice(monkeypatch):
    monkeypatch.setattr(images, "_said_transparent", False)  # the once-per-process notice, per test


def test_transparent_pixels_are_composited_onto_the_stated_background(tmp_path, caplog):
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[..., 0] = 200  # red everywhere ...
    pixels[0, 0, 3] = 255  # ... opaque at (0, 0), fully transparent at (0, 1), half at (0, 2)
    pixels[0, 2, 3] = 128
    path = tmp_path / "rgba.png"
    Image.fromarray(pixels, mode="RGBA").save(path)
    with caplog.at_level(logging.WARNING, logger="refam.io.images"):
        rgb = np.asarray(read_rgb(path))
        read_rgb(path)
    assert BACKGROUND == (255, 255, 255)  # documented: white
    assert tuple(rgb[0, 0]) == (200, 0, 0)
    assert tuple(rgb[0, 1]) == BACKGROUND  # not the black that dropping alpha gives
    assert tuple(rgb[0, 2]) == pytest.approx((227, 127, 127), abs=1)
    assert caplog.text.count("composited onto white") == 1 and str(path) in caplog.text  # said once


@pytest.mark.parametrize("mode", ["LA", "P"])
def test_other_transparent_modes_composite_too(tmp_path, mode):
    if mode == "LA":
        picture = Image.fromarray(np.array([[[10, 0], [10, 255]]], dtype=np.uint8), mode="LA")
    else:
        picture = Image.new("P", (2, 1))
        picture.putpalette([0, 0, 0, 10, 10, 10] + [0] * 762)
        picture.putdata([0, 1])
        picture.info["transparency"] = 0
    path = tmp_path / f"{mode}.png"
    picture.save(path, transparency=0) if mode == "P" else picture.save(path)
    rgb = np.asarray(read_rgb(path))
    assert tuple(rgb[0, 0]) == BACKGROUND and tuple(rgb[0, 1]) == (10, 10, 10)


def test_api_images_composite_the_same_way():
    picture = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    assert as_image(picture).getpixel((3, 3)) == BACKGROUND


def test_a_tiny_image_is_read_with_a_warning(tmp_path, caplog):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (9, 9, 9)).save(path)
    with caplog.at_level(logging.WARNING, logger="refam.io.images"):
        image = read_rgb(path)
    assert image.size == (1, 1)
    assert "1x1" in caplog.text and str(path) in caplog.text
    caplog.clear()
    Image.new("RGB", (64, 48)).save(path)
    with caplog.at_level(logging.WARNING, logger="refam.io.images"):
        read_rgb(path)
    assert caplog.text == ""


def test_an_image_over_the_pixel_limit_is_refused_naming_file_and_setting(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(path)
    assert read_rgb(path).size == (40, 30)  # the default limit (64 MP) is far away
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    reason = read_rgb(path)
    assert isinstance(reason, str) and str(path) in reason and MAX_PIXELS_ENV in reason and "40x30" in reason
    with pytest.raises(DataError, match=MAX_PIXELS_ENV):
        as_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1200")
    assert read_rgb(path).size == (40, 30)


def test_predict_refuses_an_image_over_the_limit_in_one_line(tmp_path, refam_here, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    result = refam_here("predict", "--image", str(path), "--expression", "the square",
                        "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("refam")]  # not the loaders' progress bars
    assert len(lines) == 1 and lines[0].startswith("refam: error:") and MAX_PIXELS_ENV in lines[0], result.stderr
    assert "Traceback" not in result.stderr and str(path) in lines[0] and "1,200 pixels" in lines[0]

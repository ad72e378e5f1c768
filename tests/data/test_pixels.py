"""Pixels as a viewer shows them (docs/settings.md, "Pixels"): every Pillow mode, EXIF orientation,
ground-truth masks by a stated rule, animated images, and the pixel limit's setting. Every image is
built in memory, saved in a format that keeps its mode and read back through the public readers."""

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import refam.io.images as images
import refam.io.pixels as pixels
from refam.api import as_image
from refam.data.datamodule import RefAMDataModule
from refam.io.frames import iter_frames
from refam.io.images import MAX_PIXELS_ENV, max_pixels, read_rgb, to_rgb
from refam.data.manifest import ManifestDataset
from refam.data.video_common import PaletteTruth, read_label_png
from refam.errors import ConfigError, DataError
from refam.types import BadSample, Sample, VideoExpression, VideoSample

WHITE, BLACK = (255, 255, 255), (0, 0, 0)


@pytest.fixture(autouse=True)
def fresh_notices(monkeypatch):
    monkeypatch.setattr(images, "_said_transparent", False)
    monkeypatch.setattr(pixels, "_warned_lossy", set())


def grey(*values):
    return [(v, v, v) for v in values]


def palette_image():
    image = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), mode="P")
    image.putpalette([0, 0, 0, 250, 10, 20, 5, 6, 7] + [0] * 759)
    return image


def pa_image():
    image = Image.new("PA", (3, 1))
    image.putpalette([0, 0, 0, 250, 10, 20] + [0] * 762)
    image.putdata([(1, 255), (1, 0), (0, 255)])
    return image


def gray16(mode):
    values = np.array([[0, 0x1234, 0xFFFF]], dtype=np.uint16)
    image = Image.fromarray(values)  # I;16
    if mode == "I;16":
        return image
    target = {"I;16B": ">u2", "I;16L": "<u2", "I;16N": "=u2"}[mode]
    return Image.frombuffer(mode, (3, 1), values.astype(target).tobytes(), "raw", mode, 0, 1)


def pgm16():
    """A 16-bit PGM, which Pillow opens as mode I."""
    data = io.BytesIO(b"P5\n3 1\n65535\n" + np.array([0, 0x1234, 0xFFFF], dtype=">u2").tobytes())
    return Image.open(data)


# (name, builder, format to save in (None: given in memory, as to the API), expected RGB pixels of row 0)
MODES = [
    ("1", lambda: Image.fromarray(np.array([[False, True, False]])), "PNG", [BLACK, WHITE, BLACK]),
    ("L", lambda: Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8)), "PNG", grey(0, 77, 255)),
    ("P", palette_image, "PNG", [BLACK, (250, 10, 20), (5, 6, 7)]),
    ("RGB", lambda: Image.fromarray(np.array([[[1, 2, 3], [200, 100, 50], [0, 0, 0]]], dtype=np.uint8)), "PNG",
     [(1, 2, 3), (200, 100, 50), BLACK]),
    ("RGBA", lambda: Image.fromarray(np.array([[[1, 2, 3, 255], [200, 0, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8)),
     "PNG", [(1, 2, 3), WHITE, BLACK]),
    ("LA", lambda: Image.fromarray(np.array([[[40, 255], [40, 0], [90, 255]]], dtype=np.uint8), mode="LA"), "PNG",
     [*grey(40), WHITE, *grey(90)]),
    ("PA", pa_image, "TIFF", [(250, 10, 20), WHITE, BLACK]),
    ("CMYK", lambda: Image.frombytes("CMYK", (3, 1), bytes([0, 0, 0, 0, 255, 0, 0, 0, 0, 0, 0, 255])), "TIFF",
     [WHITE, (0, 255, 255), BLACK]),  # Pillow's CMYK -> RGB
    ("YCbCr", lambda: Image.frombytes("YCbCr", (3, 1), bytes([255, 128, 128, 0, 128, 128, 128, 128, 128])), None,
     [WHITE, BLACK, (128, 128, 128)]),
    ("LAB", lambda: Image.frombytes("LAB", (3, 1), bytes([255, 0, 0, 0, 0, 0, 136, 80, 67])), "TIFF",
     [(254, 255, 254), (1, 0, 1), (250, 3, 11)]),  # Pillow's LAB -> sRGB (a*, b* signed bytes): white, black, red
    ("HSV", lambda: Image.frombytes("HSV", (3, 1), bytes([0, 255, 255, 85, 255, 255, 0, 0, 0])), None,
     [(255, 0, 0), (0, 255, 0), BLACK]),
    ("RGBX", lambda: Image.frombytes("RGBX", (3, 1), bytes([1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0])), None,
     [(1, 2, 3), (4, 5, 6), (7, 8, 9)]),
    ("RGBa", lambda: Image.frombytes("RGBa", (3, 1), bytes([10, 20, 30, 255, 0, 0, 0, 0, 50, 50, 50, 255])), None,
     [(10, 20, 30), WHITE, (50, 50, 50)]),
    ("La", lambda: Image.frombytes("La", (3, 1), bytes([10, 255, 0, 0, 50, 255])), None, [*grey(10), WHITE, *grey(50)]),
    # 16-bit: the full range onto 8 bits (v >> 8), not clipped at 255 (which shows all but 0 white)
    ("I;16 PNG", lambda: gray16("I;16"), "PNG", grey(0, 0x12, 255)),
    ("I;16 TIFF", lambda: gray16("I;16"), "TIFF", grey(0, 0x12, 255)),
    ("I;16B", lambda: gray16("I;16B"), "TIFF", grey(0, 0x12, 255)),
    ("I;16L", lambda: gray16("I;16L"), "TIFF", grey(0, 0x12, 255)),
    ("I;16N", lambda: gray16("I;16N"), None, grey(0, 0x12, 255)),
    ("I 16-bit PGM", pgm16, "PPM", grey(0, 0x12, 255)),
    # 32-bit: 0..2**31-1 onto 0..255 (v >> 23)
    ("I 32-bit", lambda: Image.fromarray(np.array([[0, 100 << 23, 2**31 - 1]], dtype=np.int32)), "TIFF",
     grey(0, 100, 255)),
    # float: [0, 1] onto [0, 255], not clipped to 0 / 1 (which shows all black)
    ("F", lambda: Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)), "TIFF", grey(0, 128, 255)),
]


@pytest.mark.parametrize("name, build, fmt, expected", MODES, ids=[m[0] for m in MODES])
def test_every_mode_reads_as_a_viewer_shows_it(tmp_path, name, build, fmt, expected):
    image = build()
    if fmt is None:  # a mode no file format keeps: as the Python API takes it
        assert image.mode == name.split()[0]
        rgb = as_image(image)
    else:
        path = tmp_path / f"picture.{fmt.lower()}"
        image.save(path, format=fmt)
        with Image.open(path) as saved:
            assert saved.mode == name.split()[0] or name.startswith("I;16"), saved.mode  # the file kept the mode
        rgb = read_rgb(path)
        assert not isinstance(rgb, str), rgb
    assert rgb.mode == "RGB" and rgb.size == (3, 1)
    assert [tuple(p) for p in np.asarray(rgb)[0]] == expected


@pytest.mark.parametrize("mode, values, expected", [
    ("F", [-1.0, 0.0, 3.0], [0, 64, 255]),  # outside [0, 1]: its own range, min -> 0, max -> 255
    ("F", [0.0, 255.0, 51.0], [0, 255, 51]),  # a 0..255 float image is not white
    ("F", [float("nan"), 0.25, 0.75], [0, 0, 255]),  # not finite: range of the finite values; NaN -> 0
    ("I", [-100, 0, 300], [0, 64, 255]),  # signed with negatives
], ids=["float-outside", "float-0-255", "float-nan", "int-negative"])
def test_values_outside_the_type_range_are_scaled_by_their_own_range_with_a_warning(tmp_path, caplog, mode, values,
                                                                                    expected):
    dtype = np.float32 if mode == "F" else np.int32
    path = tmp_path / "odd.tiff"
    Image.fromarray(np.array([values], dtype=dtype)).save(path)
    with caplog.at_level(logging.WARNING, logger="refam.io.pixels"):
        rgb = np.asarray(read_rgb(path))
    assert rgb[0, :, 0].tolist() == expected
    assert "own range" in caplog.text and str(path) in caplog.text


def test_plain_8bit_images_stay_bit_for_bit(tmp_path):
    rng = np.random.default_rng(0)
    pixels_rgb = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    path = tmp_path / "plain.png"
    Image.fromarray(pixels_rgb).save(path)
    assert np.array_equal(np.asarray(read_rgb(path)), pixels_rgb)
    jpeg = tmp_path / "plain.jpg"
    Image.fromarray(pixels_rgb).save(jpeg, quality=90)
    with Image.open(jpeg) as decoded:
        assert np.array_equal(np.asarray(read_rgb(jpeg)), np.asarray(decoded.convert("RGB")))


# ---------------------------------------------------------------- EXIF orientation


def asymmetric(width=5, height=3):
    """A non-square picture whose every pixel differs, so every flip and turn shows."""
    values = np.arange(width * height * 3, dtype=np.uint8).reshape(height, width, 3) * 5
    return Image.fromarray(values)


def with_orientation(image, path, orientation, **save):
    exif = Image.Exif()
    exif[pixels.ORIENTATION_TAG] = orientation
    image.save(path, exif=exif.tobytes(), **save)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_to_images_frames_and_masks(tmp_path, orientation):
    path = tmp_path / "photo.png"
    with_orientation(asymmetric(), path, orientation)
    with Image.open(path) as stored:
        upright = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))  # Pillow's own reading of the tag
    assert (upright.shape[:2] == (5, 3)) == (orientation >= 5)
    assert np.array_equal(np.asarray(read_rgb(path)), upright)
    assert np.array_equal(np.asarray(as_image(path)), upright)

    folder = tmp_path / "frames"
    folder.mkdir()
    with_orientation(asymmetric(), folder / "00000.png", orientation)
    assert np.array_equal(np.asarray(next(iter_frames(folder))), upright)
    sample = VideoSample("v", [str(folder / "00000.png")], [VideoExpression("x", "0", object_ids=[1])])
    assert np.array_equal(np.asarray(sample.frame(0)), upright)

    # a mask with the same tag is turned the same way, and so matches the upright image's size
    marks = np.zeros((3, 5), dtype=np.uint8)
    marks[0, 0], marks[2, 1] = 255, 255
    with_orientation(Image.fromarray(marks), tmp_path / "mask.png", orientation)
    with Image.open(tmp_path / "mask.png") as stored:
        upright_mask = np.asarray(ImageOps.exif_transpose(stored)) != 0
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": "photo.png", "expressions": [{"text": "x", "mask": "mask.png"}]}))
    item = ManifestDataset(str(manifest))[0]
    assert isinstance(item, Sample), getattr(item, "reason", "")
    assert np.array_equal(item.expressions[0].mask, upright_mask)

    labels = np.zeros((3, 5), dtype=np.uint8)
    labels[0, :2], labels[2, 4] = 1, 2
    label_file = tmp_path / "labels.png"
    with_orientation(Image.fromarray(labels, mode="L"), label_file, orientation)
    with Image.open(label_file) as stored:
        assert np.array_equal(read_label_png(label_file), np.asarray(ImageOps.exif_transpose(stored)))
    assert PaletteTruth([str(label_file)], frames=[str(path)]).mask(sample.expressions[0], 0).shape == upright.shape[:2]


def test_a_jpeg_phone_photo_stands_upright(tmp_path):
    path = tmp_path / "phone.jpg"
    with_orientation(asymmetric(40, 30), path, 6, quality=95)
    assert read_rgb(path).size == (30, 40)


def test_a_mask_that_does_not_match_its_upright_image_is_one_line_naming_both_sizes(tmp_path):
    with_orientation(asymmetric(40, 30), tmp_path / "photo.png", 6)  # shown 30x40
    Image.new("L", (30, 40), 255).save(tmp_path / "upright.png")
    Image.new("L", (40, 30), 255).save(tmp_path / "stored.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps({"id": m, "image": "photo.png", "expressions": [{"text": "x", "mask": f"{m}.png"}]})
                                  for m in ("upright", "stored")))
    good, bad = ManifestDataset(str(manifest))
    assert isinstance(good, Sample) and good.expressions[0].mask.all()
    assert isinstance(bad, BadSample) and "\n" not in bad.reason
    assert str(tmp_path / "stored.png") in bad.reason and "40x30" in bad.reason and "30x40" in bad.reason
    truth = PaletteTruth([str(tmp_path / "stored.png")], frames=[str(tmp_path / "photo.png")])
    with pytest.raises(DataError, match="40x30.*30x40"):
        truth.labels(0)


# ---------------------------------------------------------------- ground-truth masks


def disc(size=64, radius=20):
    yy, xx = np.mgrid[:size, :size]
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius ** 2


def mask_file_cases():
    shape = disc(16, 5)
    inside = np.where(shape, 255, 0).astype(np.uint8)
    cutout = np.zeros((16, 16, 4), dtype=np.uint8)
    cutout[..., :3] = 255  # white where transparent, as editors save cutouts
    cutout[..., 0][shape] = 30
    cutout[..., 3] = inside
    cutout[0, 0, 3] = 127  # under half opaque: background
    opaque = np.stack([inside, inside, inside, np.full_like(inside, 255)], axis=2)
    la_cut = np.stack([np.full_like(inside, 200), inside], axis=2)
    red = np.zeros((16, 16, 3), dtype=np.uint8)
    red[..., 0] = inside
    ids = Image.fromarray(np.where(shape, 3, 0).astype(np.uint8), mode="P")
    ids.putpalette([0, 0, 0] * 3 + [0, 0, 0] + [0] * 756)  # a palette of all-black colours: the index decides
    return [
        ("RGBA cutout", Image.fromarray(cutout, mode="RGBA"), "PNG"),
        ("RGBA opaque", Image.fromarray(opaque, mode="RGBA"), "PNG"),
        ("LA cutout", Image.fromarray(la_cut, mode="LA"), "PNG"),
        ("L 0/255", Image.fromarray(inside), "PNG"),
        ("L 0/1", Image.fromarray((inside > 0).astype(np.uint8)), "PNG"),
        ("1", Image.fromarray(shape), "PNG"),
        ("P index", ids, "PNG"),
        ("RGB red", Image.fromarray(red), "PNG"),
        ("I;16", Image.fromarray((inside > 0).astype(np.uint16) * 7), "PNG"),
    ]


@pytest.mark.parametrize("name, image, fmt", mask_file_cases(), ids=[c[0] for c in mask_file_cases()])
def test_manifest_masks_follow_the_stated_rule(tmp_path, name, image, fmt):
    Image.new("RGB", (16, 16), (9, 9, 9)).save(tmp_path / "photo.png")
    image.save(tmp_path / "mask.png", format=fmt)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": "photo.png", "expressions": [{"text": "x", "mask": "mask.png"}]}))
    item = ManifestDataset(str(manifest))[0]
    assert isinstance(item, Sample), getattr(item, "reason", "")
    assert np.array_equal(item.expressions[0].mask, disc(16, 5))  # not the whole image


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_jpeg_mask_keeps_its_area_and_is_said_once_per_file(tmp_path, caplog, mode):
    shape = disc()
    Image.new("RGB", shape.shape[::-1], (9, 9, 9)).save(tmp_path / "photo.png")
    Image.fromarray(np.where(shape, 255, 0).astype(np.uint8)).convert(mode).save(tmp_path / "mask.jpg", quality=75)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": "photo.png", "expressions": [{"text": "x", "mask": "mask.jpg"}]}))
    dataset = ManifestDataset(str(manifest))
    with caplog.at_level(logging.WARNING, logger="refam.io.pixels"):
        mask = dataset[0].expressions[0].mask
        dataset[0]
    assert abs(int(mask.sum()) - int(shape.sum())) <= 0.03 * shape.sum()
    assert (mask & shape).sum() >= 0.97 * shape.sum()
    assert caplog.text.count("mask.jpg") == 1 and "JPEG" in caplog.text


def test_object_id_annotations_keep_ids_and_refuse_colour_or_jpeg(tmp_path):
    labels = np.array([[0, 1, 2], [255, 2, 0]], dtype=np.uint8)
    palette = Image.fromarray(labels, mode="P")
    palette.putpalette(list(range(256)) * 3)
    palette.save(tmp_path / "ids.png")
    assert np.array_equal(read_label_png(tmp_path / "ids.png"), labels)
    truth = PaletteTruth([str(tmp_path / "ids.png")])
    assert truth.mask(VideoExpression("x", "0", object_ids=[2]), 0).tolist() == [[False, False, True], [False, True, False]]
    Image.fromarray(labels).convert("RGB").save(tmp_path / "colour.png")
    Image.fromarray(labels).save(tmp_path / "lossy.jpg")
    for bad, words in (("colour.png", "mode RGB"), ("lossy.jpg", "JPEG")):
        with pytest.raises(DataError, match=words) as err:
            read_label_png(tmp_path / bad)
        assert str(tmp_path / bad) in str(err.value)


# ---------------------------------------------------------------- animated images


def animation(path, fmt, size=(8, 6)):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", size, c) for c in colours]
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0,
                   **({"lossless": True} if fmt == "WEBP" else {}))
    return colours


ANIMATED = [("GIF", "gif"), ("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tiff")]


@pytest.mark.parametrize("fmt, suffix", ANIMATED, ids=[a[0] for a in ANIMATED])
def test_an_animated_image_is_refused_as_an_image_and_read_as_a_video(tmp_path, fmt, suffix):
    path = tmp_path / f"clip.{suffix}"
    colours = animation(path, fmt)
    reason = read_rgb(path)
    assert isinstance(reason, str) and str(path) in reason and "3 frames" in reason and "--video" in reason
    with pytest.raises(DataError, match="--video"):
        as_image(path)
    with Image.open(path) as opened, pytest.raises(DataError, match="video"):
        to_rgb(opened)
    frames = list(iter_frames(path))
    assert [f.size for f in frames] == [(8, 6)] * 3
    assert [tuple(np.asarray(f)[3, 4]) for f in frames] == colours


def test_gif_frames_are_composed_as_pillow_gives_them(tmp_path):
    """A GIF whose later frames change only part of the picture: each frame is the whole picture."""
    path = tmp_path / "partial.gif"
    first = Image.new("RGB", (8, 6), (255, 0, 0))
    second = first.copy()
    second.paste((0, 0, 255), (0, 0, 4, 6))  # left half blue, right half still red
    first.save(path, save_all=True, append_images=[second], duration=100, optimize=True)
    frames = list(iter_frames(path))
    assert tuple(np.asarray(frames[1])[3, 1]) == (0, 0, 255) and tuple(np.asarray(frames[1])[3, 6]) == (255, 0, 0)


def test_a_camera_mpo_jpeg_is_its_primary_image_not_an_animation(tmp_path):
    path = tmp_path / "camera.jpg"  # phones save previews beside the photo: Pillow opens it as MPO, 2 frames
    Image.new("RGB", (32, 24), (200, 30, 30)).save(path, format="MPO", save_all=True,
                                                  append_images=[Image.new("RGB", (16, 12), (0, 0, 255))])
    with Image.open(path) as opened:
        assert opened.format == "MPO" and opened.n_frames == 2
    rgb = read_rgb(path)
    assert not isinstance(rgb, str), rgb
    assert rgb.size == (32, 24) and np.abs(np.asarray(rgb)[12, 16].astype(int) - (200, 30, 30)).max() <= 3


def test_a_16bit_png_with_a_transparent_value_is_composited_like_others(tmp_path):
    path = tmp_path / "t16.png"
    Image.fromarray(np.array([[0, 0x1234, 0xFFFF]], dtype=np.uint16)).save(path, transparency=0x1234)
    assert [tuple(p) for p in np.asarray(read_rgb(path))[0]] == [BLACK, WHITE, WHITE]
    Image.fromarray(np.array([[0, 0x1234, 0xFFFF]], dtype=np.uint16)).save(path, transparency=0)
    assert [tuple(p) for p in np.asarray(read_rgb(path))[0]] == [WHITE, (0x12,) * 3, WHITE]


def test_a_one_frame_gif_is_an_image(tmp_path):
    path = tmp_path / "still.gif"
    Image.new("RGB", (8, 6), (255, 0, 0)).save(path)
    assert tuple(np.asarray(read_rgb(path))[0, 0]) == (255, 0, 0)


# ---------------------------------------------------------------- REFAM_MAX_PIXELS


BAD_LIMITS = ["abc", "0", "-5", "0.5", "nan", "inf", "1e400", "12 MP"]


@pytest.mark.parametrize("value", BAD_LIMITS)
def test_an_invalid_pixel_limit_is_refused_before_any_sample_is_read(tmp_path, monkeypatch, value):
    path = tmp_path / "photo.png"
    Image.new("RGB", (20, 20)).save(path)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": "photo.png", "expressions": ["x"]}))
    dataset = ManifestDataset(str(manifest))
    monkeypatch.setenv(MAX_PIXELS_ENV, value)
    for reader in (max_pixels, lambda: read_rgb(path), lambda: as_image(path), lambda: dataset[0],
                   lambda: RefAMDataModule(dataset).setup("test")):
        with pytest.raises(ConfigError) as err:  # not a skipped sample: the run would score nothing
            reader()
        line = str(err.value)
        assert MAX_PIXELS_ENV in line and repr(value.strip()) in line and "100000000" in line and "\n" not in line


@pytest.mark.parametrize("value, limit", [("1000", 1000), (" 2500 ", 2500), ("1e8", 100_000_000), ("", 64_000_000)])
def test_a_valid_pixel_limit_is_read(monkeypatch, value, limit):
    monkeypatch.setenv(MAX_PIXELS_ENV, value)
    assert max_pixels() == limit
    RefAMDataModule([]).setup("test")


# ---------------------------------------------------------------- front doors


def one_error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.startswith("refam")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("refam: error:"), result.stderr[-2000:]
    return lines[0]


@pytest.mark.slow  # the model runs on three frames (6 s)
def test_predict_refuses_an_animated_image_and_reads_it_as_a_video(tmp_path, refam_here):
    path = tmp_path / "clip.gif"
    animation(path, "GIF", size=(32, 24))
    line = one_error_line(refam_here("predict", "--image", str(path), "--expression", "the square",
                                     "--output", str(tmp_path / "out")))
    assert str(path) in line and "--video" in line
    result = refam_here("predict", "--video", str(path), "--expression", "the square", "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out" / "clip").glob("*/*.png")) == ["00000.png", "00001.png", "00002.png"]


@pytest.mark.parametrize("command", ["predict", "test"])
def test_an_invalid_pixel_limit_is_one_line_at_each_front_door(tmp_path, refam_here, monkeypatch, command):
    Image.new("RGB", (20, 20)).save(tmp_path / "photo.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": "photo.png", "expressions": [{"text": "x", "mask": "photo.png"}]}))
    monkeypatch.setenv(MAX_PIXELS_ENV, "abc")
    if command == "predict":
        result = refam_here("predict", "--image", str(tmp_path / "photo.png"), "--expression", "the square",
                            "--output", str(tmp_path / "out"))
    else:
        result = refam_here("test", "--config", "configs/demo.yaml", "--data.datasets.init_args.path", str(manifest),
                            "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
                            cwd=Path(__file__).resolve().parents[2])
    line = one_error_line(result)
    assert MAX_PIXELS_ENV in line and "'abc'" in line
    if command == "test":  # refused by the data module's setup: before the model loads, before any sample
        assert "Loading" not in result.stderr and "Testing" not in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("turn", range(1, 9))
def test_a_tiff_is_shown_upright_once(tmp_path, turn):
    """Pillow opens a TIFF upright itself (size and pixels): refam must not turn it a second time."""
    pixels_ = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels_[:5, :7] = (255, 0, 0)  # an object in one corner: every turn moves it elsewhere
    picture = Image.fromarray(pixels_)
    exif = picture.getexif()
    exif[274] = turn
    picture.save(tmp_path / "photo.tif", exif=exif)
    picture.save(tmp_path / "photo.png", exif=exif)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "photo.png")).convert("RGB"))
    assert np.array_equal(np.asarray(images.open_rgb(tmp_path / "photo.tif")), upright)
    mask = pixels.read_mask_file(tmp_path / "photo.tif")
    assert np.array_equal(mask, upright.any(axis=2))
    with Image.open(tmp_path / "photo.tif") as opened:
        assert pixels.viewed_size(opened) == upright.shape[1::-1]


def test_a_lossy_webp_mask_is_read_as_jpeg_masks_are(tmp_path, caplog):
    square = np.zeros((64, 64), dtype=np.uint8)
    square[16:48, 16:48] = 255
    noisy = np.stack([square, square, square], axis=2)
    Image.fromarray(noisy).save(tmp_path / "mask.webp", quality=75)
    with caplog.at_level(logging.WARNING):
        mask = pixels.read_mask_file(tmp_path / "mask.webp")
    assert abs(int(mask.sum()) - 32 * 32) <= 0.03 * 32 * 32  # compression ringing stays out
    assert "mask.webp" in caplog.text and "WEBP" in caplog.text


@pytest.mark.parametrize("mode", ["P", "L"])
def test_a_cutout_by_a_transparent_colour_is_its_opaque_pixels(tmp_path, mode):
    """A mask whose background is a transparent palette entry or grey level (PNG tRNS), not 0."""
    values = np.full((16, 16), 5, dtype=np.uint8)  # background: entry 5, transparent
    values[4:8, 4:8] = 2  # the object
    picture = Image.fromarray(values, mode="L")
    if mode == "P":
        picture = picture.convert("P")
        picture.putpalette([v for i in range(256) for v in (i, i, i)])
    picture.save(tmp_path / "cutout.png", transparency=5)
    mask = pixels.read_mask_file(tmp_path / "cutout.png")
    assert int(mask.sum()) == 16 and mask[4:8, 4:8].all()

"""`refam serve`'s result cards, compare view and error lines, without a model: one colour scale per
expression with its range shown, the mask as an outline in a colour that contrasts with the object
and leaves it its colour, tokens shown whole and escaped, the compare view only for the same input,
and the library's errors in the page's words."""

import base64
import io
import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from refam.apps.serve.cards import card_html, notes_html
from refam.apps.serve.messages import error_html, page_error
from refam.apps.serve.pictures import FILL_ALPHA, OUTLINE_COLOURS, display_size
from refam.apps.serve.settings import Settings
from refam.apps.serve.views import Shown, View, results_html
from refam.types import Prediction


def scene(colour, size=(128, 128), background=(225, 225, 220)) -> tuple[Image.Image, np.ndarray]:
    """A light grey picture with one disc of `colour` and its mask."""
    ys, xs = np.mgrid[:size[1], :size[0]]
    mask = (xs - 64) ** 2 + (ys - 60) ** 2 < 30 ** 2
    pixels = np.empty((size[1], size[0], 3), dtype=np.uint8)
    pixels[:] = background
    pixels[mask] = colour
    return Image.fromarray(pixels), mask


def prediction(mask, token_maps, tokens=None) -> Prediction:
    tokens = tokens or [f"▁t{i}" for i in range(len(token_maps))]
    return Prediction("0", mask, (64.0, 60.0), torch.rand(16, 16), kept_tokens=tokens[:1], tokens=tokens,
                      token_maps=torch.as_tensor(np.asarray(token_maps, dtype=np.float32)),
                      text_mass=[1.0] * len(tokens), token_kept=[True] + [False] * (len(tokens) - 1),
                      token_sink=[False] * len(tokens))


def layer(card: str, name: str) -> np.ndarray:
    """A layer's pixels, decoded from the card's data URI (`name`: a class, or a data-layer value)."""
    found = re.search(rf'<img class="{name}"[^>]*src="data:image/\w+;base64,([^"]+)"', card) or re.search(
        rf'data-layer="{name}"[^>]*src="data:image/\w+;base64,([^"]+)"', card)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(found.group(1)))))


def test_an_expressions_token_maps_share_one_colour_scale_and_show_its_range():
    """Each map on its own 0-1 scale makes a faint token look as hot as the strongest: one scale,
    the expression's lowest to highest value, and the range written beside the bar."""
    image, mask = scene((220, 30, 30))
    faint, strong = np.zeros((16, 16)), np.zeros((16, 16))
    faint[3, 3], strong[8, 8] = 0.2, 0.8
    card = card_html(0, "the red circle", image, prediction(mask, [faint, strong]), {})
    inferno = (np.array(colormaps["inferno"]([0.0, 0.25, 1.0])[:, :3]) * 255).round()
    faint_map, strong_map = layer(card, "token-0").astype(int), layer(card, "token-1").astype(int)
    assert np.abs(strong_map[8, 8] - inferno[2]).max() <= 1  # the highest value: the scale's top
    assert np.abs(faint_map[3, 3] - inferno[1]).max() <= 1  # 0.2 of 0..0.8: a quarter up, not the top
    assert np.abs(faint_map[0, 0] - inferno[0]).max() <= 1
    for token in ("token-0", "token-1"):
        caption = re.search(rf'<figcaption data-layer="{token}" hidden>(.*?)</figcaption>', card).group(1)
        assert re.search(r'refam-low">0<.*refam-high">0.8<', caption) and "one scale" in caption
    # the heatmap keeps its own, min-max normalised 0..1, and is the one shown first
    assert re.search(r'<figcaption data-layer="heatmap">heatmap .*refam-low">0<.*refam-high">1<', card)
    assert 'data-layer="heatmap" alt=""' in card and 'data-layer="token-0" hidden' in card


@pytest.mark.parametrize("colour", [(220, 30, 30), (30, 144, 255), (40, 170, 60), (20, 20, 20), (240, 240, 240)])
def test_the_mask_is_an_outline_that_contrasts_and_leaves_the_object_its_colour(colour):
    """A tint recolours the object (red under blue shows purple): the mask is an outline, drawn
    inside its edge in the palette colour that stands apart from the object and its surroundings;
    the fill is a separate light layer the page shows only when asked."""
    image, mask = scene(colour)
    card = card_html(0, "the disc", image, prediction(mask, [np.zeros((16, 16))]), {})
    outline, fill = layer(card, "refam-outline"), layer(card, "refam-fill")
    assert outline.shape[:2] == fill.shape[:2] == display_size(image.size)[::-1] == (512, 512)
    big = mask.repeat(4, 0).repeat(4, 1)
    drawn = outline[..., 3] > 0
    assert drawn.any() and not (drawn & ~big).any()  # inside the mask ...
    from scipy import ndimage

    assert not (drawn & ndimage.binary_erosion(big, iterations=8)).any()  # ... along its edge only
    rgb = outline[drawn][:, :3].astype(float)
    assert len(np.unique(rgb, axis=0)) == 1 and tuple(rgb[0].astype(int)) in OUTLINE_COLOURS
    for side in (np.array(colour), np.array([225, 225, 220])):
        assert np.linalg.norm(rgb[0] - side) > 150  # it stands apart from the object and the background
    assert np.all(fill[..., 3][big] == round(255 * FILL_ALPHA)) and not fill[..., 3][~big].any()


def test_a_neighbour_of_the_outlines_colour_makes_it_choose_another():
    """The edge's nearest pixels count, not its median: a green neighbour along part of the edge
    rules out green, which the grey surroundings and the purple object alone would choose."""
    image, mask = scene((130, 60, 170))
    alone = layer(card_html(0, "the purple disc", image, prediction(mask, [np.zeros((16, 16))]), {}), "refam-outline")
    assert tuple(alone[alone[..., 3] > 0][0, :3]) == (0, 255, 0)
    pixels = np.asarray(image).copy()
    pixels[~mask & (np.mgrid[:128, :128][1] >= 80)] = (0, 255, 0)  # a green object along the disc's right side
    card = card_html(0, "the purple disc", Image.fromarray(pixels), prediction(mask, [np.zeros((16, 16))]), {})
    colour = tuple(layer(card, "refam-outline")[layer(card, "refam-outline")[..., 3] > 0][0, :3])
    assert colour != (0, 255, 0)


def test_expressions_and_tokens_are_shown_whole_and_as_text():
    image, mask = scene((220, 30, 30))
    text = "the <b>red</b> circle & the ${value} `left` one, to the far upper-left corner of the picture"
    tokens = ["▁the", "▁supercalifragilisticexpialidocious-token", "</s>"]
    card = card_html(2, text, image, prediction(mask, [np.zeros((16, 16))] * 3, tokens), {})
    assert "the &lt;b&gt;red&lt;/b&gt; circle &amp; the ${value} `left` one, to the far upper-left corner of the picture" in card
    assert "<b>red</b>" not in card and ">supercalifragilisticexpialidocious-token<" in card and ">&lt;/s&gt;<" in card
    assert '<span class="refam-number">3</span>' in card  # numbered from 1


def test_warnings_and_the_no_referent_flag_show_in_the_card_only_when_given():
    assert notes_html({}) == notes_html({"warnings": [], "no_referent": False}) == ""
    notes = notes_html({"warnings": ["'zebra' is not a word the tokenizer knows"], "no_referent": True})
    assert "no referent" in notes and "<li>&#x27;zebra&#x27; is not a word the tokenizer knows</li>" in notes


def shown(settings: Settings, request=("image", ("the red circle",), ""), label="") -> Shown:
    return Shown(request, settings, (f'<section class="refam-card">{label}</section>',), "demo.png: 1 expression(s)")


def test_the_compare_view_sets_two_settings_side_by_side_for_the_same_input_only():
    on = Settings(magnets=True, magnet_words="_ with", first_block=0, last_block=3, noise=0.75)
    off = replace(on, magnets=False)
    assert results_html(View()) == ""
    single = results_html(View(shown(on, label="A")))
    assert "refam-compare" not in single and "settings of this result" in single and "magnets: <b>on: _ with</b>" in single
    assert json.loads(re.search(r'data-settings="([^"]+)"', single).group(1).replace("&quot;", '"'))["noise"] == 0.75
    pinned = View(shown(on, label="A")).pin()
    assert "refam-compare" not in results_html(pinned) and "change a setting" in results_html(pinned)
    both = results_html(pinned.showing(shown(off, label="B")))
    assert both.startswith('<div class="refam-results refam-compare">')
    heads = re.findall(r'<div class="refam-settings".*?</div>', both)
    assert [re.search(r'refam-title">(\w+)', h).group(1) for h in heads] == ["pinned", "shown"]
    assert all(re.findall(r'refam-setting refam-differs">(.*?)</span>', h) == [f"magnets: <b>{v}</b>"]
               for h, v in zip(heads, ["on: _ with", "off"]))  # only what differs is marked
    assert both.index(">A</section>") < both.index(">B</section>")  # pinned left, shown right
    other = results_html(pinned.showing(shown(off, request=("image", ("the square",), ""), label="C")))
    assert "refam-compare" not in other and "another input" in other and ">A</section>" not in other
    assert "refam-compare" not in results_html(pinned.showing(shown(off)).unpin())


def library_errors(tmp_path, monkeypatch) -> dict:
    """Errors the library raises for an upload, from a temporary folder like Gradio's."""
    from refam.api import as_image
    from refam.errors import RefamError

    upload = tmp_path / "gradio" / "4f2a9c" / "photo.png"
    upload.parent.mkdir(parents=True)
    found = {}

    def caught(name, call):
        with pytest.raises(RefamError) as info:
            call()
        found[name] = info.value

    upload.write_bytes(b"not a png")
    caught("unreadable", lambda: as_image(upload))
    caught("missing", lambda: as_image(upload.with_name("gone.png")))
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    frames[0].save(upload.with_name("anim.gif"), save_all=True, append_images=frames[1:])
    caught("animated", lambda: as_image(upload.with_name("anim.gif")))
    Image.new("RGB", (64, 64)).save(upload)
    monkeypatch.setenv("REFAM_MAX_PIXELS", "100")
    caught("too large", lambda: as_image(upload))
    return found


def test_the_librarys_errors_are_said_in_the_pages_words(tmp_path, monkeypatch):
    """No command-line flag or environment variable the page user cannot set, no server folder:
    the file by its name and what to do, on one line."""
    found = library_errors(tmp_path, monkeypatch)
    said = {name: page_error(err) for name, err in found.items()}
    assert said == {
        "unreadable": "cannot read photo.png as an image: give a PNG, JPEG or another common format",
        "missing": "gone.png is no longer on the server: upload it again",
        "animated": "anim.gif has 2 frames: upload it as a video (e.g. MP4), or save the one frame you mean",
        "too large": "photo.png is 64x64 pixels, more than the 100 this server reads: downscale it",
    }
    for err in found.values():
        assert str(tmp_path) in str(err) or "REFAM_MAX_PIXELS" in str(err) or "--video" in str(err)  # what it replaces
    # anything else keeps its words, with every path cut to its file's name
    assert page_error(ValueError(f"odd thing in {tmp_path}/x/y.png (see /etc/z.yaml)")) == "odd thing in y.png (see z.yaml)"


def test_the_error_line_is_one_line_marked_as_an_error():
    assert error_html("") == ""
    line = error_html("cannot read <x>.png as an image: give a PNG")
    assert line == ('<p class="refam-error" role="alert" title="cannot read &lt;x&gt;.png as an image: give a PNG">'
                    "cannot read &lt;x&gt;.png as an image: give a PNG</p>")
    long = error_html("word " * 100)
    assert "…</p>" in long and len(re.search(r">([^<]*)</p>", long).group(1)) == 200

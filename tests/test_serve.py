"""`refam serve`'s functions in-process, on the embedded refam-shapes model: the page shows what the
API computes, the toggles change the pipeline without reloading it, bad input is one line in the
page's words and leaves the last result, the run JSON loads back as a config, and requests are
queued one at a time."""

import html
import json
import os
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from refam.apps.serve import (NO_IMAGE, OUTPUTS, View, page_pin, page_preview,  # noqa: E402
                              page_rerun, page_run)
from tests.fixtures.serve_session import session, values  # noqa: E402,F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]
SCENE = str(ROOT / "assets/shapes-demo/images/demo-00005.png")
CAPTION = "a big red triangle, a big black square, a big purple circle and a big green circle"


def page(session, source, expressions, caption="", settings=None, view=None) -> dict:
    outputs = page_run(session, view or View(), source, expressions, caption, *values(settings or session.defaults))
    return dict(zip(OUTPUTS, outputs))


def cards(results: str) -> list[dict]:
    """Each card of the results: its expression, point, tokens (shown text, state) and key frame."""
    found = []
    for card in results.split('<section class="refam-card"')[1:]:
        found.append({
            "expression": html.unescape(re.search(r'<h3 class="refam-expression">(.*?)</h3>', card).group(1)),
            "point": tuple(float(v) for v in re.search(r"point \(([-\d.]+), ([-\d.]+)\)", card).groups()),
            "tokens": [(html.unescape(text), state) for state, text in
                       re.findall(r'class="refam-token refam-(kept|dropped|sink)"[^>]*>([^<]*)<', card)],
            "key frame": re.search(r"key frame (\d+)", card) and int(re.search(r"key frame (\d+)", card).group(1)),
        })
    return found


def kept(card: dict) -> list[str]:
    return [token for token, state in card["tokens"] if state == "kept"]


def read_mask(path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture) == 255


def test_the_page_shows_the_apis_masks_points_and_tokens(session):
    texts = ["the black square", "the purple circle"]
    shown = page(session, SCENE, "\n".join(texts) + "\n\n", CAPTION)  # blank lines are ignored
    assert shown["status"] == ""
    expected = session.model.segment(SCENE, texts, caption=CAPTION)
    masks = [p for p in shown["downloads"] if p.endswith("_mask.png")]
    assert len(masks) == 2 and shown["downloads"][-1].endswith("run.json")
    for path, prediction in zip(masks, expected):
        assert np.array_equal(read_mask(path), prediction.mask)  # the mask offered is the API's
    # a card per expression, in order, with the API's point and tokens (kept, dropped, sinks)
    shown_cards = cards(shown["results"])
    assert [c["expression"] for c in shown_cards] == texts
    for card, prediction in zip(shown_cards, expected):
        assert card["point"] == tuple(round(v, 2) for v in prediction.point)
        assert kept(card) == [t.replace("▁", "") for t in prediction.kept_tokens]
        assert [t for t, _ in card["tokens"]] == [t.replace("▁", "") or "▁" for t in prediction.tokens]
    record = json.loads(Path(shown["downloads"][-1]).read_text())
    assert [e["point"] for e in record["run"]["expressions"]] == [[round(v, 2) for v in p.point] for p in expected]
    assert record["run"]["expressions"][0]["tokens"] == expected[0].tokens
    # beside them, the settings that made them, and the view the browser keeps
    assert "settings of this result" in shown["results"] and shown["view"].shown.settings == session.defaults


def test_the_page_shows_the_loaded_models_card_at_the_top(session):
    """The page says which model answers: its name, backbone, that an embedded model's grounding was
    supervised, and the colours, shapes and words it knows (the video model's card after its own)."""
    from refam.apps.serve import build_app
    from refam.apps.serve.page import model_panel

    title, card = model_panel(session)
    assert title == ("model: refam-shapes · FluxExtractor on FluxTransformer2DModel · grounding supervised "
                     "(open for its card)")  # what the closed panel says
    assert card.startswith("**refam-shapes** · FluxExtractor on FluxTransformer2DModel")
    assert "- grounding: **supervised**:" in card and "\n\n**refam-shapes-video** · MochiExtractor" in card
    assert "- colours: red, green, blue, yellow, purple, orange, black · shapes: circle, square, triangle" in card
    assert "words it knows" in card and "triangle, two, yellow; any other word is unknown to it" in card
    app = build_app(session)
    shown = [block for block in app.blocks.values() if getattr(block, "elem_id", None) == "refam-model-card"]
    assert [block.value for block in shown] == [card]
    panel = next(block for block in app.blocks.values() if getattr(block, "elem_id", None) == "refam-model")
    assert panel.label == title
    column = next(block for block in app.blocks.values() if getattr(block, "elem_id", None) == "refam-input").parent
    assert column.children[0] is panel  # the first thing in the left column


def test_an_expressions_warnings_show_on_its_card_and_in_the_run_json(session):
    """A word the embedded model does not know becomes an unknown token: the card says so, as the
    API's `Prediction.warnings` and the run's record do; a known expression's card says nothing."""
    texts = ["the zebra", "the black square"]
    shown = page(session, SCENE, "\n".join(texts))
    expected = session.model.segment(SCENE, texts)
    assert expected[0].warnings and not expected[1].warnings
    record = json.loads(Path(shown["downloads"][-1]).read_text())
    assert [e["warnings"] for e in record["run"]["expressions"]] == [p.warnings for p in expected]
    zebra, square = shown["results"].split('<section class="refam-card"')[1:]
    notes = re.findall(r'<ul class="refam-warnings"><li>(.*?)</li></ul>', zebra)
    assert [html.unescape(n) for n in notes] == expected[0].warnings
    assert 'the model does not know the word "zebra"' in html.unescape(notes[0])
    assert "refam-warnings" not in square


def test_the_no_referent_flag_shows_as_a_caution_on_its_card_and_in_the_run_json(session, tmp_path):
    """On a held-out scene of a red triangle and a blue circle, "the black shape" is flagged as the
    API flags it: its card carries the caution and the flag's warning, the run's record says
    no_referent true; the present "the blue circle" says nothing."""
    from refam.shapes.varied import make_varied_scene

    scene = tmp_path / "held-out-20007.png"
    make_varied_scene("test", 20007).image.save(scene)
    texts = ["the blue circle", "the black shape"]
    shown = page(session, str(scene), "\n".join(texts))
    expected = session.model.segment(str(scene), texts)
    assert [p.no_referent for p in expected] == [False, True]
    record = json.loads(Path(shown["downloads"][-1]).read_text())
    assert [e["no_referent"] for e in record["run"]["expressions"]] == [False, True]
    circle, black = shown["results"].split('<section class="refam-card"')[1:]
    assert "refam-no-referent" not in circle and "refam-warnings" not in circle
    caution = re.search(r'<p class="refam-no-referent" role="note">(.*?)</p>', black).group(1)
    assert "may name nothing in the image" in html.unescape(caution)
    notes = re.findall(r'<ul class="refam-warnings"><li>(.*?)</li></ul>', black)
    assert [html.unescape(n) for n in notes] == expected[1].warnings
    assert html.unescape(notes[0]).startswith("may name nothing in the image: the most attention any of its words")


def test_magnets_off_changes_the_kept_tokens_without_reloading_the_model(session):
    extractor, transformer = session.model.pipeline.extractor, session.model.pipeline.extractor.pipe.transformer
    on = page(session, SCENE, "the black square", CAPTION)
    off = page(session, SCENE, "the black square", CAPTION, replace(session.defaults, magnets=False))
    assert ("pink", "dropped") in cards(on["results"])[0]["tokens"]
    assert "pink" not in [t for t, _ in cards(off["results"])[0]["tokens"]]  # the magnets are gone from the tokens
    run_on, run_off = (json.loads(Path(p["downloads"][-1]).read_text())["run"]["expressions"][0] for p in (on, off))
    assert run_on["tokens"][-6:-1] == ["_", "▁with", "▁to", "▁and", "▁pink"]
    assert not {"▁with", "▁to", "▁and", "▁pink"} & set(run_off["tokens"])
    assert run_on["kept_tokens"] == run_off["kept_tokens"] == ["▁black", "▁square"]
    assert run_on["point"] != run_off["point"] or not np.array_equal(
        read_mask(on["downloads"][0]), read_mask(off["downloads"][0]))  # the maps changed, so the answer did
    assert session.model.pipeline.extractor is extractor and extractor.pipe.transformer is transformer
    again = page(session, SCENE, "the black square", CAPTION)  # back on: the same answer as before
    assert cards(again["results"]) == cards(on["results"])
    # the stop-word filter: "the" is kept once it is off
    unfiltered = page(session, SCENE, "the black square", CAPTION, replace(session.defaults, stop_words=False))
    assert kept(cards(unfiltered["results"])[0]) == ["the", "black", "square"]


def test_settings_reach_the_components_and_the_run_json_loads_back_as_a_config(session, tmp_path):
    from refam import RefAM
    from refam.aggregators.spatial import DirectionPrior

    settings = replace(session.defaults, magnets=True, magnet_words="_ with and", stop_words=False, gas="drop",
                       first_block=1, last_block=2, noise=0.5, spatial_bias="direction")
    shown = page(session, SCENE, "the black square\nthe object on the left", CAPTION, settings)
    assert shown["status"] == ""
    for item in ("magnets: <b>on: _ with and</b>", "stop-word filter: <b>off</b>", "GAS: <b>drop</b>",
                 "blocks: <b>1-2</b>", "noise sigma: <b>0.5</b>", "spatial bias: <b>direction</b>"):
        assert item in shown["results"]  # the settings of the shown result, next to it
    ran = session.settings  # the request's settings, passed to the loaded pipeline for its call
    assert ran.magnets.magnets == ["_", "with", "and"] and ran.magnets.filter_stop_words is False
    assert ran.aggregator.gas == "drop" and ran.blocks == (1, 2)
    assert ran.trajectory.sigma == 0.5 and isinstance(ran.spatial_bias[0], DirectionPrior)
    record = json.loads(Path(shown["downloads"][-1]).read_text())
    assert record["run"]["settings"]["gas"] == "drop" and record["run"]["caption"] == CAPTION
    config = tmp_path / "run.json"
    config.write_text(json.dumps(record))
    loaded = RefAM.load(config)  # the run's model section, settings applied, as a config
    again = loaded.segment(SCENE, ["the black square", "the object on the left"], caption=CAPTION)
    for entry, prediction, mask in zip(record["run"]["expressions"], again, shown["downloads"]):
        assert entry["point"] == [round(v, 2) for v in prediction.point]
        assert entry["kept_tokens"] == prediction.kept_tokens and entry["tokens"] == prediction.tokens
        assert np.array_equal(read_mask(mask), prediction.mask)
    # unchanged settings leave the section as configured
    assert session.section_for(session.defaults) == session.section


def test_a_requests_settings_leave_the_loaded_pipeline_as_it_was(session, monkeypatch):
    """The settings are the request's call's (issue O point 1): the loaded pipeline and its extractor
    are never changed, copied or given other values, not even during the call; the extractor is
    handed the block selection and noise level per call."""
    loaded = session.model.pipeline
    extractor = loaded.extractor

    def state():
        return (loaded.settings, loaded.extractor, loaded.segmenter, dict(vars(loaded)), dict(vars(extractor)),
                extractor.settings(), extractor.cache_key_settings())

    before = state()
    calls = []
    extract = type(extractor).extract

    def watched(self, *args, **kwargs):
        calls.append((self, kwargs.get("blocks"), kwargs.get("trajectory"), state() == before))
        return extract(self, *args, **kwargs)

    monkeypatch.setattr(type(extractor), "extract", watched)
    settings = replace(session.defaults, magnet_words="_ with", stop_words=False, gas="drop", first_block=1,
                       last_block=2, noise=0.5, spatial_bias="direction")
    assert page(session, SCENE, "the black square", CAPTION, settings)["status"] == ""
    ran = session.settings
    assert state() == before and ran is not loaded.settings
    assert ran.blocks == (1, 2) and ran.trajectory.sigma == 0.5 and ran.aggregator.gas == "drop"
    [(called, blocks, trajectory, unchanged)] = calls
    assert called is extractor and blocks == (1, 2) and trajectory.sigma == 0.5 and unchanged
    calls.clear()
    page(session, SCENE, "the black square", CAPTION)  # back to the configured settings: the extractor's own
    assert session.settings == loaded.settings and calls == [(extractor, None, None, True)] and state() == before


@pytest.mark.parametrize("source, expressions, line", [
    (None, "the black square", NO_IMAGE),
    (SCENE, "  \n ", "an expression is empty: give the words that name the object"),
    (SCENE, " ".join(["red"] * 200), "an expression is too long: 207 tokens with the magnets, more than the model's 128; "
                                     "shorten it"),
    ("{broken}", "the black square", "cannot read broken.png as an image: give a PNG, JPEG or another common format"),
    ("{long video}", "the black square", "long.mp4 has 24 frames, more than the 20 this server takes: cut the clip"),
], ids=["no image", "empty expression", "over-long expression", "unreadable file", "video too long"])
def test_bad_input_is_one_line_in_the_pages_words_and_the_last_result_stays(session, tmp_path, source, expressions,
                                                                             line):
    """The page's words (no command-line flag, no server folder), marked as an error, on one line;
    the last good result stays on screen, and the next request works."""
    folder = tmp_path / "gradio" / "0a1b2c"  # where an upload lands
    folder.mkdir(parents=True)
    broken = folder / "broken.png"
    broken.write_bytes(b"not a png")
    video = folder / "long.mp4"
    if source == "{long video}":
        write_clip(video, frames=24)
    source = {"{broken}": str(broken), "{long video}": str(video)}.get(source, source)
    good = page(session, SCENE, "the black square", CAPTION)
    shown = page(session, source, expressions, CAPTION, view=good["view"])
    assert shown["status"] == f'<p class="refam-error" role="alert" title="{html.escape(line)}">{html.escape(line)}</p>'
    assert (shown["results"], shown["downloads"], shown["view"]) == (good["results"], good["downloads"], good["view"])
    again = page(session, SCENE, "the purple circle", CAPTION, view=shown["view"])  # and the app goes on
    assert again["status"] == "" and cards(again["results"])[0]["expression"] == "the purple circle"


def test_a_block_range_backwards_is_an_error_and_the_preview_reports_an_unreadable_file(session, tmp_path):
    shown = page(session, SCENE, "the black square", "", replace(session.defaults, first_block=3, last_block=1))
    assert ">the first block (3) comes after the last block (1): move one of the two<" in shown["status"]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    image, clip, status = page_preview(session, str(broken))
    assert image is None and clip is None and ">cannot read broken.jpg as an image" in status and str(tmp_path) not in status
    image, clip, status = page_preview(session, SCENE)
    assert image.size == (128, 128) and clip is None and status == ""
    # a toggle with nothing to show yet leaves the page alone
    assert page_rerun(session, View(), None, "", "", *values(session.defaults)) is None


def test_a_control_reruns_unless_the_shown_result_has_its_settings(session, monkeypatch):
    """Every control reruns; one set back to the shown result's settings clears an error line and
    runs nothing. Pinning keeps a result to compare: another setting's result shows beside it."""
    shown = page(session, SCENE, "the black square", CAPTION)
    calls, real_run = [], session.run
    monkeypatch.setattr(session, "run", lambda *args, **kwargs: calls.append(args) or real_run(*args, **kwargs))
    same = dict(zip(OUTPUTS, page_rerun(session, shown["view"], SCENE, "the black square", CAPTION,
                                        *values(session.defaults))))
    assert calls == [] and same["status"] == "" and same["results"] == shown["results"]
    results, pinned = page_pin(shown["view"])
    assert "change a setting" in results
    off = replace(session.defaults, magnets=False)
    both = dict(zip(OUTPUTS, page_rerun(session, pinned, SCENE, "the black square", CAPTION, *values(off))))
    assert len(calls) == 1 and both["view"].pinned == shown["view"].shown and both["view"].shown.settings == off
    assert 'class="refam-results refam-compare"' in both["results"] and len(cards(both["results"])) == 2
    assert both["results"].count("refam-setting refam-differs") == 2  # magnets, marked on both sides


@pytest.mark.parametrize("entry, spec, line", [
    ("magnets", {"class_path": "refam.aggregators.magnets.AppendMagnets", "init_args": {"magnetz": ["pink"]}},
     "unknown key model.magnets.init_args.magnetz (refam.aggregators.magnets.AppendMagnets has no such argument)"),
    ("magnets", {"class_path": "RandomStopWordMagnets", "init_args": {"count": 0}},
     "model.magnets.init_args.count: must be between 1 and"),
    ("trajectory", {"class_path": "NoiseAt", "init_args": {"sigma": 7}},
     "model.extractor.init_args.trajectory.init_args.sigma: must be a noise level in [0, 1]"),
], ids=["unknown key", "magnets' own error", "trajectory's own error"])
def test_a_bad_entry_in_a_loaded_run_names_its_config_key_as_refam_test_does(session, entry, spec, line):
    """A run JSON edited by hand and loaded back, as `refam test` would read its `model:` section."""
    from refam.errors import ConfigError, error_line

    section = json.loads(json.dumps(session.section))
    if entry == "trajectory":
        section["extractor"]["init_args"]["trajectory"] = spec
    else:
        section[entry] = spec
    latest = session.settings
    with pytest.raises(ConfigError) as info:
        session.apply(section)
    shown = error_line(info.value)
    assert line in shown and "\n" not in shown
    assert session.settings is latest  # nothing applied
    assert page(session, SCENE, "the black square", CAPTION)["status"] == ""


def write_clip(path: Path, frames: int) -> None:
    import cv2

    from refam.shapes.scenes import make_scene

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (128, 128))
    for index in range(frames):
        writer.write(np.asarray(make_scene("test", index % 2).image)[:, :, ::-1].copy())
    writer.release()


def test_a_video_gives_the_key_frames_maps_and_the_tracked_masks_as_a_clip(session, tmp_path):
    import zipfile

    video = tmp_path / "clip.mp4"
    write_clip(video, frames=4)
    shown = page(session, str(video), "the red circle\nthe square")
    assert shown["status"] == "", shown["status"]
    assert shown["clip"].endswith(".webm")  # every frame played: tests/test_serve_video.py
    with zipfile.ZipFile(shown["downloads"][0]) as bundle:
        names = bundle.namelist()
    assert len(names) == 8 and "0-the-red-circle/00003.png" in names
    shown_cards = cards(shown["results"])  # the key frame's maps, a card per expression
    assert [(c["expression"], c["key frame"]) for c in shown_cards] == [("the red circle", 0), ("the square", 0)]
    assert all(kept(c) for c in shown_cards) and "2 expression(s) x 4 frames" in shown["results"]


def test_requests_are_queued_one_at_a_time_on_the_model(session, monkeypatch):
    """Two browsers clicking at once: the second run starts after the first ends (Gradio's queue)."""
    import socket

    from gradio_client import Client, handle_file

    from refam.apps.serve import build_app

    spans, real_run = [], session.run

    def timed_run(*args, **kwargs):
        start = time.monotonic()
        time.sleep(0.5)
        try:
            return real_run(*args, **kwargs)
        finally:
            spans.append((start, time.monotonic()))

    monkeypatch.setattr(session, "run", timed_run)
    app = build_app(session)
    assert app.analytics_enabled is False
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, share=False,
               ssr_mode=False)
    try:
        clients = [Client(f"http://127.0.0.1:{port}/", verbose=False) for _ in range(2)]  # two browsers
        controls = values(session.defaults)
        results = [None, None]

        def click(i):
            results[i] = clients[i].predict(handle_file(SCENE), "the black square", CAPTION, *controls, api_name="/run")

        threads = [threading.Thread(target=click, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        app.close()
    assert all(r is not None and r[0] == "" for r in results)
    (start_a, end_a), (start_b, end_b) = sorted(spans)
    assert start_b >= end_a  # never two runs on the model at once


@pytest.mark.parametrize("failure", ["the app fails to start", "the port is taken after the check"])
def test_a_failed_start_leaves_no_working_folder(failure, tmp_path, monkeypatch, refam_here):
    """serve's working folder is removed on every way out, a start that fails included (the model,
    its session and the app are stand-ins: what is checked is main's own cleanup)."""
    import tempfile

    import refam.apps.serve
    from refam.api import RefAM

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp makes the working folder
    monkeypatch.setattr(RefAM, "load", classmethod(lambda cls, *args, **kwargs: object()))
    monkeypatch.setattr(refam.apps.serve, "model_section", lambda source: {})
    made = []

    class App:
        def launch(self, **kwargs):
            made.extend(tmp_path.glob("refam-serve-*"))
            raise (RuntimeError("gradio broke") if failure == "the app fails to start" else OSError("address in use"))

        def close(self):
            pass

    monkeypatch.setattr(refam.apps.serve, "Session", lambda model, section, max_frames, workdir, restored: workdir)
    monkeypatch.setattr(refam.apps.serve, "build_app", lambda session: App())
    if failure == "the app fails to start":
        with pytest.raises(RuntimeError, match="gradio broke"):  # a bug, not the user's: its traceback stays
            refam.apps.serve.main(["--port", "7999"])
    else:
        result = refam_here("serve", "--port", "7999")
        assert result.returncode == 2 and result.stderr.startswith("refam: error: cannot serve on 127.0.0.1:7999")
    assert made and all(folder.parent == tmp_path for folder in made)  # it was made there ...
    assert list(tmp_path.glob("refam-serve-*")) == []  # ... and is gone


def test_an_invalid_pixel_limit_stops_the_server_before_the_model_loads(monkeypatch, refam_here):
    """The limit is the server's to set: refused at the start in one line, not on each upload."""
    from refam.api import RefAM

    monkeypatch.setenv("REFAM_MAX_PIXELS", "lots")
    monkeypatch.setattr(RefAM, "load", classmethod(lambda cls, *args, **kwargs: pytest.fail("the model loaded")))
    result = refam_here("serve", "--port", "7999")
    assert result.returncode == 2
    assert result.stderr.startswith("refam: error: environment variable REFAM_MAX_PIXELS='lots' is not a positive")

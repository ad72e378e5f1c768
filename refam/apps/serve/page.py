"""The Gradio page of `refam serve`: the input, the settings, a card per expression (`cards`), a
result pinned to compare with (`views`) and the downloads, wired to a `Session`; and the handlers it
calls (`page_*`), plain functions a test can call. What the page shows lives in a per-browser `View`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from html import escape
from pathlib import Path

from refam.apps.serve.cards import card_html
from refam.apps.serve.client import RESULTS_CSS, RESULTS_JS, STATUS_CSS
from refam.apps.serve.clips import count_frames, frame_rate, is_video
from refam.apps.serve.messages import error_html, page_error
from refam.apps.serve.restore import RestoredRun
from refam.apps.serve.session import Run, Session
from refam.apps.serve.settings import AS_CONFIGURED, SPATIAL_BIASES, Settings
from refam.apps.serve.views import Shown, View, results_html
from refam.errors import RefamError

REPO_ROOT = Path(__file__).resolve().parents[3]
DEMO_MANIFEST = REPO_ROOT / "assets" / "shapes-demo" / "manifest.jsonl"
DEMO_SCENES = 10  # how many demo scenes the page offers


def demo_scenes(limit: int = DEMO_SCENES) -> list[dict]:
    """The first demo scenes of assets/shapes-demo: image path, caption and expressions."""
    if not DEMO_MANIFEST.exists():
        return []
    scenes = []
    for line in DEMO_MANIFEST.read_text().splitlines()[:limit]:
        record = json.loads(line)
        scenes.append({"id": record["id"], "image": str(DEMO_MANIFEST.parent / record["image"]),
                       "caption": record.get("caption", ""),
                       "expressions": [e["text"] if isinstance(e, dict) else e for e in record["expressions"]]})
    return scenes


CONTROLS = ("magnets", "magnet_words", "stop_words", "gas", "first_block", "last_block", "noise", "spatial_bias")


def settings_from_values(session: Session, values: list) -> Settings:
    """The page's control values (in CONTROLS order) as Settings; a control the pipeline lacks is
    hidden and sends a placeholder, so its setting stays None."""
    given, default = dict(zip(CONTROLS, values)), asdict(session.defaults)
    cast = {"magnets": bool, "magnet_words": str, "stop_words": bool, "gas": str, "first_block": int, "last_block": int,
            "noise": float, "spatial_bias": str}
    return Settings(**{name: None if default[name] is None or given.get(name) is None else cast[name](given[name])
                       for name in CONTROLS})


OUTPUTS = ("status", "results", "clip", "downloads", "view")


def model_panel(session: Session) -> tuple[str, str]:
    """The loaded model as the page shows it: the title of its panel (name, backbone, how it grounds:
    seen with the panel closed) and its card (Markdown: besides, what it was trained on and an
    embedded model's colours, shapes and words)."""
    card = session.card
    backbone = f"{card['extractor'].rsplit('.', 1)[-1]} on {card['transformer'] or 'an unnamed denoiser'}"
    grounding = card["grounding"].partition(": ")[0]
    return f"model: {card['name']} · {backbone} · grounding {grounding} (open for its card)", session.card_markdown


def request_of(source, expressions, caption) -> tuple:
    """What a result answers: the input's content (not its upload's name), the expressions and the caption."""
    import hashlib

    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest() if source and Path(source).is_file() else str(source)
    return digest, tuple(line.strip() for line in (expressions or "").splitlines() if line.strip()), (caption or "").strip()


def shown_run(run: Run, request: tuple, settings: Settings, name: str, points: tuple = ()) -> Shown:
    """A run as the page shows it: a card per expression, the settings (and correction points) that made it."""
    cards = tuple(card_html(k, entry["expression"], image, prediction, entry)
                  for k, (entry, image, prediction) in enumerate(zip(run.expressions, run.backdrops, run.predictions)))
    caption = f"caption \"{run.record['run']['caption']}\"" if run.record["run"]["caption"] else "no caption"
    frames = f" x {run.frames} frames" if run.frames is not None else ""
    corrected = f", {len(points)} correction point(s)" if points else ""
    summary = f"{name}, {caption}: {len(cards)} expression(s){frames}{corrected} in {run.seconds:.2f} s"
    return Shown(request, settings, cards, summary, tuple(run.downloads), run.clip, tuple(points))


def point_lists(points: tuple, count: int) -> list[list[tuple]] | None:
    """The page's points, (expression, x, y, label) each, as `Session.run` takes them: a list per
    expression; None without any (the uncorrected call)."""
    if not points:
        return None
    return [[(x, y, label) for k, x, y, label in points if k == index] for index in range(count)]


def page_outputs(view: View, status: str = "") -> tuple:
    """The page's outputs (OUTPUTS order) for a view: the status line, the results, a video's clip,
    the downloads, and the view itself (kept per browser)."""
    shown = view.shown
    return (error_html(status), results_html(view), shown.clip if shown else None,
            list(shown.downloads) if shown else None, view)


def page_run(session: Session, view: View, source, expressions, caption, *values, points: tuple | None = None) -> tuple:
    """The Segment button: the page's outputs (OUTPUTS order). The shown result's correction points
    stay while the input, expressions and caption are the same (`points` replaces them). Bad input
    is one line in the page's words, the last good result stays, and the app goes on serving."""
    view = view or View()
    try:
        settings = settings_from_values(session, list(values))
        request = request_of(source, expressions, caption)
        if points is None:
            points = view.shown.points if view.shown is not None and view.shown.request == request else ()
        run = session.run(source, expressions, caption, settings, points=point_lists(points, len(request[1])))
    except RefamError as err:
        return page_outputs(view, page_error(err))
    return page_outputs(view.showing(shown_run(run, request, settings, Path(source).name, points)))


NOTHING_TO_CORRECT = "segment first: a click on a result's mask corrects that result"


def page_select(session: Session, view: View, click: dict, source, expressions, caption, *values) -> tuple:
    """A click on an expression's mask: a point there (`click`: expression, x, y in the image's
    pixels, negative), and the segmenter re-prompted with all of that result's points."""
    view = view or View()
    shown = view.shown
    if shown is None or shown.request != request_of(source, expressions, caption):
        return page_outputs(view, NOTHING_TO_CORRECT)
    point = (int(click["expression"]), round(float(click["x"]), 1), round(float(click["y"]), 1),
             0 if click.get("negative") else 1)
    return page_run(session, view, source, expressions, caption, *values, points=shown.points + (point,))


def page_undo(session: Session, view: View, source, expressions, caption, *values) -> tuple:
    """Undo: the shown result's last point removed, the segmenter re-prompted with the others."""
    view = view or View()
    shown = view.shown
    if shown is None or not shown.points:
        return page_outputs(view)
    if shown.request != request_of(source, expressions, caption):
        return page_outputs(view, NOTHING_TO_CORRECT)
    return page_run(session, view, source, expressions, caption, *values, points=shown.points[:-1])


def page_rerun(session: Session, view: View, source, expressions, caption, *values) -> tuple | None:
    """A control changed: run again when there is something to show and the settings differ from
    the shown result's (None: leave the page as it is)."""
    view = view or View()
    if source is None or not (expressions or "").strip():
        return None
    shown = view.shown
    if shown is not None and (shown.request, shown.settings) == (request_of(source, expressions, caption),
                                                                settings_from_values(session, list(values))):
        return page_outputs(view)  # back to the shown result's settings: only an error line to clear
    return page_run(session, view, source, expressions, caption, *values)


def page_pin(view: View) -> tuple:
    """Pin the shown result: later results of the same input show beside it. (results, view)"""
    view = (view or View()).pin()
    return results_html(view), view


def page_unpin(view: View) -> tuple:
    """Drop the pinned result: the shown one alone again. (results, view)"""
    view = (view or View()).unpin()
    return results_html(view), view


def page_preview(session: Session, source) -> tuple:
    """The chosen file: the image it holds, or a video (an animated GIF too) as a clip the page
    plays with a line saying its frames; or the error reading it. (image, clip, status line)"""
    from refam.api import as_image

    if source is None:
        return None, None, ""
    path = Path(source)
    try:
        if is_video(path):
            frames = count_frames(path)
            return None, session.preview(path), escape(f"video: {path.name}, {frames} frames at {frame_rate(path):.3g} fps")
        return as_image(path), None, ""
    except RefamError as err:
        return None, None, error_html(page_error(err))


def build_app(session: Session):
    """The Gradio Blocks of the app (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from refam.aggregators.base import GAS_HANDLING

    default = session.defaults
    scenes = demo_scenes()

    def shown(outputs: tuple) -> tuple:  # the tracked masks' player shows for a video's run only
        status, results, clip, downloads, view = outputs
        return status, results, gr.update(value=clip, visible=clip is not None), downloads, view

    def run(*args):
        return shown(page_run(session, *args))

    def rerun(*args):
        outputs = page_rerun(session, *args)
        return (gr.skip(),) * len(OUTPUTS) if outputs is None else shown(outputs)

    def select(event, view, *args):  # a click on a card's mask (the results' script sends it)
        return shown(page_select(session, view, event._data, *args))

    select.__annotations__["event"] = gr.EventData  # how Gradio knows to pass the click's data

    def preview(source):
        image, clip, line = page_preview(session, source)
        return gr.update(value=image, visible=clip is None), gr.update(value=clip, visible=clip is not None), line

    def pick_scene(event):
        scene = scenes[event.index]
        return scene["image"], scene["caption"], "\n".join(scene["expressions"][:2])

    pick_scene.__annotations__["event"] = gr.SelectData  # how Gradio knows to pass the click

    with gr.Blocks(title="refam", analytics_enabled=False) as app:
        view = gr.State(View())
        gr.Markdown("## refam: referring segmentation from diffusion-transformer attention\n"
                    "Upload an image or a video (or click a demo scene), type one expression per line, and run. "
                    "Each expression gets a card: the mask outlined over the image with the star, the point that "
                    "prompted the segmenter, and the heatmap; click a token for its own map.")
        if scenes:
            demos = gr.Gallery([s["image"] for s in scenes], label="demo scenes (click one)",
                               columns=len(scenes), height=150, allow_preview=False, elem_id="refam-demos")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                title, card = model_panel(session)
                with gr.Accordion(title, open=False, elem_id="refam-model"):  # closed: the upload stays in view
                    gr.Markdown(card, elem_id="refam-model-card")
                start = session.restored or RestoredRun("", "", None)  # a downloaded run given as the config: its inputs
                source = gr.File(start.input and str(start.input), label="image or video",
                                 type="filepath", elem_id="refam-input", file_types=["image", "video"])
                shown_image = gr.Image(label="input", interactive=False, height=200, elem_id="refam-preview")
                shown_video = gr.Video(label="input video", interactive=False, height=260, autoplay=True, loop=True,
                                       visible=False, buttons=["download"], elem_id="refam-preview-video")
                expressions = gr.Textbox(start.expressions, label="expressions (one per line)", lines=3,
                                         elem_id="refam-expressions", placeholder="the red circle\nthe square on the left")
                caption = gr.Textbox(start.caption, label="caption (optional: what the denoising stream "
                                     "is conditioned on)", elem_id="refam-caption")
                button = gr.Button("Segment", variant="primary", elem_id="refam-run")
                with gr.Accordion("settings (a change reruns)", open=True):
                    magnets = gr.Checkbox(default.magnets, label="attention magnets", elem_id="refam-magnets")
                    magnet_words = gr.Textbox(default.magnet_words, label="magnet words (Enter reruns)",
                                              elem_id="refam-magnet-words",
                                              placeholder="configured strategy" if not default.magnet_words else None)
                    stop_words = gr.Checkbox(bool(default.stop_words), label="stop-word filter",
                                             visible=default.stop_words is not None, elem_id="refam-stop-words")
                    gas = gr.Radio(list(GAS_HANDLING), value=default.gas, label="global attention sinks (GAS)",
                                   visible=default.gas is not None, elem_id="refam-gas")
                    last = (session.num_blocks or 1) - 1
                    first_block = gr.Slider(0, max(last, 1), value=default.first_block or 0, step=1, label="first block",
                                            visible=session.num_blocks is not None, elem_id="refam-first-block",
                                            elem_classes=["refam-rerun"])
                    last_block = gr.Slider(0, max(last, 1), value=default.last_block if default.last_block is not None else last,
                                           step=1, label="last block", visible=session.num_blocks is not None,
                                           elem_id="refam-last-block", elem_classes=["refam-rerun"])
                    noise = gr.Slider(0.0, 1.0, value=default.noise if default.noise is not None else 0.75, step=0.01,
                                      label="noise level (sigma)", visible=session.observes_one_noise_level,
                                      elem_id="refam-noise", elem_classes=["refam-rerun"])
                    choices = list(SPATIAL_BIASES) + ([AS_CONFIGURED] if default.spatial_bias == AS_CONFIGURED else [])
                    spatial = gr.Radio(choices, value=default.spatial_bias, label="spatial bias (HybridGL priors)",
                                       elem_id="refam-spatial")
                downloads = gr.File(label="masks and run.json", file_count="multiple", interactive=False,
                                    elem_id="refam-downloads")
            with gr.Column(scale=3):
                status = gr.HTML(error_html(start.note), elem_id="refam-status", css_template=STATUS_CSS, js_on_load=None)
                with gr.Row(equal_height=True):
                    pin = gr.Button("pin this result to compare", size="sm", elem_id="refam-pin")
                    unpin = gr.Button("unpin", size="sm", elem_id="refam-unpin")
                    gr.Checkbox(False, label="fill the mask lightly", elem_id="refam-fill", container=False)
                with gr.Row(equal_height=True):
                    gr.Markdown("click a mask: a point on what the expression means; shift-click (or the toggle): "
                                "a point on what it does not", elem_id="refam-correct-help")
                    gr.Checkbox(False, label="negative point", elem_id="refam-negative", container=False)
                    undo = gr.Button("undo last point", size="sm", elem_id="refam-undo")
                results = gr.HTML("", elem_id="refam-results", css_template=RESULTS_CSS, js_on_load=RESULTS_JS)
                clip = gr.Video(label="video: tracked masks (the star: each expression's key frame point)",
                                interactive=False, autoplay=True, loop=True, buttons=["download"], visible=False,
                                elem_id="refam-clip")
        controls = [magnets, magnet_words, stop_words, gas, first_block, last_block, noise, spatial]
        inputs = [view, source, expressions, caption, *controls]
        outputs = [status, results, clip, downloads, view]
        # progress shows on the results (the status line keeps its one line for errors)
        gr.on([button.click, caption.submit], run, inputs, outputs, api_name="run", concurrency_limit=1,
              concurrency_id="model", show_progress_on=[results])
        gr.on([magnets.change, stop_words.change, gas.change, spatial.change, magnet_words.submit,
               first_block.release, last_block.release, noise.release],
              rerun, inputs, outputs, trigger_mode="always_last", concurrency_limit=1, concurrency_id="model",
              show_progress_on=[results])
        correcting = dict(concurrency_limit=1, concurrency_id="model", show_progress_on=[results])
        results.select(select, inputs, outputs, **correcting)
        undo.click(lambda *args: shown(page_undo(session, *args)), inputs, outputs, **correcting)
        pin.click(page_pin, [view], [results, view], show_progress="hidden")
        unpin.click(page_unpin, [view], [results, view], show_progress="hidden")
        source.change(preview, [source], [shown_image, shown_video, status], show_progress_on=[shown_image])
        if start.input:  # its preview, as an upload's
            app.load(preview, [source], [shown_image, shown_video, status])
        if scenes:
            demos.select(pick_scene, None, [source, caption, expressions])
    app.queue(default_concurrency_limit=1)  # one request at a time on the model; the others wait their turn
    return app

"""The Gradio page of `refam serve`: the input, the settings, the figures and the downloads, wired
to a `Session`; and the handlers it calls (`page_*`), which are plain functions a test can call."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from refam.apps.serve.clips import count_frames, frame_rate, is_video
from refam.apps.serve.restore import RestoredRun
from refam.apps.serve.session import Run, Session
from refam.apps.serve.settings import AS_CONFIGURED, SPATIAL_BIASES, Settings
from refam.errors import RefamError, error_line

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


def summary_table(entries: list[dict]) -> str:
    """Point, kept, dropped and sink tokens per expression, as a Markdown table (tokens as code)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    def tokens(values) -> str:
        pieces = [v["token"] if isinstance(v, dict) else v for v in values]
        return " ".join(f"`{cell(p.replace('▁', '') or '▁')}`" for p in pieces) or "-"

    lines = ["| expression | point (x, y) | kept | dropped | sinks |", "| --- | --- | --- | --- | --- |"]
    for entry in entries:
        x, y = entry["point"]
        lines.append(f"| {cell(entry['expression'])} | ({x:g}, {y:g}) | {tokens(entry.get('kept_tokens', []))} "
                     f"| {tokens(entry.get('dropped_tokens', []))} | {tokens(entry.get('sinks', []))} |")
    return "\n".join(lines)


def run_summary(run: Run) -> str:
    """The summary table, then how many expressions (and frames) ran in how long."""
    frames = f" x {run.frames} frame(s)" if run.frames is not None else ""
    return summary_table(run.expressions) + f"\n\n{len(run.expressions)} expression(s){frames} in {run.seconds:.2f} s"


CONTROLS = ("magnets", "magnet_words", "stop_words", "gas", "first_block", "last_block", "noise", "spatial_bias")


def settings_from_values(session: Session, values: list) -> Settings:
    """The page's control values (in CONTROLS order) as Settings; a control the pipeline lacks is
    hidden and sends a placeholder, so its setting stays None."""
    given, default = dict(zip(CONTROLS, values)), asdict(session.defaults)
    cast = {"magnets": bool, "magnet_words": str, "stop_words": bool, "gas": str, "first_block": int, "last_block": int,
            "noise": float, "spatial_bias": str}
    return Settings(**{name: None if default[name] is None or given.get(name) is None else cast[name](given[name])
                       for name in CONTROLS})


OUTPUTS = ("status", "pictures", "token_maps", "attention", "clip", "summary", "downloads")


def page_run(session: Session, source, expressions, caption, *values) -> tuple:
    """The Segment button: the page's outputs (OUTPUTS order); bad input gives the CLI's one-line
    error in the status line and clears the previous results, and the app goes on serving."""
    try:
        result = session.run(source, expressions, caption, settings_from_values(session, list(values)))
    except RefamError as err:
        return error_line(err), [], None, [], None, "", None
    return "", result.pictures, result.token_maps, result.attention, result.clip, run_summary(result), result.downloads


def page_rerun(session: Session, source, expressions, caption, *values) -> tuple | None:
    """A toggle: run again once there is something to show (None: leave the page as it is)."""
    if source is None or not (expressions or "").strip():
        return None
    return page_run(session, source, expressions, caption, *values)


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
            return None, session.preview(path), f"video: {path.name}, {frames} frames at {frame_rate(path):.3g} fps"
        return as_image(path), None, ""
    except RefamError as err:
        return None, None, error_line(err)


def build_app(session: Session):
    """The Gradio Blocks of the app (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from refam.aggregators.base import GAS_HANDLING

    default = session.defaults
    scenes = demo_scenes()

    def with_player(outputs: tuple) -> tuple:  # the tracked masks' player shows for a video's run only
        clip = OUTPUTS.index("clip")
        return (*outputs[:clip], gr.update(value=outputs[clip], visible=outputs[clip] is not None), *outputs[clip + 1:])

    def run(*args):
        return with_player(page_run(session, *args))

    def rerun(*args):
        outputs = page_rerun(session, *args)
        return (gr.skip(),) * len(OUTPUTS) if outputs is None else with_player(outputs)

    def preview(source):
        image, clip, line = page_preview(session, source)
        return gr.update(value=image, visible=clip is None), gr.update(value=clip, visible=clip is not None), line

    def pick_scene(event):
        scene = scenes[event.index]
        return scene["image"], scene["caption"], "\n".join(scene["expressions"][:2])

    pick_scene.__annotations__["event"] = gr.SelectData  # how Gradio knows to pass the click

    with gr.Blocks(title="refam", analytics_enabled=False) as app:
        gr.Markdown("## refam: referring segmentation from diffusion-transformer attention\n"
                    "Upload an image or a video (or click a demo scene), type one expression per line, and run. "
                    "The star is the heatmap's argmax, the point that prompts the segmenter.")
        if scenes:
            demos = gr.Gallery([s["image"] for s in scenes], label="demo scenes (click one)",
                               columns=len(scenes), height=150, allow_preview=False, elem_id="refam-demos")
        with gr.Row():
            with gr.Column(scale=1):
                start = session.restored or RestoredRun("", "", None)  # a downloaded run given as the config: its inputs
                source = gr.File(start.input and str(start.input), label="image or video",
                                 type="filepath", elem_id="refam-input", file_types=["image", "video"])
                shown = gr.Image(label="input", interactive=False, height=200, elem_id="refam-preview")
                shown_video = gr.Video(label="input video", interactive=False, height=260, autoplay=True, loop=True,
                                       visible=False, buttons=["download"], elem_id="refam-preview-video")
                expressions = gr.Textbox(start.expressions, label="expressions (one per line)", lines=3,
                                         elem_id="refam-expressions", placeholder="the red circle\nthe square on the left")
                caption = gr.Textbox(start.caption, label="caption (optional: what the denoising stream "
                                     "is conditioned on)", elem_id="refam-caption")
                button = gr.Button("Segment", variant="primary", elem_id="refam-run")
                status = gr.Markdown(start.note, elem_id="refam-status")
                with gr.Accordion("settings", open=True):
                    magnets = gr.Checkbox(default.magnets, label="attention magnets", elem_id="refam-magnets")
                    magnet_words = gr.Textbox(default.magnet_words, label="magnet words", elem_id="refam-magnet-words",
                                              placeholder="configured strategy" if not default.magnet_words else None)
                    stop_words = gr.Checkbox(bool(default.stop_words), label="stop-word filter",
                                             visible=default.stop_words is not None, elem_id="refam-stop-words")
                    gas = gr.Radio(list(GAS_HANDLING), value=default.gas, label="global attention sinks (GAS)",
                                   visible=default.gas is not None, elem_id="refam-gas")
                    last = (session.num_blocks or 1) - 1
                    first_block = gr.Slider(0, max(last, 1), value=default.first_block or 0, step=1, label="first block",
                                            visible=session.num_blocks is not None, elem_id="refam-first-block")
                    last_block = gr.Slider(0, max(last, 1), value=default.last_block if default.last_block is not None else last,
                                           step=1, label="last block", visible=session.num_blocks is not None,
                                           elem_id="refam-last-block")
                    noise = gr.Slider(0.0, 1.0, value=default.noise if default.noise is not None else 0.75, step=0.01,
                                      label="noise level (sigma)", visible=session.observes_one_noise_level,
                                      elem_id="refam-noise")
                    choices = list(SPATIAL_BIASES) + ([AS_CONFIGURED] if default.spatial_bias == AS_CONFIGURED else [])
                    spatial = gr.Radio(choices, value=default.spatial_bias, label="spatial bias (HybridGL priors)",
                                       elem_id="refam-spatial")
            with gr.Column(scale=2):
                summary = gr.Markdown("", elem_id="refam-summary")
                pictures = gr.Gallery(label="mask and point | heatmap", columns=2, height="auto", object_fit="contain",
                                      elem_id="refam-pictures")
                token_maps = gr.Image(label="token maps (grey: dropped, red: sink)", interactive=False,
                                      elem_id="refam-token-maps")
                attention = gr.Gallery(label="text-to-text attention received (red: sink)", columns=2, height="auto",
                                       object_fit="contain", elem_id="refam-attention")
                clip = gr.Video(label="video: tracked masks (the star: each expression's key frame point)",
                                interactive=False, autoplay=True, loop=True, buttons=["download"], visible=False,
                                elem_id="refam-clip")
                downloads = gr.File(label="masks and run.json", file_count="multiple", interactive=False,
                                    elem_id="refam-downloads")
        controls = [magnets, magnet_words, stop_words, gas, first_block, last_block, noise, spatial]
        inputs = [source, expressions, caption, *controls]
        outputs = [status, pictures, token_maps, attention, clip, summary, downloads]
        button.click(run, inputs, outputs, concurrency_limit=1, concurrency_id="model")
        gr.on([magnets.change, stop_words.change, gas.change, spatial.change, magnet_words.submit,
               first_block.release, last_block.release, noise.release],
              rerun, inputs, outputs, trigger_mode="always_last", concurrency_limit=1, concurrency_id="model")
        source.change(preview, [source], [shown, shown_video, status])
        if start.input:  # its preview, as an upload's
            app.load(preview, [source], [shown, shown_video, status])
        if scenes:
            demos.select(pick_scene, None, [source, caption, expressions])
    app.queue(default_concurrency_limit=1)  # one request at a time on the model; the others wait their turn
    return app

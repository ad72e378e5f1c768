"""`refam serve`: see and correct a referring segmentation in the browser.

    refam serve                                   # the embedded refam-shapes pipeline
    refam serve --config configs/refcoco.yaml     # FLUX.1-dev + SAM2, or any config's model section
    refam serve --config run.json                 # a run downloaded from the app, with its settings

A Gradio app on `refam predict`'s inference path (`RefAM.segment`, `refam.apps.predict.write_prediction`):
upload an image (or click a demo scene), type one expression per line and an optional caption, and
see for each expression the mask over the image with the point, the heatmap over the image with a
colour bar, each token's map with kept, dropped and sink tokens marked, and `refam analyze`'s
text-attention chart. The settings a researcher flips (magnets, stop-word filter, GAS handling, block
range, noise level, spatial bias) rebuild only the light components: the weights are loaded once. A
video gives the key frame's maps and the tracked masks as a playable clip. The masks and a JSON of
the run (its `model:` section with the settings applied, points and tokens) are offered for download;
the JSON loads back as a config. Requests are queued: one runs at a time on the model.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import get_type_hints

from refam.errors import (ArgumentParser, ConfigError, RefamError, error_line, forget_built_errors, number,
                          parser_error_line, place, reports_user_errors, user_error)
from refam.sections import model_section

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_MANIFEST = REPO_ROOT / "assets" / "shapes-demo" / "manifest.jsonl"
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
DEMO_SCENES = 10  # how many demo scenes the page offers
SPATIAL_BIASES = {  # the choices the page offers, as config entries
    "none": None,
    "direction": [{"class_path": "refam.aggregators.spatial.DirectionPrior"}],
    "direction + relation": [{"class_path": "refam.aggregators.spatial.DirectionPrior"},
                             {"class_path": "refam.aggregators.spatial.RelationPrior"}],
}
# where the entry of each light component sits, as the config key its errors name
ENTRY_KEYS = {"magnets": "model.magnets", "aggregator": "model.aggregator", "spatial_bias": "model.spatial_bias",
              "trajectory": "model.extractor.init_args.trajectory"}
AS_CONFIGURED = "as configured"
NO_IMAGE = "no image: upload an image or a video, or click a demo scene"


@dataclass
class Settings:
    """What the page's toggles set; None where the loaded pipeline has no such setting."""

    magnets: bool = True  # append the attention magnets
    magnet_words: str = ""  # which (space-separated); the configured strategy while unchanged
    stop_words: bool | None = True  # drop the expression's stop words
    gas: str | None = "report"  # global attention sinks: report, drop or redirect
    first_block: int | None = None  # the blocks whose maps are averaged, first to last
    last_block: int | None = None
    noise: float | None = None  # the noise level sigma of a NoiseAt trajectory (every backbone)
    spatial_bias: str = "none"


@dataclass
class Run:
    """What one request produced: the files `refam predict` writes, plus the page's figures."""

    folder: Path
    record: dict  # the run JSON (also written as folder/run.json)
    predictions: list  # refam.types.Prediction per expression (a video's: on its key frame)
    overlays: list[tuple[str, str]] = field(default_factory=list)  # (picture path, caption) per expression
    heatmaps: list[tuple[str, str]] = field(default_factory=list)
    token_maps: str | None = None  # one figure, a row per expression (`refam analyze`'s token_maps.png)
    attention: list[tuple[str, str]] = field(default_factory=list)  # `refam analyze`'s text_attention.png each
    clips: list[tuple[str, str]] = field(default_factory=list)  # videos: the tracked masks as animated GIFs
    downloads: list[str] = field(default_factory=list)  # masks (PNGs, or a zip of a video's) and run.json
    summary: str = ""  # a Markdown table: point, kept, dropped and sink tokens per expression

    @property
    def pictures(self) -> list[tuple[str, str]]:
        """Per expression, its mask and point, then its heatmap (a two-column gallery's rows)."""
        return [item for pair in zip(self.overlays, self.heatmaps) for item in pair]


def expression_lines(text: str | None) -> list[str]:
    """One expression per line; blank lines are ignored, none at all is the CLI's empty-expression error."""
    from refam.api import expression_texts

    return expression_texts([line.strip() for line in (text or "").splitlines() if line.strip()])


def count_frames(video: Path) -> int:
    import cv2

    capture = cv2.VideoCapture(str(video))
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if count <= 0:  # a container that does not say: count by decoding (frames are dropped at once)
            while capture.grab():
                count += 1
        return count
    finally:
        capture.release()


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


def _spec(section: dict, key: str, default_class: str) -> dict:
    spec = copy.deepcopy(section.get(key) or {"class_path": default_class})
    spec.setdefault("init_args", {})
    return spec


class Session:
    """One loaded pipeline and the page's settings applied to it.

    The settings become a `model:` section (`section_for`), from which only the light components
    are rebuilt (`apply`): magnets, aggregator, spatial bias, and the extractor's block selection
    and noise level. The same section is what the run JSON holds, so it loads back as a config."""

    def __init__(self, model, section: dict, max_frames: int = 150, workdir: Path | None = None) -> None:
        self.model = model
        self.pipeline = model.pipeline
        self.section = copy.deepcopy(section)
        self.max_frames = max_frames
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="refam-serve-"))
        self.lock = threading.Lock()  # the queue runs one request at a time; this covers direct callers
        self._built: dict[tuple[str, str], object] = {}
        self._runs = 0
        pipeline, extractor = self.pipeline, self.pipeline.extractor
        # the loaded components stand for the section's own entries: unchanged settings rebuild nothing
        self._originals = {"magnets": pipeline.magnets, "aggregator": pipeline.aggregator,
                           "spatial_bias": list(pipeline.spatial_bias),
                           "trajectory": getattr(extractor, "trajectory", None),
                           "blocks": getattr(extractor, "blocks", None)}
        for kind, spec in self._specs(self.section).items():
            self._built[(kind, json.dumps(spec, sort_keys=True))] = self._originals[kind]
        self.defaults = self._defaults()

    # ------------------------------------------------------------ settings <-> model section
    @property
    def num_blocks(self) -> int | None:
        return getattr(self.pipeline.extractor, "num_blocks", None)

    @property
    def observes_one_noise_level(self) -> bool:
        """Whether the extractor observes one state, `NoiseAt(sigma)`: then sigma is a setting."""
        from refam.extractors.trajectory import NoiseAt

        return isinstance(self._originals["trajectory"], NoiseAt)

    def _defaults(self) -> Settings:
        from refam.aggregators.magnets import MagnetStrategy

        magnets, aggregator = self._originals["magnets"], self._originals["aggregator"]
        words = list(getattr(magnets, "magnets", []) or [])
        vectors = type(magnets).vectors is not MagnetStrategy.vectors
        first = last = None
        if self.num_blocks is not None:
            from refam.extractors.base import select_blocks

            chosen = sorted(select_blocks(self.num_blocks, self._originals["blocks"]))
            first, last = chosen[0], chosen[-1]
        noise = float(self._originals["trajectory"].sigma) if self.observes_one_noise_level else None
        bias = [type(b).__name__ for b in self._originals["spatial_bias"]]
        named = {"none": [], "direction": ["DirectionPrior"], "direction + relation": ["DirectionPrior", "RelationPrior"]}
        spatial = next((name for name, classes in named.items() if classes == bias), AS_CONFIGURED)
        return Settings(magnets=bool(words) or vectors, magnet_words=" ".join(words),
                        stop_words=getattr(magnets, "filter_stop_words", None), gas=getattr(aggregator, "gas", None),
                        first_block=first, last_block=last, noise=noise, spatial_bias=spatial)

    def section_for(self, settings: Settings) -> dict:
        """The model section with the settings applied; entries left as configured where unchanged."""
        default, section = self.defaults, copy.deepcopy(self.section)
        words = settings.magnet_words.split()
        if (settings.magnets, words, settings.stop_words) != (default.magnets, default.magnet_words.split(), default.stop_words):
            spec = _spec(section, "magnets", "refam.aggregators.magnets.AppendMagnets")
            if not settings.magnets or words != default.magnet_words.split():
                # other words (or none): the paper's strategy, with the configured filters
                carried = {k: v for k, v in spec["init_args"].items() if k in ("filter_stop_words", "stop_words", "noun_phrase")}
                spec = {"class_path": "refam.aggregators.magnets.AppendMagnets",
                        "init_args": {**carried, "magnets": words if settings.magnets else []}}
            if settings.stop_words is not None:
                spec["init_args"]["filter_stop_words"] = bool(settings.stop_words)
            section["magnets"] = spec
        if settings.gas is not None and settings.gas != default.gas:
            spec = _spec(section, "aggregator", "refam.aggregators.base.SoftmaxMeanAggregator")
            spec["init_args"]["gas"] = settings.gas
            section["aggregator"] = spec
        extractor_args = section.setdefault("extractor", {}).setdefault("init_args", {})
        if self.num_blocks is not None and (settings.first_block, settings.last_block) != (default.first_block, default.last_block):
            first, last = int(settings.first_block), int(settings.last_block)
            if first > last:
                raise ConfigError(f"blocks: the first block ({first}) comes after the last ({last})")
            extractor_args["blocks"] = None if (first, last) == (0, self.num_blocks - 1) else list(range(first, last + 1))
        if settings.noise is not None and settings.noise != default.noise and self.observes_one_noise_level:
            trajectory = copy.deepcopy(extractor_args.get("trajectory") or {"class_path": "refam.extractors.trajectory.NoiseAt"})
            trajectory.setdefault("init_args", {})["sigma"] = float(settings.noise)
            extractor_args["trajectory"] = trajectory
        if settings.spatial_bias != default.spatial_bias and settings.spatial_bias != AS_CONFIGURED:
            if settings.spatial_bias not in SPATIAL_BIASES:
                raise ConfigError(f"spatial bias must be one of {list(SPATIAL_BIASES)}, got {settings.spatial_bias!r}")
            section["spatial_bias"] = copy.deepcopy(SPATIAL_BIASES[settings.spatial_bias])
        return section

    @staticmethod
    def _specs(section: dict) -> dict:
        """The section's entries for the light components (None where it names none)."""
        extractor_args = (section.get("extractor") or {}).get("init_args") or {}
        return {"magnets": section.get("magnets"), "aggregator": section.get("aggregator"),
                "spatial_bias": section.get("spatial_bias"), "trajectory": extractor_args.get("trajectory"),
                "blocks": extractor_args.get("blocks")}

    def _build(self, kind: str, spec):
        """A light component from its config entry, as `refam test` would build it (cached); its
        errors name the entry's key in the `model:` section, as `refam test`'s do."""
        key = (kind, json.dumps(spec, sort_keys=True))
        if key in self._built:
            return self._built[key]
        if kind == "blocks":
            value = spec
        else:
            from jsonargparse import ArgumentParser

            from refam.components import INSTANTIATORS  # entries name components by class name; errors their key
            from refam.extractors.trajectory import Trajectory
            from refam.pipeline import RefAMPipeline

            # the types `refam test` reads these entries as; the trajectory is the extractor's argument
            types = {**get_type_hints(RefAMPipeline.__init__), "trajectory": Trajectory | None}
            entry = ENTRY_KEYS[kind]
            parser = ArgumentParser(exit_on_error=False)
            parser.add_argument(f"--{entry}", type=types[kind], default=None)
            document = copy.deepcopy(spec)  # (the parser would convert the section in place)
            for name in reversed(entry.split(".")):
                document = {name: document}
            try:
                parsed = parser.parse_object(document)
            except Exception as err:  # a key or value the parser rejects: its one useful line
                raise ConfigError(parser_error_line(str(err))) from err
            forget_built_errors()
            try:
                value = parser.instantiate(parsed, instantiators=INSTANTIATORS)[entry]
            except Exception as err:
                found = user_error(err)
                if found is None or found.field is None:
                    reason = found or next((line.strip() for line in str(err).splitlines() if line.strip()),
                                           type(err).__name__)
                    raise ConfigError(f"{entry}: {reason}") from err
                place(found, {"model": RefAMPipeline}, parsed.as_dict())  # the component's own error, at its key
                raise found from found.__cause__
        self._built[key] = value
        return value

    def apply(self, section: dict) -> None:
        """Set the light components the section names on the loaded pipeline (no weights reloaded)."""
        from refam.extractors.base import select_blocks

        pipeline, extractor = self.pipeline, self.pipeline.extractor
        specs = self._specs(section)
        built = {kind: self._build(kind, spec) for kind, spec in specs.items()}
        if self.num_blocks is not None:
            select_blocks(self.num_blocks, built["blocks"])  # a bad selection is a ConfigError now, not mid-run
        pipeline.set_aggregation(built["magnets"], built["aggregator"], built["spatial_bias"])
        if hasattr(extractor, "blocks"):
            extractor.blocks = built["blocks"]
        if self._originals["trajectory"] is not None:
            extractor.trajectory = built["trajectory"] or self._originals["trajectory"]

    # ------------------------------------------------------------ running
    def _folder(self) -> Path:
        self._runs += 1
        folder = self.workdir / f"run-{self._runs:05d}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        # keep the last few runs (the page links their files), drop older ones
        for old in sorted(self.workdir.glob("run-*"))[:-8]:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def run(self, source: str | Path | None, expressions: str | None, caption: str = "",
            settings: Settings | None = None) -> Run:
        """Segment an image or a video by the expressions (one per line). Raises a RefamError with
        the CLI's one-line message for bad input."""
        from refam.apps.predict import check_expressions

        settings = settings or self.defaults
        if source is None or not str(source).strip():
            raise ConfigError(NO_IMAGE)
        source = Path(source)
        texts = expression_lines(expressions)
        with self.lock:
            section = self.section_for(settings)
            self.apply(section)
            check_expressions(self.model, texts)
            if source.suffix.lower() in VIDEO_SUFFIXES:
                return self._run_video(source, texts, caption or "", settings, section)
            return self._run_image(source, texts, caption or "", settings, section)

    def _figures(self, run: Run, folder: Path, image, texts: list[str], captions: list[str]) -> None:
        """`refam analyze`'s token maps (a row per expression, kept / dropped / sink marked) and its
        text-attention chart per expression, for the predictions that carry token maps."""
        from refam.apps.analyze import text_attention_figure, text_attention_rows, token_maps_figure
        from refam.io.names import slug
        from refam.io.files import write_atomic

        rows = {}
        factor = getattr(self.pipeline.aggregator, "gas_factor", 10.0)
        for k, (text, caption, prediction) in enumerate(zip(texts, captions, run.predictions)):
            if prediction.token_maps is None or not prediction.tokens:
                continue
            rows[f"{k}: {text[:24]}"] = prediction
            chart = folder / f"{k}-{slug(text)}_text_attention.png"
            write_atomic(chart, text_attention_figure(text_attention_rows(prediction, factor), factor))
            run.attention.append((str(chart), caption))
        if rows:
            run.token_maps = str(folder / "token_maps.png")
            write_atomic(Path(run.token_maps), token_maps_figure(image, rows))

    def _run_image(self, source: Path, texts: list[str], caption: str, settings: Settings, section: dict) -> Run:
        from refam.api import as_image
        from refam.apps.predict import write_prediction

        if self.pipeline.reads_video:
            raise ConfigError("this pipeline segments videos (its segmenter tracks through frames): upload a video")
        image = as_image(source)
        started = time.perf_counter()
        predictions = self.model.segment(image, texts, caption=caption)
        seconds = time.perf_counter() - started
        folder = self._folder()
        entries, run = [], Run(folder, {}, predictions)
        for index, (text, prediction) in enumerate(zip(texts, predictions)):
            written = write_prediction(folder, index, text, image, prediction)  # refam predict's files
            entries.append({**written.record, "tokens": prediction.tokens})
            run.overlays.append((str(written.paths["overlay"]), f"{text}: mask and point"))
            run.heatmaps.append((str(written.paths["heatmap"]), f"{text}: heatmap"))
            run.downloads.append(str(written.paths["mask"]))
        self._figures(run, folder, image, texts, texts)
        run.record = self._record(source.name, caption, settings, section, entries)
        run.downloads.append(self._write_record(folder, run.record))
        run.summary = summary_table(entries) + f"\n\n{len(texts)} expression(s) in {seconds:.2f} s"
        return run

    def _run_video(self, source: Path, texts: list[str], caption: str, settings: Settings, section: dict) -> Run:
        from refam.apps.predict import write_video_predictions
        from refam.visualize import prediction_pictures
        from refam.io.files import save_png

        if not source.exists():
            from refam.errors import MissingInputError

            raise MissingInputError(f"--video {source}: no such file or folder")
        frames = count_frames(source)
        if frames > self.max_frames:
            raise ConfigError(f"--video {source.name}: {frames} frames, more than the {self.max_frames} this app "
                              "takes (refam serve --max-frames); cut the clip or run `refam predict --video`")
        folder = self._folder()
        started = time.perf_counter()
        written = write_video_predictions(self.model, source, texts, caption, folder)
        seconds = time.perf_counter() - started
        count, video_folder = written.frames, written.folder
        run = Run(folder, {}, [prediction for _, prediction in written.key_frames])
        entries, captions = [], []
        for text, entry, (frame, prediction) in zip(texts, written.expressions, written.key_frames):
            stem = entry.paths["record"].stem
            captions.append(f"{text} (key frame {prediction.frame or 0})")
            pictures = prediction_pictures(frame, prediction)
            for kind, pictured in (("overlay", run.overlays), ("heatmap", run.heatmaps)):
                path = video_folder / f"{stem}_key_{kind}.png"
                save_png(pictures[kind], path)
                pictured.append((str(path), f"{captions[-1]}: {'mask and point' if kind == 'overlay' else kind}"))
            run.clips.append((str(entry.paths["overlay"]), text))
            entries.append({**entry.record, "point": [round(v, 2) for v in prediction.point], "tokens": prediction.tokens,
                            "sinks": [{"token": t, "category": c} for t, c in zip(prediction.sinks, prediction.sink_categories)]})
        self._figures(run, video_folder, written.key_frames[0][0], texts, captions)
        masks = folder / f"{video_folder.name}-masks.zip"  # <k>-<expression>/<frame>.png, as refam predict writes them
        with zipfile.ZipFile(masks, "w", zipfile.ZIP_DEFLATED) as bundle:
            for entry in written.expressions:
                for path in sorted(entry.paths["masks"].glob("*.png")):
                    bundle.write(path, path.relative_to(video_folder).as_posix())
        run.downloads.append(str(masks))
        run.record = self._record(source.name, caption, settings, section, entries, frames=count)
        run.downloads.append(self._write_record(folder, run.record))
        run.summary = summary_table(entries) + f"\n\n{len(texts)} expression(s) x {count} frame(s) in {seconds:.2f} s"
        return run

    def _record(self, name: str, caption: str, settings: Settings, section: dict, entries: list[dict], **extra) -> dict:
        return {"model": section,
                "run": {"input": name, "caption": caption, "settings": asdict(settings), **extra, "expressions": entries}}

    @staticmethod
    def _write_record(folder: Path, record: dict) -> str:
        from refam.io.files import save_json

        path = folder / "run.json"
        save_json(record, path)
        return str(path)


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


# ---------------------------------------------------------------------------------- the page
CONTROLS = ("magnets", "magnet_words", "stop_words", "gas", "first_block", "last_block", "noise", "spatial_bias")


def settings_from_values(session: Session, values: list) -> Settings:
    """The page's control values (in CONTROLS order) as Settings; a control the pipeline lacks is
    hidden and sends a placeholder, so its setting stays None."""
    given, default = dict(zip(CONTROLS, values)), asdict(session.defaults)
    cast = {"magnets": bool, "magnet_words": str, "stop_words": bool, "gas": str, "first_block": int, "last_block": int,
            "noise": float, "spatial_bias": str}
    return Settings(**{name: None if default[name] is None or given.get(name) is None else cast[name](given[name])
                       for name in CONTROLS})


OUTPUTS = ("status", "pictures", "token_maps", "attention", "clips", "summary", "downloads")


def page_run(session: Session, source, expressions, caption, *values) -> tuple:
    """The Segment button: the page's outputs (OUTPUTS order); bad input gives the CLI's one-line
    error in the status line and clears the previous results, and the app goes on serving."""
    try:
        result = session.run(source, expressions, caption, settings_from_values(session, list(values)))
    except RefamError as err:
        return error_line(err), [], None, [], [], "", None
    return "", result.pictures, result.token_maps, result.attention, result.clips, result.summary, result.downloads


def page_rerun(session: Session, source, expressions, caption, *values) -> tuple | None:
    """A toggle: run again once there is something to show (None: leave the page as it is)."""
    if source is None or not (expressions or "").strip():
        return None
    return page_run(session, source, expressions, caption, *values)


def page_preview(source) -> tuple:
    """The chosen file: the image it holds (or a line about the video), or the error reading it."""
    from refam.api import as_image

    if source is None:
        return None, ""
    path = Path(source)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return None, f"video: {path.name}, {count_frames(path)} frames"
    try:
        return as_image(path), ""
    except RefamError as err:
        return None, error_line(err)


def build_app(session: Session):
    """The Gradio Blocks of the app (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from refam.aggregators.base import GAS_HANDLING

    default = session.defaults
    scenes = demo_scenes()

    def run(*args):
        return page_run(session, *args)

    def rerun(*args):
        outputs = page_rerun(session, *args)
        return (gr.skip(),) * len(OUTPUTS) if outputs is None else outputs

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
                source = gr.File(label="image or video", type="filepath", elem_id="refam-input",
                                 file_types=["image", "video"])
                shown = gr.Image(label="input", interactive=False, height=200, elem_id="refam-preview")
                expressions = gr.Textbox(label="expressions (one per line)", lines=3, elem_id="refam-expressions",
                                         placeholder="the red circle\nthe square on the left")
                caption = gr.Textbox(label="caption (optional: what the denoising stream is conditioned on)",
                                     elem_id="refam-caption")
                button = gr.Button("Segment", variant="primary", elem_id="refam-run")
                status = gr.Markdown("", elem_id="refam-status")
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
                clips = gr.Gallery(label="video: tracked masks", columns=2, height="auto", object_fit="contain",
                                   elem_id="refam-clips")
                downloads = gr.File(label="masks and run.json", file_count="multiple", interactive=False,
                                    elem_id="refam-downloads")
        controls = [magnets, magnet_words, stop_words, gas, first_block, last_block, noise, spatial]
        inputs = [source, expressions, caption, *controls]
        outputs = [status, pictures, token_maps, attention, clips, summary, downloads]
        button.click(run, inputs, outputs, concurrency_limit=1, concurrency_id="model")
        gr.on([magnets.change, stop_words.change, gas.change, spatial.change, magnet_words.submit,
               first_block.release, last_block.release, noise.release],
              rerun, inputs, outputs, trigger_mode="always_last", concurrency_limit=1, concurrency_id="model")
        source.change(page_preview, [source], [shown, status])
        if scenes:
            demos.select(pick_scene, None, [source, caption, expressions])
    app.queue(default_concurrency_limit=1)  # one request at a time on the model; the others wait their turn
    return app


def check_port(host: str, port: int) -> None:
    """The address can be listened on: refused now, in one line, rather than after the model loads."""
    import socket

    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise ConfigError(f"--host {host}: not an address ({getattr(err, 'strerror', None) or err}); "
                          "give this machine's name or address, e.g. 127.0.0.1 or 0.0.0.0") from err
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: a closed run's port is free
        try:
            probe.bind(address)
        except OSError as err:
            raise ConfigError(f"cannot serve on {host}:{port}: {err.strerror or err}; "
                              "choose another --port (or --host)") from err


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    from refam.api import add_model_arguments

    parser = ArgumentParser(prog="refam serve", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=number(int, at_least=1, at_most=65535), default=7860)
    parser.add_argument("--max-frames", type=number(int, at_least=1), default=150,
                        help="longest video the app takes, in frames")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    if importlib.util.find_spec("gradio") is None:  # an extra; checked before the model loads
        raise ConfigError("refam serve needs gradio: pip install 'refam[serve]'")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry, no version check
    check_port(args.host, args.port)
    from refam.api import RefAM

    source = args.config or args.model
    model = RefAM.load(source, device=args.device)
    section = model_section(source)
    workdir = Path(tempfile.mkdtemp(prefix="refam-serve-"))
    app = None
    try:  # the working folder goes on every way out: a failed start, Ctrl+C, a stop by kill
        session = Session(model, section, max_frames=args.max_frames, workdir=workdir)
        app = build_app(session)
        allowed = [str(DEMO_MANIFEST.parent)] if DEMO_MANIFEST.exists() else []
        try:
            app.launch(server_name=args.host, server_port=args.port, share=False, quiet=True,
                       prevent_thread_lock=True, show_error=False, ssr_mode=False, allowed_paths=allowed,
                       footer_links=["api"])
        except OSError as err:  # taken since the check above
            raise ConfigError(f"cannot serve on {args.host}:{args.port}: {err}; choose another --port or --host") from err
        print(f"refam serve: {app.local_url} (Ctrl+C stops)", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a stop by kill also cleans up below
        try:
            app.block_thread()
        except KeyboardInterrupt:
            pass
    finally:
        try:
            if app is not None:
                app.close()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

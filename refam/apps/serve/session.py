"""A serve session: one loaded pipeline, the page's settings passed to it per request (as the
pipeline's per-call `refam.settings.Settings`), and each request's run: its folder (the files `refam
predict` writes), its predictions with the pictures they are over, and the record of the run (its
`model:` section with the settings applied, which loads back as a config).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path

from refam.apps.serve.clips import count_frames, is_video, masks_clip, preview_clip
from refam.apps.serve.restore import RestoredRun
from refam.apps.serve.settings import LightComponents, Settings
from refam.errors import ConfigError
from refam.settings import Settings as CallSettings

NO_IMAGE = "no image: upload an image or a video, or click a demo scene"


@dataclass
class Run:
    """What one request produced: the predictions, the files `refam predict` writes, the page's pictures."""

    folder: Path
    record: dict  # the run JSON (also written as folder/run.json)
    predictions: list  # refam.types.Prediction per expression (a video's: on its key frame)
    backdrops: list = field(default_factory=list)  # per expression the picture its maps are over (a video's key frame)
    overlays: list[tuple[str, str]] = field(default_factory=list)  # (picture path, caption) per expression
    heatmaps: list[tuple[str, str]] = field(default_factory=list)
    clip: str | None = None  # a video's tracked masks as a clip the browser plays (WebM), a tile per expression
    downloads: list[str] = field(default_factory=list)  # masks (PNGs, or a zip of a video's) and run.json
    seconds: float = 0.0  # how long the model took
    frames: int | None = None  # a video's frame count

    @property
    def pictures(self) -> list[tuple[str, str]]:
        """Per expression, its mask and point, then its heatmap (a two-column gallery's rows)."""
        return [item for pair in zip(self.overlays, self.heatmaps) for item in pair]

    @property
    def expressions(self) -> list[dict]:
        """The record's entry per expression: point, tokens kept, dropped and sinks, warnings."""
        return self.record["run"]["expressions"]

def expression_lines(text: str | None) -> list[str]:
    """One expression per line; blank lines are ignored, none at all is the CLI's empty-expression error."""
    from refam.api import expression_texts

    return expression_texts([line.strip() for line in (text or "").splitlines() if line.strip()])


class Session:
    """One loaded pipeline and the page's settings, passed per request without changing it.

    The settings become a `model:` section (`section_for`), from which only the light components
    are rebuilt (`apply`): magnets, aggregator, spatial bias, and the extractor's block selection
    and noise level. They make the request's `refam.settings.Settings`, passed to the loaded
    pipeline for that call; nothing loaded is changed or copied. The same section is what the run
    JSON holds, so it loads back as a config."""

    def __init__(self, model, section: dict, max_frames: int = 150, workdir: Path | None = None,
                 restored: RestoredRun | None = None) -> None:
        self.model = model  # as loaded: never changed
        self.settings: CallSettings = model.settings  # the latest request's (the loaded ones until then)
        self.light = LightComponents(model.pipeline, section)
        self.section = self.light.section
        self.defaults = self.light.defaults
        self.max_frames = max_frames
        self.restored = restored  # the inputs of a run given as the config, which the page starts with
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="refam-serve-"))
        self.lock = threading.Lock()  # the queue runs one request at a time; this covers direct callers
        self._runs = self._previews = 0

    @cached_property
    def cards(self) -> list:
        """`refam.card.ModelCard`s: the loaded model's, then the one videos run on where it is another
        (the embedded default's refam-shapes-video, read without loading it)."""
        return [card for card in (self.model.card, self.model.video_card) if card is not None]

    @property
    def card(self) -> dict:
        """What is loaded, as data (`ModelCard.to_dict()`), with `video_model`: the card of the model
        videos run on where it is another."""
        first, *video = self.cards
        return first.to_dict() | ({"video_model": video[0].to_dict()} if video else {})

    @property
    def card_markdown(self) -> str:
        """The cards as a few lines of Markdown each (`ModelCard.markdown`), the video model's after."""
        return "\n\n".join(card.markdown() for card in self.cards)

    @property
    def num_blocks(self) -> int | None:
        return self.light.num_blocks

    @property
    def observes_one_noise_level(self) -> bool:
        return self.light.observes_one_noise_level

    def section_for(self, settings: Settings) -> dict:
        """The model section with the settings applied; entries left as configured where unchanged."""
        return self.light.section_for(settings)

    def apply(self, section: dict) -> CallSettings:
        """The settings of a call the section describes: the loaded pipeline's, with the light
        components the section names; the block selection and trajectory only where they are not
        the extractor's own (then passed to it per call). Nothing loaded is changed."""
        built = self.light.build(section)
        overrides = {name: built[name] for name in ("blocks", "trajectory") if built[name] is not self.light.originals[name]}
        if "blocks" in overrides and overrides["blocks"] is None:  # every block, where the extractor's own
            overrides["blocks"] = list(range(self.num_blocks))    # are fewer (a call's None is its own)
        return replace(self.model.settings, magnets=built["magnets"], aggregator=built["aggregator"],
                       spatial_bias=built["spatial_bias"], **overrides)

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
            settings: Settings | None = None, points=None) -> Run:
        """Segment an image or a video by the expressions (one per line). `points`: a user's
        corrections, as `RefAM.segment` takes them (a video's on each expression's key frame); each
        expression's entry in run.json lists the points that made its mask ("points": x, y, label,
        source "model" or "user"). Raises a RefamError with the CLI's one-line message for bad input."""
        from refam.apps.predict import check_expressions

        settings = settings or self.defaults
        if source is None or not str(source).strip():
            raise ConfigError(NO_IMAGE)
        source = Path(source)
        texts = expression_lines(expressions)
        with self.lock:
            call = self.apply(self.section_for(settings))
            video = is_video(source)  # an animated GIF too: its frames
            model = self.model.for_video() if video else self.model
            if model is not self.model:  # the embedded default's video pipeline: its own settings
                call = model.settings
            self.settings = call
            check_expressions(model, texts, call)
            if video:
                return self._run_video(model, call, source, texts, caption or "", settings, points)
            return self._run_image(call, source, texts, caption or "", settings, points)

    def _run_image(self, call: CallSettings, source: Path, texts: list[str], caption: str, settings: Settings,
                   points=None) -> Run:
        from refam.api import as_image
        from refam.apps.predict import write_prediction

        if self.model.pipeline.reads_video:
            raise ConfigError("this pipeline segments videos (its segmenter tracks through frames): upload a video")
        image = as_image(source)
        started = time.perf_counter()
        predictions = self.model.segment(image, texts, caption=caption, settings=call, points=points)
        seconds = time.perf_counter() - started
        folder = self._folder()
        entries, run = [], Run(folder, {}, predictions)
        for index, (text, prediction) in enumerate(zip(texts, predictions)):
            written = write_prediction(folder, index, text, image, prediction)  # refam predict's files
            entries.append({**written.record, "tokens": prediction.tokens})
            run.overlays.append((str(written.paths["overlay"]), f"{text}: mask and point"))
            run.heatmaps.append((str(written.paths["heatmap"]), f"{text}: heatmap"))
            run.downloads.append(str(written.paths["mask"]))
            run.backdrops.append(image)
        run.record = self._record(source.name, caption, settings, call, entries)
        run.downloads += [self._keep_input(folder, source), self._write_record(folder, run.record)]
        run.seconds = seconds
        return run

    def _run_video(self, model, call: CallSettings, source: Path, texts: list[str], caption: str,
                   settings: Settings, points=None) -> Run:
        """`model`: the loaded one, or the embedded video pipeline when the loaded one is the embedded
        image default (`RefAM.for_video`)."""
        from refam.apps.predict import write_video_predictions
        from refam.visualize import prediction_pictures
        from refam.io.files import save_png

        if not source.exists():
            from refam.errors import MissingInputError

            raise MissingInputError(f"{source.name} is no longer on the server: upload it again")
        frames = count_frames(source)
        if frames > self.max_frames:
            raise ConfigError(f"{source.name} has {frames} frames, more than the {self.max_frames} this server takes: "
                              "cut the clip")
        folder = self._folder()
        started = time.perf_counter()
        written = write_video_predictions(model, source, texts, caption, folder, settings=call, points=points)
        seconds = time.perf_counter() - started
        count, video_folder = written.frames, written.folder
        run = Run(folder, {}, [prediction for _, prediction in written.key_frames], frames=count)
        entries, captions = [], []
        for text, entry, (frame, prediction) in zip(texts, written.expressions, written.key_frames):
            stem = entry.paths["record"].stem
            captions.append(f"{text} (key frame {prediction.frame or 0})")
            pictures = prediction_pictures(frame, prediction)
            for kind, pictured in (("overlay", run.overlays), ("heatmap", run.heatmaps)):
                path = video_folder / f"{stem}_key_{kind}.png"
                save_png(pictures[kind], path)
                pictured.append((str(path), f"{captions[-1]}: {'mask and point' if kind == 'overlay' else kind}"))
            run.backdrops.append(frame)
            entries.append({**entry.record, "point": [round(v, 2) for v in prediction.point], "tokens": prediction.tokens,
                            "sinks": [{"token": t, "category": c} for t, c in zip(prediction.sinks, prediction.sink_categories)]})
        run.clip = str(masks_clip(source, [entry.paths["masks"] for entry in written.expressions],
                                  [f"{k}: {text}" for k, text in enumerate(texts)],
                                  [(p.frame or 0, p.point) for p in run.predictions], folder / "tracked-masks.webm"))
        masks = folder / f"{video_folder.name}-masks.zip"  # <k>-<expression>/<frame>.png, as refam predict writes them
        with zipfile.ZipFile(masks, "w", zipfile.ZIP_DEFLATED) as bundle:
            for entry in written.expressions:
                for path in sorted(entry.paths["masks"].glob("*.png")):
                    bundle.write(path, path.relative_to(video_folder).as_posix())
        run.downloads += [str(masks), run.clip]
        run.record = self._record(source.name, caption, settings, call, entries, frames=count, model=model)
        run.downloads += [self._keep_input(folder, source), self._write_record(folder, run.record)]
        run.seconds = seconds
        return run

    def _record(self, name: str, caption: str, settings: Settings, call: CallSettings, entries: list[dict],
                model=None, **extra) -> dict:
        """The run JSON: the request's `model:` section read from its components' records and the
        call's settings (it loads back as a config), the input, the page's settings and every
        expression's result."""
        return {"model": (model or self.model).pipeline.model_section(call),
                "run": {"input": name, "caption": caption, "settings": asdict(settings), **extra, "expressions": entries}}

    @staticmethod
    def _keep_input(folder: Path, source: Path) -> str:
        """A copy of the input among the downloads, under the name the record gives it (`run.input`):
        saved beside run.json, it is what `refam serve --config run.json` opens again."""
        kept = folder / "input" / source.name  # a folder of its own: no output file has its name
        kept.parent.mkdir()
        shutil.copyfile(source, kept)
        return str(kept)

    def preview(self, source: Path) -> str:
        """The uploaded video as a clip the page plays (its first `max_frames` frames)."""
        self._previews += 1
        folder = self.workdir / "previews"
        for old in sorted(folder.glob("*.webm"))[:-4]:  # the page has taken the older ones into its cache
            old.unlink(missing_ok=True)
        return str(preview_clip(source, folder / f"{self._previews:05d}-{source.stem}.webm", self.max_frames))

    @staticmethod
    def _write_record(folder: Path, record: dict) -> str:
        from refam.io.files import save_json

        path = folder / "run.json"
        save_json(record, path)
        return str(path)


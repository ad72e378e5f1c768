"""The Python API: load a REFAM pipeline, segment an image by referring expressions.

    from refam import RefAM
    model = RefAM.load()                                  # the embedded refam-shapes model
    results = model.segment("scene.png", ["the red circle", "the square"])
    results[0].mask, results[0].point, results[0].heatmap, results[0].token_maps
    results[0].warnings                                   # what the answer cannot rest on (unknown words, ...)
    print(model.card.markdown())                          # what is loaded: backbone, weights, training, words
    model.segment("scene.png", "the red circle", points=[(40, 52, 0), (120, 80, 1)])   # "not this", "this"
    no_magnets = dataclasses.replace(model.settings, magnets=AppendMagnets([]))   # one call's settings
    model.segment("scene.png", ["the red circle"], settings=no_magnets)           # (refam.settings)

`RefAM.load` takes nothing (the embedded default), a config YAML (its `model:` section, exactly as
`refam test` reads it) or a diffusers FLUX folder (`refam.sections`). `RefAM.pipeline` is the `RefAMPipeline` that
`refam test` runs per sample.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from refam.card import ModelCard, model_card
from refam.io.images import check_size, read_rgb, to_rgb
from refam.embedded import DEFAULT_CONFIG, DEFAULT_VIDEO_CONFIG  # shipped in the package: work from any folder
from refam.errors import ConfigError, DataError, MissingInputError, RefamError, place, require_words
from refam.sections import build_pipeline, model_section
from refam.pipeline import RefAMPipeline
from refam.prompts.corrections import by_index
from refam.settings import Settings
from refam.types import Expression, Prediction, Sample, VideoExpression, VideoSample

SECTIONS = {"model": RefAMPipeline}  # a config's sections that RefAM.load reads


def expression_texts(expressions: str | list[str]) -> list[str]:
    """The expressions as a list of texts, checked as every front door checks them (`ExpressionError`)."""
    from refam.errors import ExpressionError

    texts = [expressions] if isinstance(expressions, str) else expressions
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise ExpressionError(f"expressions must be a string or a list of strings, got {expressions!r}")
    for text in texts or [""]:  # none at all is an empty one
        require_words(text)
    return list(texts)


def add_model_arguments(parser) -> None:
    """--config / --model / --device, as `refam predict` and `refam analyze` take them (see RefAM.load)."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, default=None, help="a config YAML; its model section is used")
    source.add_argument("--model", type=Path, default=None,
                        help="a diffusers FLUX folder (run with the flood fill); default: the embedded refam-shapes")
    parser.add_argument("--device", default="cpu")


def as_image(image: Image.Image | np.ndarray | str | Path) -> Image.Image:
    """A PIL RGB image from a PIL image, an HxWx3 uint8 array or a file path."""
    if isinstance(image, Image.Image):
        check_size(image, "the image given")
        return to_rgb(image, "the image given")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(f"an image array must be HxWx3 uint8, got {image.shape} {image.dtype}")
        return Image.fromarray(image)
    if not isinstance(image, (str, Path)):
        raise DataError(f"an image is a PIL image, an HxWx3 uint8 array or a file path, got {type(image).__name__}")
    image_or_reason = read_rgb(image)
    if isinstance(image_or_reason, str):  # the reader's one-line reason, as datasets report it
        raise (DataError if Path(image).exists() else MissingInputError)(image_or_reason)
    return image_or_reason


class RefAM:
    """A loaded REFAM pipeline (extractor, magnets, aggregator, segmenter) on one device."""

    def __init__(self, pipeline: RefAMPipeline, device: str | torch.device = "cpu", configured: bool = False) -> None:
        """`configured`: the pipeline was built from a config's `model:` section, so an error while
        loading its weights names the config key."""
        self.pipeline = pipeline
        self.embedded = False  # the embedded image default (`load()`): videos then run the embedded video pipeline
        self._video: RefAM | None = None
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ConfigError(f"--device {device}: not a device ({err}); give cpu, cuda or cuda:N") from err
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: this machine has no CUDA device torch can use; give cpu")
        if self.device.type == "cuda" and self.device.index is not None and self.device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s); give one of "
                              f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        try:
            pipeline.setup(self.device)
        except RefamError as err:
            raise place(err, SECTIONS) if configured else err

    @classmethod
    def load(cls, source: str | Path | None = None, device: str | torch.device = "cpu", segmenter=None) -> "RefAM":
        """`source`: None (the embedded refam-shapes demo pipeline), a config YAML, or a diffusers
        FLUX folder (run with `segmenter`, default the weightless flood fill)."""
        pipeline = build_pipeline(model_section(source), origin=str(source or DEFAULT_CONFIG))
        if segmenter is not None:
            pipeline.segmenter = segmenter
        model = cls(pipeline, device, configured=segmenter is None)
        model.embedded = source is None and segmenter is None
        return model

    @classmethod
    def load_video(cls, device: str | torch.device = "cpu") -> "RefAM":
        """The embedded video pipeline (refam-shapes-video, the key frame's point, the weightless
        tracker): what a video runs on when no config is given."""
        return cls(build_pipeline(model_section(DEFAULT_VIDEO_CONFIG), origin=str(DEFAULT_VIDEO_CONFIG)), device,
                   configured=True)

    def for_video(self) -> "RefAM":
        """The model a video runs on: this one when it reads videos or was given by a config or a
        folder (an image model then segments each frame alone); the embedded video pipeline when
        this is the embedded image default (`RefAM.load()`), loaded once on this device."""
        if self.pipeline.reads_video or not self.embedded:
            return self
        if self._video is None:
            self._video = RefAM.load_video(self.device)
        return self._video

    @property
    def card(self) -> ModelCard:
        """What is loaded (`refam.card.ModelCard`: name, backbone, weights, training, grounding, and
        for the embedded models their colours, shapes and words); `.to_dict()`, `.markdown()`."""
        return model_card(self.pipeline)

    @property
    def video_card(self) -> ModelCard | None:
        """The card of the model videos run on when it is another (`for_video`: the embedded video
        model, for the embedded default), read without loading it; None when videos run on this one."""
        if self.pipeline.reads_video or not self.embedded:
            return None
        if self._video is not None:
            return self._video.card
        return model_card(build_pipeline(model_section(DEFAULT_VIDEO_CONFIG), origin=str(DEFAULT_VIDEO_CONFIG)))

    @property
    def settings(self) -> Settings:
        """The default settings of a call (`refam.settings.Settings`); `dataclasses.replace` them
        and pass them to `segment` to change one call."""
        return self.pipeline.settings

    def with_settings(self, **changes) -> "RefAM":
        """This model with other default settings (see `RefAMPipeline.with_settings`), on the same loaded weights."""
        other = copy.copy(self)
        other.pipeline = self.pipeline.with_settings(**changes)
        return other

    @torch.no_grad()
    def segment_video(self, frames: str | Path | list[str | Path], expressions: str | list[str], caption: str = "",
                      settings: Settings | None = None, points=None) -> list[tuple[Prediction, list[np.ndarray]]]:
        """Per expression, in order: its prediction on the key frame (`frame`, `point`, `mask`, the
        tokens) and its mask on every frame. `frames`: a folder of frame images (sorted by name) or
        their paths in order. Runs `for_video()`: the embedded video pipeline when this model is
        the embedded default; a model without a video path raises ConfigError (`refam predict
        --video` segments each frame alone with it). Masks are kept for every frame: for long
        videos use `for_video().pipeline.segment_video` with an `on_mask` that streams them. `points`:
        a user's points on each expression's key frame (`Prediction.frame`), as `segment` takes them."""
        from refam.errors import ExpressionError
        from refam.io.frames import frame_files

        model = self.for_video()
        if not model.pipeline.reads_video:
            raise ConfigError("this model reads images only: give a video config (e.g. configs/davis.yaml), or use "
                              "RefAM.load() for the embedded video pipeline")
        paths = [str(p) for p in (frame_files(Path(frames)) if isinstance(frames, (str, Path)) else frames)]
        texts = expression_texts(expressions)
        masks: list[dict[int, np.ndarray]] = [{} for _ in texts]

        def keep(expression: VideoExpression, index: int, mask: np.ndarray) -> None:
            masks[int(expression.expression_id)][index] = mask

        video = VideoSample("video", paths, [VideoExpression(text, str(i)) for i, text in enumerate(texts)], caption=caption)
        result = model.pipeline.segment_video(video, on_mask=keep, keep_token_maps=True, settings=settings,
                                              points=by_index(points, len(texts), *video.frame(0).size))
        if result.skipped:
            raise ExpressionError("; ".join(result.skipped))
        by_id = {p.expression_id: p for p in result.predictions}
        return [(by_id[str(i)], [masks[i][t] for t in range(len(paths))]) for i in range(len(texts))]

    @torch.no_grad()
    def segment(self, image: Image.Image | np.ndarray | str | Path, expressions: str | list[str],
                caption: str = "", settings: Settings | None = None, points=None) -> list[Prediction]:
        """One prediction per expression, in order: mask [H, W] bool, point (x, y), the points that
        made the mask, heatmap on the token grid, the tokens kept and dropped, global attention
        sinks, and per-token maps. `settings`: this call's (`refam.settings.Settings`), default the
        model's own.

        `points` corrects the masks: (x, y, label) tuples or `refam.types.Point`s in the image's
        pixels, label 1 "this" (add) and 0 "not this" (remove), as a flat list for one expression or
        one list per expression (empty for none); the segmenter is re-prompted with the model's
        point and these (`refam.prompts.corrections`: a negative point on the model's mask drops
        the model's point). Without points every mask is exactly the uncorrected one.

        Raises `ExpressionError` naming the expression for one that cannot run (empty, too long),
        and `ConfigError` naming the argument for points that are malformed, outside the image or
        given to a segmenter that cannot take them."""
        from refam.errors import ExpressionError

        texts = expression_texts(expressions)
        picture = as_image(image)
        given = by_index(points, len(texts), *picture.size)
        sample = Sample("image", picture, [Expression(text, str(i)) for i, text in enumerate(texts)], caption=caption)
        result = self.pipeline.segment_sample(sample, keep_token_maps=True, settings=settings, points=given)
        if result.skipped:
            raise ExpressionError("; ".join(result.skipped))
        by_id = {p.expression_id: p for p in result.predictions}
        return [by_id[str(i)] for i in range(len(texts))]

"""The Python API: load a REFAM pipeline, segment an image by referring expressions.

    from refam import RefAM
    model = RefAM.load()                                  # the embedded refam-shapes model
    results = model.segment("scene.png", ["the red circle", "the square"])
    results[0].mask, results[0].point, results[0].heatmap, results[0].token_maps

`RefAM.load` takes nothing (the embedded default), a config YAML (its `model:` section, exactly as
`refam test` reads it) or a diffusers FLUX folder. `RefAM.pipeline` is the `RefAMPipeline` that
`refam test` runs per sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from refam.data.images import check_size, read_rgb, to_rgb
from refam.embedded import DEFAULT_CONFIG  # noqa: F401 (shipped in the package: works from any folder)
from refam.errors import (ConfigError, DataError, MissingInputError, RefamError, forget_built_errors,
                          parser_error_line, place, user_error)
from refam.inference import RefAMPipeline
from refam.types import Expression, Prediction, Sample

SECTIONS = {"model": RefAMPipeline}  # a config's sections that RefAM.load reads


def _model_section(config: Path) -> dict:
    try:
        document = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {config}: {' '.join(str(err).split())}") from err
    if not isinstance(document or {}, dict):
        raise ConfigError(f"{config}: a config is a mapping of sections (model:, data:, ...), "
                          f"not a {type(document).__name__}; give a config YAML such as configs/demo.yaml")
    section = (document or {}).get("model")
    if isinstance(section, str):  # `model: parts/x.yaml`, relative to the config, as jsonargparse reads it
        return _model_section_file(config.parent / section)
    if not isinstance(section, dict):
        raise ConfigError(f"{config}: no `model:` section (extractor, segmenter, ...) to load")
    return section


def _model_section_file(path: Path) -> dict:
    try:
        section = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read the model part {path}: {' '.join(str(err).split())}") from err
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: the model part is a mapping (extractor:, segmenter:, ...), not a {type(section).__name__}")
    return section


EMPTY_EXPRESSION = "an --expression is empty: give the words that name the object"


def expression_texts(expressions: str | list[str]) -> list[str]:
    """The expressions as a list of texts, checked as every front door checks them (`ExpressionError`)."""
    from refam.errors import ExpressionError

    texts = [expressions] if isinstance(expressions, str) else expressions
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise ExpressionError(f"expressions must be a string or a list of strings, got {expressions!r}")
    if not texts or any(not text.strip() for text in texts):
        raise ExpressionError(EMPTY_EXPRESSION)
    return list(texts)


def pipeline_from_config(config: Path) -> RefAMPipeline:
    from jsonargparse import ArgumentParser

    import refam.components  # noqa: F401 (configs name components by class name; errors name their key)

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(RefAMPipeline, "model")  # the `model:` section's keys, as RefAMModule takes them
    try:
        parsed = parser.parse_object({"model": _model_section(config)})
    except Exception as err:  # jsonargparse reports the offending key in its message
        raise ConfigError(f"{config}: {parser_error_line(str(err))}") from err
    forget_built_errors()
    try:
        return parser.instantiate(parsed).model
    except Exception as err:
        # a component's own error (a missing checkpoint) reaches here wrapped by jsonargparse
        found = user_error(err)
        if found is None:
            raise
        place(found, SECTIONS, parsed.as_dict())
        raise found from found.__cause__  # the error itself, as if raised here, with its own cause


def pipeline_from_folder(folder: Path, segmenter=None) -> RefAMPipeline:
    from refam.extractors.flux import FluxExtractor
    from refam.segmenters.floodfill import FloodFillSegmenter
    from refam.shapes.model import extractor_settings

    # a refam-shapes folder (it has a training record) runs as it was trained; others as FLUX.1
    settings = extractor_settings(folder) if (folder / "training.json").exists() else {"torch_dtype": "float32"}
    return RefAMPipeline(extractor=FluxExtractor(str(folder), **settings), segmenter=segmenter or FloodFillSegmenter())


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
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ConfigError(f"--device {device}: not a device ({err}); give cpu, cuda or cuda:N") from err
        try:
            pipeline.setup(self.device)
        except RefamError as err:
            raise place(err, SECTIONS) if configured else err

    @classmethod
    def load(cls, source: str | Path | None = None, device: str | torch.device = "cpu", segmenter=None) -> "RefAM":
        """`source`: None (the embedded refam-shapes demo pipeline), a config YAML, or a diffusers
        FLUX folder (run with `segmenter`, default the weightless flood fill)."""
        path = DEFAULT_CONFIG if source is None else Path(source)
        if path.is_dir():
            if not (path / "model_index.json").exists():
                raise ConfigError(f"{path} is a folder but not a diffusers pipeline (no model_index.json); "
                                  "give a FLUX folder or a config YAML")
            return cls(pipeline_from_folder(path, segmenter), device)
        if path.suffix in (".yaml", ".yml", ".json"):  # JSON is YAML: `refam serve`'s run records load back
            if not path.is_file():
                raise MissingInputError(f"config file not found: {path}")
            pipeline = pipeline_from_config(path)
            if segmenter is not None:
                pipeline.segmenter = segmenter
            return cls(pipeline, device, configured=segmenter is None)
        if not path.exists():
            raise MissingInputError(f"{path}: no such file or folder; give a config YAML or a diffusers FLUX folder")
        raise ConfigError(f"cannot load {path}: give a config YAML or a diffusers FLUX folder")

    @torch.no_grad()
    def segment(self, image: Image.Image | np.ndarray | str | Path, expressions: str | list[str],
                caption: str = "") -> list[Prediction]:
        """One prediction per expression, in order: mask [H, W] bool, point (x, y), heatmap on the
        token grid, the tokens kept and dropped, global attention sinks, and per-token maps.

        Raises `ExpressionError` naming the expression for one that cannot run (empty, too long)."""
        from refam.errors import ExpressionError

        texts = expression_texts(expressions)
        sample = Sample("image", as_image(image),
                        [Expression(text, str(i)) for i, text in enumerate(texts)], caption=caption)
        result = self.pipeline.segment_sample(sample, keep_token_maps=True)
        if result.skipped:
            raise ExpressionError("; ".join(result.skipped))
        by_id = {p.expression_id: p for p in result.predictions}
        return [by_id[str(i)] for i in range(len(texts))]

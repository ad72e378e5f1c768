"""The one way a front door turns a config into a loaded pipeline (`RefAM.load`, and through it
`refam predict`, `analyze` and `serve`; `refam test` reads the same `model:` keys through LightningCLI):

- `model_section(source)`: the `model:` section of a config YAML (or of the `model: part.yaml` it
  names), or the section that runs a diffusers FLUX folder (`folder_section`), or the embedded
  default's when `source` is None;
- `build_pipeline(section)`: the section parsed against `RefAMPipeline`'s arguments and built,
  an error placed at its config key (`model.segmenter.init_args.checkpoint: ...`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from refam.embedded import DEFAULT_CONFIG
from refam.errors import ConfigError, MissingInputError, forget_built_errors, parser_error_line, place, user_error

def _read(path: Path, what: str) -> object:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read {what} {path}: {' '.join(str(err).split())}") from err


def config_section(config: Path) -> dict:
    """A config file's `model:` section (a mapping, or a file it names relative to the config, as
    jsonargparse reads `model: parts/x.yaml`)."""
    document = _read(config, "config")
    if not isinstance(document or {}, dict):
        raise ConfigError(f"{config}: a config is a mapping of sections (model:, data:, ...), "
                          f"not a {type(document).__name__}; give a config YAML such as configs/demo.yaml")
    section = (document or {}).get("model")
    if isinstance(section, str):  # `model: parts/x.yaml`, relative to the config, as jsonargparse reads it
        part = config.parent / section
        section = _read(part, "the model part")
        if not isinstance(section, dict):
            raise ConfigError(f"{part}: the model part is a mapping (extractor:, segmenter:, ...), "
                              f"not a {type(section).__name__}")
    if not isinstance(section, dict):
        raise ConfigError(f"{config}: no `model:` section (extractor, segmenter, ...) to load")
    return section


def shapes_settings(folder: str | Path, pooled_prompt: str | None = None) -> dict:
    """FluxExtractor settings that run a refam-shapes folder as it was trained: 128 x 128 scenes,
    its caption length, and what its CLIP saw (from `training.json`, unless given)."""
    record_file = Path(folder) / "training.json"
    try:
        record = json.loads(record_file.read_text(encoding="utf-8")) if record_file.exists() else {}
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{record_file}: cannot read the model's training record ({err}); restore it from the "
                          "model's folder, or remove it to run the folder as FLUX.1") from err
    if not isinstance(record, dict):
        raise ConfigError(f"{record_file}: a training record is a JSON object, not a {type(record).__name__}")
    return {"torch_dtype": "float32", "resolution": 128, "caption_max_tokens": record.get("caption_tokens", 32),
            "pooled_prompt": pooled_prompt or record.get("pooled_prompt", "caption")}


def folder_section(folder: Path) -> dict:
    """The section that runs a diffusers FLUX folder with the weightless flood fill: a refam-shapes
    folder (it has a training record) as it was trained, any other as FLUX.1 in float32."""
    if not (folder / "model_index.json").exists():
        raise ConfigError(f"{folder} is a folder but not a diffusers pipeline (no model_index.json); "
                          "give a FLUX folder or a config YAML")
    settings = shapes_settings(folder) if (folder / "training.json").exists() else {"torch_dtype": "float32"}
    return {"extractor": {"class_path": "refam.extractors.flux.FluxExtractor",
                          "init_args": {"pretrained": str(folder), **settings}},
            "segmenter": {"class_path": "refam.segmenters.floodfill.FloodFillSegmenter"}}


def model_section(source: str | Path | None) -> dict:
    """The `model:` section to run: the embedded default's (None), a config's, or a FLUX folder's."""
    path = DEFAULT_CONFIG if source is None else Path(source)
    if path.is_dir():
        return folder_section(path)
    if path.suffix in (".yaml", ".yml", ".json"):  # JSON is YAML: `refam serve`'s run records load back
        if not path.is_file():
            raise MissingInputError(f"config file not found: {path}")
        return config_section(path)
    if not path.exists():
        raise MissingInputError(f"{path}: no such file or folder; give a config YAML or a diffusers FLUX folder")
    raise ConfigError(f"cannot load {path}: give a config YAML or a diffusers FLUX folder")


def pipeline_from_config(config: str | Path):
    """The `RefAMPipeline` of a config file's `model:` section."""
    return build_pipeline(config_section(Path(config)), origin=str(config))


def build_pipeline(section: dict, origin: str = "the model section"):
    """A `RefAMPipeline` built from a `model:` section; an error names its config key."""
    from jsonargparse import ArgumentParser

    from refam.components import INSTANTIATORS  # configs name components by class name
    from refam.pipeline import RefAMPipeline

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(RefAMPipeline, "model")  # the `model:` section's keys, as RefAMModule takes them
    try:
        parsed = parser.parse_object({"model": copy.deepcopy(section)})  # the parser converts what it is given in place
    except Exception as err:  # jsonargparse reports the offending key in its message
        raise ConfigError(f"{origin}: {parser_error_line(str(err))}") from err
    forget_built_errors()
    try:
        return parser.instantiate(parsed, instantiators=INSTANTIATORS).model
    except Exception as err:
        found = user_error(err)  # a component's own error (a missing checkpoint), wrapped by jsonargparse
        if found is None:
            raise
        place(found, {"model": RefAMPipeline}, parsed.as_dict())
        raise found from found.__cause__  # the error itself, as if raised here, with its own cause

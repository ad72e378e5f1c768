"""The page's settings: the `Settings` value its toggles set, the `model:` section they make, and
the light components (magnets, aggregator, spatial bias, the extractor's block selection and noise
level) built from that section's entries as `refam test` would build them. The weights are not
touched here: a setting rebuilds only what it names.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import get_type_hints

from refam.errors import ConfigError, forget_built_errors, parser_error_line, place, user_error

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


def _spec(section: dict, key: str, default_class: str) -> dict:
    spec = copy.deepcopy(section.get(key) or {"class_path": default_class})
    spec.setdefault("init_args", {})
    return spec


def entries(section: dict) -> dict:
    """The section's entries for the light components (None where it names none)."""
    extractor_args = (section.get("extractor") or {}).get("init_args") or {}
    return {"magnets": section.get("magnets"), "aggregator": section.get("aggregator"),
            "spatial_bias": section.get("spatial_bias"), "trajectory": extractor_args.get("trajectory"),
            "blocks": extractor_args.get("blocks")}


def build_entry(kind: str, spec):
    """A light component from its config entry, as `refam test` would build it; its errors name
    the entry's key in the `model:` section, as `refam test`'s do. Blocks are a plain value."""
    if kind == "blocks":
        return spec
    from jsonargparse import ArgumentParser as JsonArgumentParser

    from refam.components import INSTANTIATORS  # entries name components by class name; errors their key
    from refam.extractors.trajectory import Trajectory
    from refam.pipeline import RefAMPipeline

    # the types `refam test` reads these entries as; the trajectory is the extractor's argument
    types = {**get_type_hints(RefAMPipeline.__init__), "trajectory": Trajectory | None}
    entry = ENTRY_KEYS[kind]
    parser = JsonArgumentParser(exit_on_error=False)
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
        return parser.instantiate(parsed, instantiators=INSTANTIATORS)[entry]
    except Exception as err:
        found = user_error(err)
        if found is None or found.field is None:
            reason = found or next((line.strip() for line in str(err).splitlines() if line.strip()),
                                   type(err).__name__)
            raise ConfigError(f"{entry}: {reason}") from err
        place(found, {"model": RefAMPipeline}, parsed.as_dict())  # the component's own error, at its key
        raise found from found.__cause__


class LightComponents:
    """A loaded pipeline's light components, and the page's settings as `model:` sections and as
    components built from them (cached, so a setting flipped back rebuilds nothing).

    The loaded components stand for the configured section's own entries: unchanged settings
    build nothing, and `defaults` are the settings that section holds."""

    def __init__(self, pipeline, section: dict) -> None:
        extractor = pipeline.extractor
        self.section = copy.deepcopy(section)
        self.num_blocks: int | None = getattr(extractor, "num_blocks", None)
        recorded = extractor.settings()  # what the extractor was built with (refam.config)
        self.originals = {"magnets": pipeline.magnets, "aggregator": pipeline.aggregator,
                          "spatial_bias": list(pipeline.spatial_bias),
                          "trajectory": recorded.get("trajectory"), "blocks": recorded.get("blocks")}
        self._built: dict[tuple[str, str], object] = {}
        for kind, spec in entries(self.section).items():
            self._built[(kind, json.dumps(spec, sort_keys=True))] = self.originals[kind]
        self.defaults = self._defaults()

    @property
    def observes_one_noise_level(self) -> bool:
        """Whether the extractor observes one state, `NoiseAt(sigma)`: then sigma is a setting."""
        from refam.extractors.trajectory import NoiseAt

        return isinstance(self.originals["trajectory"], NoiseAt)

    def _defaults(self) -> Settings:
        from refam.aggregators.magnets import MagnetStrategy

        magnets, aggregator = self.originals["magnets"], self.originals["aggregator"]
        magnet_settings, aggregator_settings = magnets.settings(), aggregator.settings()  # their records
        words = list(magnet_settings.get("magnets") or [])
        vectors = type(magnets).vectors is not MagnetStrategy.vectors
        first = last = None
        if self.num_blocks is not None:
            from refam.extractors.base import select_blocks

            chosen = sorted(select_blocks(self.num_blocks, self.originals["blocks"]))
            first, last = chosen[0], chosen[-1]
        noise = float(self.originals["trajectory"].sigma) if self.observes_one_noise_level else None
        bias = [type(b).__name__ for b in self.originals["spatial_bias"]]
        named = {"none": [], "direction": ["DirectionPrior"], "direction + relation": ["DirectionPrior", "RelationPrior"]}
        spatial = next((name for name, classes in named.items() if classes == bias), AS_CONFIGURED)
        return Settings(magnets=bool(words) or vectors, magnet_words=" ".join(words),
                        stop_words=magnet_settings.get("filter_stop_words"), gas=aggregator_settings.get("gas"),
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
                raise ConfigError(f"the first block ({first}) comes after the last block ({last}): move one of the two")
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

    def build(self, section: dict) -> dict:
        """The light components the section names, by kind (magnets, aggregator, spatial_bias,
        trajectory, blocks); a bad entry or block selection is a ConfigError now, not mid-run."""
        built = {}
        for kind, spec in entries(section).items():
            key = (kind, json.dumps(spec, sort_keys=True))
            if key not in self._built:
                self._built[key] = build_entry(kind, spec)
            built[kind] = self._built[key]
        if self.num_blocks is not None:
            from refam.extractors.base import select_blocks

            select_blocks(self.num_blocks, built["blocks"])
        if built["trajectory"] is None:  # an extractor without one keeps none; one with one keeps it
            built["trajectory"] = self.originals["trajectory"]
        return built

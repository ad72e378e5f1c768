"""What a user flips between calls, as one frozen value: `Settings`.

A pipeline (`refam.pipeline.RefAMPipeline`) holds what is loaded (the extractor's weights, the
segmenter) and a default `Settings`; a call may pass other `Settings` beside the loaded modules, as
diffusers pipelines take per-call arguments beside their fixed components. Nothing loaded is changed
or copied for a call: the magnets, aggregator, spatial bias, caption choice and key frame act after
the extractor, and the extractor takes `blocks` and `trajectory` per call.

    from dataclasses import replace
    settings = replace(model.pipeline.settings, magnets=AppendMagnets([]), blocks=[10, 11])
    model.segment(image, ["the dog"], settings=settings)

Every value is checked once, when the `Settings` is made (`dataclasses.replace` makes a new one,
so it is checked too); an error names its field as the pipeline's constructor names its argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from refam.aggregators.base import Aggregator, SoftmaxMeanAggregator
from refam.aggregators.magnets import AppendMagnets, MagnetStrategy
from refam.aggregators.spatial import SpatialBias
from refam.errors import ConfigError
from refam.extractors.base import check_blocks
from refam.extractors.trajectory import Trajectory
from refam.prompts.keyframe import KEY_FRAMES

TEXT_CONDITIONS = ("caption", "empty")


@dataclass(frozen=True)
class Settings:
    """The settings of one call (see the module docstring).

    Args:
        magnets: appended attention magnets and token filtering; default the paper's.
        aggregator: token maps -> heatmap; default the paper's softmax-across-tokens mean.
        spatial_bias: positional priors from the expression's words, applied in order (one, a
            sequence, or None; held as a tuple).
        text_condition: "caption" (the sample's caption; empty where it has none) or "empty".
        key_frame: videos: the frame the point prompts, "first" or "confident".
        blocks: the blocks whose maps are averaged (a list of indices or a fraction of the earliest
            filtered out; held as a tuple); None: the extractor's own setting.
        trajectory: how the observed states are made; None: the extractor's own.
    """

    magnets: MagnetStrategy = field(default_factory=AppendMagnets)
    aggregator: Aggregator = field(default_factory=SoftmaxMeanAggregator)
    spatial_bias: tuple[SpatialBias, ...] = ()
    text_condition: str = "caption"
    key_frame: str = "first"
    blocks: tuple[int, ...] | float | None = None
    trajectory: Trajectory | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.magnets, MagnetStrategy):
            raise ConfigError(f"must be a MagnetStrategy such as AppendMagnets, got {_name(self.magnets)}", field="magnets")
        if not isinstance(self.aggregator, Aggregator):
            raise ConfigError(f"must be an Aggregator such as SoftmaxMeanAggregator, got {_name(self.aggregator)}",
                              field="aggregator")
        bias = self.spatial_bias
        bias = (bias,) if isinstance(bias, SpatialBias) else tuple(bias or ())
        for index, prior in enumerate(bias):
            if not isinstance(prior, SpatialBias):
                raise ConfigError(f"must be a SpatialBias such as DirectionPrior, got {_name(prior)}",
                                  field="spatial_bias" if len(bias) == 1 else f"spatial_bias[{index}]")
        if self.text_condition not in TEXT_CONDITIONS:
            raise ConfigError(f"must be one of {list(TEXT_CONDITIONS)}, got {self.text_condition!r}",
                              field="text_condition")
        if self.key_frame not in KEY_FRAMES:
            raise ConfigError(f"must be one of {list(KEY_FRAMES)}, got {self.key_frame!r}", field="key_frame")
        check_blocks(self.blocks)
        if self.trajectory is not None and not isinstance(self.trajectory, Trajectory):
            raise ConfigError(f"must be a Trajectory such as NoiseAt, or None (the extractor's own), got "
                              f"{_name(self.trajectory)}", field="trajectory")
        # held immutable, as the value is: a caller's list changed later changes no settings
        object.__setattr__(self, "spatial_bias", bias)
        if isinstance(self.blocks, list):
            object.__setattr__(self, "blocks", tuple(self.blocks))

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def extractor_overrides(self) -> dict:
        """The extractor's per-call arguments these settings give (`blocks`, `trajectory`), those
        that are not the extractor's own (None)."""
        return {name: value for name, value in (("blocks", self.blocks), ("trajectory", self.trajectory))
                if value is not None}

    def components(self) -> tuple:
        """The components these settings hold, for the numbers' identity (weights, code)."""
        return (self.magnets, self.aggregator, *self.spatial_bias,
                *([self.trajectory] if self.trajectory is not None else []))


def _name(value: object) -> str:
    return f"{type(value).__name__} {value!r}" if isinstance(value, (str, int, float)) else type(value).__name__

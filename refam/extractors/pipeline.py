"""An extractor over a diffusers pipeline: loading, placement and the map cache's key, under the template.

The lifecycle: the pipeline comes from `pretrained` (a folder or hub id, `load_pipeline`) or is
handed over in memory (`use_pipeline`); the subclass prepares it (its branch processors, checks of
the architecture); `offload` places its modules (`refam.extractors.offload.Placement`). The map
cache's key holds the class, the model's identity, the device type, where the text encoders run,
and every other constructor argument the extractor was built with (`Configurable.settings`), so a
backbone's new setting can never be left out of it.
"""

from __future__ import annotations

import abc

import torch
from torch import nn

from refam.errors import ConfigError
from refam.extractors.base import DTYPES, Extractor, load_pipeline
from refam.extractors.offload import Placement, check_offload


class PipelineExtractor(Extractor):
    """Subclasses set `checkpoint_layout` (what `pretrained` must hold, for errors) and implement
    `pipeline_class`, `prepare` and `placement_modules`."""

    checkpoint_layout: str = "the folder of a diffusers pipeline or a hub id"

    def __init__(self, pretrained: str, torch_dtype: str, offload: str, local_files_only: bool) -> None:
        if torch_dtype not in DTYPES:
            raise ConfigError(f"must be one of {list(DTYPES)}, got {torch_dtype!r}", field="torch_dtype")
        self.pretrained = pretrained
        self.dtype = DTYPES[torch_dtype]
        self.offload = check_offload(offload)
        self.local_files_only = local_files_only
        self.pipe = None
        self.placement: Placement | None = None
        self.given_pipeline = False  # use_pipeline: weights not named by `pretrained`
        self.device = torch.device("cpu")

    # ---------------------------------------------------------------- what a backbone says
    @abc.abstractmethod
    def pipeline_class(self) -> type:
        """The diffusers pipeline class `pretrained` is loaded with."""

    def load_kwargs(self) -> dict:
        """Extra `from_pretrained` arguments (a weights variant, ...)."""
        return {}

    @abc.abstractmethod
    def prepare(self, pipe) -> None:
        """Check the architecture and install the branch processors (called once per pipeline)."""

    @abc.abstractmethod
    def placement_modules(self, pipe) -> tuple[list[nn.Module], nn.Module, list[nn.Module]]:
        """(text encoders, denoiser, modules that always stay on the device) for `offload`."""

    # ---------------------------------------------------------------- lifecycle
    def setup(self, device: torch.device) -> None:
        if self.pipe is not None:
            self._place(device)
            return
        pipeline_class = self.pipeline_class()
        pipe = load_pipeline(
            pipeline_class, self.pretrained, self.checkpoint_layout,
            dtype=self.dtype, local_files_only=self.local_files_only, **self.load_kwargs(),
        )
        self._attach(pipe, device)

    def use_pipeline(self, pipe, device: torch.device) -> None:
        """Extract with a pipeline already in memory (quantized, with LoRA, or built from a config)
        instead of loading `pretrained`. Its maps are never cached (`model.map_cache`): nothing
        names its weights."""
        self.given_pipeline = True
        self._attach(pipe, device)

    def _attach(self, pipe, device: torch.device) -> None:
        for module in pipe.components.values():
            if isinstance(module, nn.Module):
                module.requires_grad_(False).eval()
        self.prepare(pipe)
        self.pipe = pipe
        self._place(device)

    def _place(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.placement = Placement(self.offload, self.device, *self.placement_modules(self.pipe))
        self.placement.apply()

    def cache_key_settings(self) -> dict | None:
        if self.given_pipeline:
            return None
        from refam.extractors.cache import describe, model_identity

        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "model": model_identity(self.pretrained, offline=self.local_files_only),
            "device": self.device.type,  # maps differ by rounding across device types
            "text_encoders_on_cpu": self.offload == "text_encoders",  # likewise; the other modes give the same maps
            "settings": describe(self.settings(leave_out=("pretrained", "offload", "local_files_only"))),
        }

"""Where a pipeline's modules live and run: the `offload` setting of every extractor.

A DiT pipeline is one big denoiser (FLUX.1-dev: 11.9 B parameters, 23.8 GB in bf16), one big text
encoder (T5-XXL: 4.8 B, 9.5 GB) and small parts (CLIP, VAE). Modes, from fastest to frugal:

- "none": everything on the device (FLUX.1-dev: ~34 GB of weights).
- "text_encoders": the text encoders live and run on the CPU; embeddings move over. Slow for T5-XXL
  on a CPU, but nothing is ever copied.
- "model": whole models take turns on the device: the text encoders while texts are encoded, the
  denoiser while it runs (the other goes back to the CPU). Peak = the denoiser + small parts;
  costs one host-to-device copy of T5 and of the denoiser per sample.
- "group": diffusers group offloading (`apply_group_offloading`, block level, one block per group,
  prefetching the next block on a CUDA stream): only about two blocks of the denoiser or the text
  encoder are on the device at a time. Copies a text encoder every time it runs and the denoiser
  every forward, overlapped with compute on CUDA.

What each mode costs for FLUX.1-dev is worked out in `bench/offload.py` and bench/RESULTS.md.
"""

from __future__ import annotations

import torch
from torch import nn

from refam.errors import ConfigError

OFFLOAD_MODES = ("none", "text_encoders", "model", "group")


def check_offload(mode: str) -> str:
    if mode not in OFFLOAD_MODES:
        raise ConfigError(
            f"must be one of {list(OFFLOAD_MODES)}, got {mode!r}; 'group' fits FLUX.1-dev on a 24 GB card", field="offload")
    return mode


class Placement:
    """Puts a pipeline's modules where `mode` says, and moves them between the phases of a sample.

    `text_encoders` and `denoiser` are the big modules the mode is about; `resident` (VAE, small
    encoders) always stay on the device. Extractors call `enter("text")` before encoding texts and
    `enter("denoise")` before the denoiser runs; only the "model" mode moves anything then.
    """

    def __init__(
        self,
        mode: str,
        device: torch.device,
        text_encoders: list[nn.Module],
        denoiser: nn.Module,
        resident: list[nn.Module],
        offload_device: torch.device = torch.device("cpu"),
    ) -> None:
        self.mode = check_offload(mode)
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self.text_encoders = text_encoders
        self.denoiser = denoiser
        self.resident = resident
        self.phase: str | None = None

    @property
    def text_device(self) -> torch.device:
        """Where text encoders compute, so where their inputs go."""
        return self.offload_device if self.mode == "text_encoders" else self.device

    def apply(self) -> None:
        """Initial placement on `self.device` (again after the device changed)."""
        for module in self.resident:
            module.to(self.device)
        if self.mode == "none":
            for module in [*self.text_encoders, self.denoiser]:
                module.to(self.device)
        elif self.mode == "text_encoders":
            for module in self.text_encoders:
                module.to(self.offload_device)
            self.denoiser.to(self.device)
        elif self.mode == "model":
            for module in [*self.text_encoders, self.denoiser]:
                module.to(self.offload_device)
            self.phase = None
        else:
            from diffusers.hooks import apply_group_offloading

            for module in [*self.text_encoders, self.denoiser]:
                _remove_group_offloading(module)  # a placement on another device
                module.to(self.offload_device)
                apply_group_offloading(
                    module,
                    onload_device=self.device,
                    offload_device=self.offload_device,
                    offload_type="block_level",
                    num_blocks_per_group=1,
                    use_stream=self.device.type == "cuda",  # prefetch the next block while this one runs
                )

    def enter(self, phase: str) -> None:
        """"text" or "denoise": in "model" mode, the phase's big modules go to the device and the
        other phase's back to the offload device (the leaving ones first, so both never coexist)."""
        if self.mode != "model" or phase == self.phase:
            return
        if phase == "text":
            leaving, arriving = [self.denoiser], self.text_encoders
        elif phase == "denoise":
            leaving, arriving = self.text_encoders, [self.denoiser]
        else:
            raise ValueError(f"phase must be 'text' or 'denoise', got {phase!r}")
        for module in leaving:
            module.to(self.offload_device)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # hand the freed blocks back before the big copy in
        for module in arriving:
            module.to(self.device)
        self.phase = phase


def _remove_group_offloading(module: nn.Module) -> None:
    from diffusers.hooks import HookRegistry

    for submodule in module.modules():
        registry = getattr(submodule, "_diffusers_hook", None)
        if isinstance(registry, HookRegistry):
            for name in ("lazy_prefetch_group_offloading", "group_offloading"):
                registry.remove_hook(name, recurse=False)

"""How the observed latent states are made from the clean image latent.

A `Trajectory` yields the (x_t, sigma) states at which the DiT is observed; the expression branch
captures attention at every state it yields (maps are averaged over states).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

Velocity = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass
class TrajectoryContext:
    """What a trajectory may use besides the clean latent."""

    velocity: Velocity  # plain denoiser forward (no expression branch): v(x_t, sigma)
    image_seq_len: int  # number of packed image tokens
    scheduler_config: dict


class Trajectory(abc.ABC):
    @abc.abstractmethod
    def states(
        self, x0: torch.Tensor, generator: torch.Generator, context: TrajectoryContext
    ) -> Iterator[tuple[torch.Tensor, float]]:
        """Yield (x_t, sigma) pairs; x0 is the packed clean latent [1, N, C]."""


def flux_time_shift(sigma: float, image_seq_len: int, scheduler_config: dict) -> float:
    """FLUX's resolution-dependent shift of a noise level (diffusers' `calculate_shift` + exponential
    time shift, with the scheduler config's base/max shift and sequence lengths)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = calculate_shift(
        image_seq_len,
        scheduler_config.get("base_image_seq_len", 256),
        scheduler_config.get("max_image_seq_len", 4096),
        scheduler_config.get("base_shift", 0.5),
        scheduler_config.get("max_shift", 1.15),
    )
    return math.exp(mu) / (math.exp(mu) + (1.0 / sigma - 1.0))


class NoiseAt(Trajectory):
    """One state: the clean latent noised to `timestep` (diffusers' convention).

    timestep 750 means sigma = 0.75 and x_t = 0.25 * x0 + 0.75 * eps, whatever the resolution
    (the scheduler's `scale_noise`). `shift=True` applies FLUX's resolution-dependent shift to sigma
    instead (0.832 at 256 tokens, 0.849 at 1024, 0.905 at 4096); the paper does not say which.
    """

    def __init__(self, timestep: float = 750.0, shift: bool = False) -> None:
        if not 0.0 < timestep <= 1000.0:
            raise ValueError(f"NoiseAt.timestep must be in (0, 1000], got {timestep}")
        self.timestep = timestep
        self.shift = shift

    def sigma(self, context: TrajectoryContext) -> float:
        sigma = self.timestep / 1000.0
        if self.shift and sigma < 1.0:
            sigma = flux_time_shift(sigma, context.image_seq_len, context.scheduler_config)
        return sigma

    def states(self, x0, generator, context):
        sigma = self.sigma(context)
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
        yield (1.0 - sigma) * x0 + sigma * noise, sigma

"""Variance-preserving denoisers (DDPM family: CogVideoX, and any v- or eps-predicting DiT) seen as flows.

The template speaks the flow's units: the state at noise level sigma is (1 - sigma) x0 + sigma eps
and a velocity is eps - x0. A VP model at DDPM timestep t sees sqrt(ab) x0 + sqrt(1 - ab) eps (ab:
its scheduler's `alphas_cumprod` at t). The flow state at sigma is r times the VP state of the same
signal-to-noise ratio: sqrt(ab) = (1 - sigma) / r, sqrt(1 - ab) = sigma / r, r = |(1 - sigma, sigma)|.
So the model is told the timestep of that ab (interpolated between its integer ones), sees x_t / r,
and its prediction becomes eps - x0 (a flow Euler step is then a DDIM step). Levels below timestep
0's (the least noise it was trained at) are told timestep 0, as DDIM inversion starts.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from refam.errors import CheckpointError

PREDICTIONS = ("v_prediction", "epsilon")


class VPFlow:
    """The flow view of one VP scheduler (`alphas_cumprod`, `prediction_type` of its config)."""

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str) -> None:
        if prediction_type not in PREDICTIONS:
            raise CheckpointError(f"its scheduler's prediction_type is {prediction_type!r}; a VP backbone needs one of "
                                  f"{list(PREDICTIONS)}", field="pretrained")
        ab = alphas_cumprod.double()
        self.sigmas = ((1 - ab).sqrt() / (ab.sqrt() + (1 - ab).sqrt())).numpy()  # each timestep's flow sigma, rising
        self.prediction_type = prediction_type

    def timestep(self, sigma: float) -> float:
        """The (fractional) DDPM timestep of the flow's noise level sigma; 0 below timestep 0's level."""
        return float(np.interp(sigma, self.sigmas, np.arange(len(self.sigmas))))

    def trailing(self, fraction: float) -> float:
        """The flow sigma of the timestep a "trailing" schedule puts at `fraction` of the way, 1000 f - 1."""
        steps = len(self.sigmas)
        return float(np.interp(steps * fraction - 1, np.arange(steps), self.sigmas))

    @staticmethod
    def scales(sigma: float) -> tuple[float, float, float]:
        """(r, sqrt(ab), sqrt(1 - ab)) of the VP state with the flow state's signal-to-noise ratio."""
        r = math.hypot(1.0 - sigma, sigma)
        return r, (1.0 - sigma) / r, sigma / r

    def state(self, x_t: torch.Tensor, sigma: float) -> torch.Tensor:
        """The VP state the model sees for the flow state x_t, x_t / r (in x_t's dtype)."""
        return (x_t.float() / self.scales(sigma)[0]).to(x_t.dtype)

    def flow_velocity(self, prediction: torch.Tensor, state: torch.Tensor, sigma: float) -> torch.Tensor:
        """eps - x0 (float32) from the model's prediction at the VP `state`: v = a eps - b x0 gives
        (b - a) x + (a + b) v; eps gives eps - (x - b eps) / a."""
        _, a, b = self.scales(sigma)
        x, out = state.float(), prediction.float()
        if self.prediction_type == "v_prediction":
            return (b - a) * x + (a + b) * out
        return out - (x - b * out) / a

"""`refam.extractors.vp`: a variance-preserving scheduler seen as a flow. On exact x0 and eps, an
oracle model's prediction (v or eps) at the VP state of the flow state becomes eps - x0, for either
prediction type; the timestep inverts each integer timestep's flow sigma; a scheduler predicting
something else is refused by the checkpoint field. CogVideoX's own use (a flow Euler step is the
pipeline's DDIM step) is in test_cogvideox.py."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from refam.errors import CheckpointError
from refam.extractors.vp import VPFlow


@pytest.fixture(scope="module")
def alphas_cumprod():
    return DDIMScheduler(beta_schedule="scaled_linear", rescale_betas_zero_snr=True).alphas_cumprod


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
@pytest.mark.parametrize("sigma", [0.1, 0.5, 0.75, 0.95])
def test_an_oracle_prediction_becomes_the_flow_velocity(alphas_cumprod, prediction_type, sigma):
    vp = VPFlow(alphas_cumprod, prediction_type)
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 5, generator=generator, dtype=torch.float64).unbind(0)
    state = vp.state((1 - sigma) * x0 + sigma * eps, sigma)
    _, a, b = vp.scales(sigma)
    assert a**2 + b**2 == pytest.approx(1.0)  # variance preserving
    torch.testing.assert_close(state, a * x0 + b * eps)
    oracle = a * eps - b * x0 if prediction_type == "v_prediction" else eps
    torch.testing.assert_close(vp.flow_velocity(oracle, state, sigma).double(), eps - x0, atol=1e-5, rtol=1e-5)


def test_the_timestep_of_each_integer_timesteps_sigma_is_that_timestep(alphas_cumprod):
    vp = VPFlow(alphas_cumprod, "v_prediction")
    assert np.all(np.diff(vp.sigmas) > 0) and vp.sigmas[-1] == pytest.approx(1.0)  # zero terminal SNR
    for t in (0, 1, 250, 749, 998):
        assert vp.timestep(float(vp.sigmas[t])) == pytest.approx(t, abs=1e-6)
    assert vp.timestep(vp.sigmas[0] / 2) == 0.0  # below the least trained noise: timestep 0
    assert vp.trailing(0.75) == pytest.approx(float(vp.sigmas[749]))  # trailing: fraction f -> 1000 f - 1


def test_a_sample_predicting_scheduler_is_refused_by_the_checkpoint_field(alphas_cumprod):
    with pytest.raises(CheckpointError, match="prediction_type is 'sample'") as raised:
        VPFlow(alphas_cumprod, "sample")
    assert raised.value.field == "pretrained"

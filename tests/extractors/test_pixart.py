"""What PixArt-Sigma adds to the contract (tests/extractors/contract/entry_pixart.py): `shift: true`
refused on its VP scheduler by name, a PixArt-alpha checkpoint refused, and sigma 0.75's timestep."""

import pytest
import torch
from diffusers import PixArtTransformer2DModel

from refam.errors import CheckpointError, ConfigError
from refam.extractors.pixart import PixArtSigmaExtractor
from refam.extractors.trajectory import NoiseAt
from refam.testing.tiny_pixart import build_tiny_pixart

SETTINGS = dict(torch_dtype="float32", resolution=96, caption_max_tokens=16)


def test_shift_is_refused_on_its_vp_scheduler():
    """DPM-Solver on linear betas has no flow shift: `shift: true` is one line naming trajectory.shift,
    never an identity read from a missing `shift` key."""
    extractor = PixArtSigmaExtractor("unused", **SETTINGS, trajectory=NoiseAt(0.75, shift=True))
    with pytest.raises(ConfigError, match="PixArtSigmaExtractor has no noise-level shift") as error:
        extractor.use_pipeline(build_tiny_pixart(), torch.device("cpu"))
    assert error.value.key == "trajectory.shift"


def test_a_pixart_alpha_checkpoint_is_refused():
    pipe = build_tiny_pixart()
    pipe.transformer = PixArtTransformer2DModel.from_config({**pipe.transformer.config, "use_additional_conditions": True})
    with pytest.raises(CheckpointError, match="PixArt-alpha"):
        PixArtSigmaExtractor("unused", **SETTINGS).use_pipeline(pipe, torch.device("cpu"))


def test_sigma_is_told_as_the_timestep_of_its_signal_to_noise_ratio():
    """Linear betas 1e-4..0.02: sigma 0.75 (SNR 1/9) is timestep 474.5, not 750 (which is sigma 0.945)."""
    extractor = PixArtSigmaExtractor("unused", **SETTINGS)
    extractor.use_pipeline(build_tiny_pixart(), torch.device("cpu"))
    assert extractor.timestep(0.75) == pytest.approx(474.549, abs=1e-3)
    ab = extractor.pipe.scheduler.alphas_cumprod[750].double()
    assert extractor.timestep(float((1 - ab).sqrt() / (ab.sqrt() + (1 - ab).sqrt()))) == pytest.approx(750.0, abs=1e-6)

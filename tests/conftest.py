from pathlib import Path

import pytest
import torch

from refam.testing.tiny_flux import save_tiny_flux


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory) -> Path:
    return save_tiny_flux(tmp_path_factory.mktemp("tiny-flux") / "flux")


@pytest.fixture(scope="session")
def tiny_extractor(tiny_flux_dir):
    from refam.extractors.flux import FluxExtractor

    extractor = FluxExtractor(str(tiny_flux_dir), torch_dtype="float32", resolution=128, caption_max_tokens=16)
    extractor.setup(torch.device("cpu"))
    return extractor

"""What Wan adds to the contract (tests/extractors/contract/entry_wan.py): Wan 2.2's two experts, the
static flow shift of its UniPC scheduler, and refusing an image-to-video checkpoint."""

import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from PIL import Image

from refam.errors import CheckpointError
from refam.extractors.trajectory import NoiseAt
from refam.extractors.wan import WanExtractor
from refam.testing.tiny_wan import build_tiny_wan, save_tiny_wan

SETTINGS = dict(torch_dtype="float32", height=48, width=80, clip_frames=5, caption_max_tokens=16)



@pytest.fixture(scope="module")
def wan22(tmp_path_factory):
    folder = save_tiny_wan(tmp_path_factory.mktemp("wan22") / "pipe", boundary_ratio=0.875)
    extractor = WanExtractor(str(folder), **SETTINGS)
    extractor.setup(torch.device("cpu"))
    return extractor, WanPipeline.from_pretrained(folder)


@pytest.mark.parametrize(("sigma", "expert"), [(0.9, "transformer"), (0.875, "transformer"), (0.6, "transformer_2")])
def test_each_noise_level_runs_the_expert_wanpipeline_runs(wan22, sigma, expert):
    """WanPipeline: `transformer` while timestep >= boundary_ratio x 1000 (high noise), else `transformer_2`."""
    extractor, stock = wan22
    latent = extractor.encode_image(Image.new("RGB", (100, 60), (200, 40, 40)))
    x_t = torch.randn(latent.x0.shape, generator=torch.Generator().manual_seed(0))
    condition = extractor.encode_caption("a dog")
    encoded = extractor.encode_expressions([("the red dog", None), ("a man", None)])
    capture = extractor.new_capture(encoded, condition, latent.grid)
    velocity = extractor.forward(x_t, sigma, latent.grid, condition, encoded, capture)
    with torch.no_grad():
        expected = getattr(stock, expert)(hidden_states=x_t, timestep=torch.tensor([1000.0 * sigma]),
                                          encoder_hidden_states=condition, return_dict=False)[0]
    assert torch.equal(velocity, expected)
    assert capture.observations == extractor.num_blocks == len(stock.transformer.blocks)  # one expert's blocks


def test_the_shift_is_the_schedulers_static_flow_shift(tmp_path):
    """UniPC with flow sigmas and flow_shift 3: sigma 0.75 is observed at 3 x 0.75 / (1 + 2 x 0.75) = 0.9."""
    extractor = WanExtractor(str(save_tiny_wan(tmp_path / "wan")), **SETTINGS, trajectory=NoiseAt(0.75, shift=True))
    extractor.setup(torch.device("cpu"))
    assert extractor.noise_shift(15)(0.75) == pytest.approx(0.9)


def test_an_image_to_video_checkpoint_is_refused():
    pipe = build_tiny_wan()
    config = dict(pipe.transformer.config)
    config["in_channels"] = 36  # I2V: noise, mask and the first frame's latent
    pipe.transformer = WanTransformer3DModel.from_config(config)
    with pytest.raises(CheckpointError, match="image-to-video"):
        WanExtractor("unused", **SETTINGS).use_pipeline(pipe, torch.device("cpu"))

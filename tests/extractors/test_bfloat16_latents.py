"""In bfloat16, the released weights' dtype, the clean latent of a backbone that normalises by per-
channel statistics is the one its own image-conditioned pipeline computes, rounding included: Qwen-
Image as QwenImageImg2ImgPipeline (in the VAE's dtype, times the reciprocal of the cast std), Wan as
WanImageToVideoPipeline (its prepare_latents in float32, then the transformer's dtype). The contract
checks every backbone in float32; this is where the dtype handling shows."""

from pathlib import Path

import pytest
import torch
from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents
from PIL import Image

from tests.extractors.contract.contract import load_entries

ENTRIES = {entry.name: entry for entry in load_entries(Path(__file__).parent / "contract")}


def _stats(config, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # as both pipelines write it: torch.tensor(...).view(...).to(device, dtype), then 1.0 / std
    shape = (1, config.z_dim, 1, 1, 1)
    mean = torch.tensor(config.latents_mean).view(shape).to(like.device, like.dtype)
    return mean, 1.0 / torch.tensor(config.latents_std).view(shape).to(like.device, like.dtype)


def _qwenimage(extractor, image):
    pipe = extractor.pipe
    height, width = extractor.image_size(*image.size)  # refam's setting; the pipeline resizes to what it is given
    pixels = pipe.image_processor.preprocess(image, height=height, width=width).unsqueeze(2).to(dtype=torch.bfloat16)
    latent = retrieve_latents(pipe.vae.encode(pixels), sample_mode="argmax")
    mean, inverse_std = _stats(pipe.vae.config, latent)
    latent = (latent - mean) * inverse_std
    return pipe._pack_latents(latent[:, :, 0], 1, latent.shape[1], latent.shape[3], latent.shape[4])


def _wan(extractor, image):
    pipe = extractor.pipe
    pixels = pipe.video_processor.preprocess_video([image], height=extractor.height, width=extractor.width)
    latent = retrieve_latents(pipe.vae.encode(pixels.to(pipe.vae.dtype)), sample_mode="argmax").to(torch.float32)
    mean, inverse_std = _stats(pipe.vae.config, latent)
    return ((latent - mean) * inverse_std).to(torch.bfloat16)


@pytest.mark.parametrize("name, stock", [("qwenimage", _qwenimage), ("wan", _wan)])
def test_the_bfloat16_clean_latent_is_the_pipelines_own(tmp_path, name, stock):
    entry = ENTRIES[name]
    extractor = entry.extractor_class(str(entry.save(tmp_path / name, 1)), **{**entry.settings, "torch_dtype": "bfloat16"})
    extractor.setup(torch.device("cpu"))
    image = Image.new("RGB", (100, 60), (30, 120, 200))
    image.paste((220, 40, 40), (10, 5, 50, 35))
    with torch.no_grad():
        ours, theirs = extractor.encode_image(image).x0, stock(extractor, image)
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, theirs)

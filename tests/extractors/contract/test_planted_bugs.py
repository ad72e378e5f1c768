"""The contract catches the bugs that slipped past the per-backbone tests it replaced: FLUX's image
ids with rows and columns swapped, and the expression tokens given a RoPE position the caption's
tokens do not get (each planted in a FluxExtractor subclass), and a clean latent normalised wrongly
(SD3's without the VAE's scaling_factor, which every check reading the extractor's own latent on both
sides passes). The contract's checks must fail."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from refam.aggregators.magnets import AppendMagnets
from refam.extractors.flux import FluxExtractor
from refam.extractors.sd3 import SD3Extractor
from refam.extractors.latents import Latent
from refam.extractors.trajectory import NoiseAt
from tests.extractors.contract.contract import clean_latents, load_entries, noised_latent, recomputed_scores

ENTRIES = {entry.name: entry for entry in load_entries(Path(__file__).parent)}
FLUX, SD3 = ENTRIES["flux"], ENTRIES["sd3"]
EXPRESSION = AppendMagnets().augment("the red dog on the left")


class SwappedImageIds(FluxExtractor):
    def denoise(self, x_t, sigma, grid, condition, expressions):
        ids = self.pipe._prepare_latent_image_ids(1, grid[1], grid[2], self.device, self.dtype)
        swapped = ids[:, [0, 2, 1]]  # (0, column, row) instead of (0, row, column)
        text = self.join_text(condition.embeds, expressions)
        return self.pipe.transformer(
            hidden_states=x_t, encoder_hidden_states=text, pooled_projections=condition.pooled,
            timestep=torch.full((1,), sigma), img_ids=swapped, txt_ids=torch.zeros(text.shape[1], 3),
            guidance=condition.guidance, return_dict=False,
        )[0]


class ExpressionTokensOffPosition(FluxExtractor):
    def denoise(self, x_t, sigma, grid, condition, expressions):
        text = self.join_text(condition.embeds, expressions)
        txt_ids = torch.zeros(text.shape[1], 3)
        if expressions is not None:  # the branch's tokens numbered along an axis the caption's are not
            branch_len = expressions.valid.numel()
            txt_ids[:branch_len, 2] = torch.arange(branch_len, dtype=torch.float32)
        return self.pipe.transformer(
            hidden_states=x_t, encoder_hidden_states=text, pooled_projections=condition.pooled,
            timestep=torch.full((1,), sigma), img_ids=self.pipe._prepare_latent_image_ids(1, grid[1], grid[2], "cpu", self.dtype),
            txt_ids=txt_ids, guidance=condition.guidance, return_dict=False,
        )[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return FLUX.save(tmp_path_factory.mktemp("flux-bugs") / "pipe", 2)


def _gap(extractor_class, folder) -> float:
    extractor = extractor_class(str(folder), **{**FLUX.settings, "blocks": [0], "trajectory": NoiseAt(0.6)})
    extractor.setup(torch.device("cpu"))
    stock = FLUX.pipeline_class.from_pretrained(str(folder), dtype=torch.float32)
    image = Image.new("RGB", FLUX.image_size, (30, 120, 200))
    image.paste((220, 40, 40), (10, 5, 50, 35))
    maps = extractor.extract(image, "a dog", [EXPRESSION], "bug")
    expected = recomputed_scores(FLUX, stock, extractor, image, "a dog", EXPRESSION, 0.6, "bug")
    return float((maps.scores[0].flatten(1) - expected).abs().max() / expected.abs().max())


def test_the_correct_extractor_passes(folder):
    assert _gap(FluxExtractor, folder) < 1e-5


@pytest.mark.parametrize("planted", [SwappedImageIds, ExpressionTokensOffPosition], ids=["swapped-image-ids", "expression-rope"])
def test_a_planted_bug_fails_the_recomputation(folder, planted):
    assert _gap(planted, folder) > 1e-2


def test_swapped_image_ids_also_change_the_velocity(folder):
    extractor = SwappedImageIds(str(folder), **FLUX.settings)
    extractor.setup(torch.device("cpu"))
    latent, x_t = noised_latent(extractor, Image.new("RGB", FLUX.image_size), 0.6, "bug")
    with torch.no_grad():
        stock = FLUX.stock_velocity(FLUX.pipeline_class.from_pretrained(str(folder), dtype=torch.float32), x_t, 0.6, latent.grid, "a dog")
    assert not torch.allclose(extractor.forward(x_t, 0.6, latent.grid, extractor.encode_caption("a dog")), stock, atol=1e-4)


class UnscaledLatent(SD3Extractor):
    @torch.inference_mode()
    def encode_image(self, image):
        height, width = self.image_size(*image.size)
        pixels = self.pipe.image_processor.preprocess(image.convert("RGB"), height=height, width=width)
        latent = self.pipe.vae.encode(pixels).latent_dist.mode() - self.pipe.vae.config.shift_factor  # no scaling_factor
        return Latent(latent, (1, latent.shape[2] // 2, latent.shape[3] // 2))


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    return SD3.save(tmp_path_factory.mktemp("sd3-bugs") / "pipe", 1)


@pytest.mark.parametrize("extractor_class, passes", [(SD3Extractor, True), (UnscaledLatent, False)], ids=["sd3", "unscaled-latent"])
def test_a_latent_without_the_vaes_scaling_fails_the_stock_latent_check(sd3_folder, extractor_class, passes):
    extractor = extractor_class(str(sd3_folder), **SD3.settings)
    extractor.setup(torch.device("cpu"))
    stock = SD3.pipeline_class.from_pretrained(str(sd3_folder), dtype=torch.float32)
    ours, expected = clean_latents(SD3, extractor, stock, Image.new("RGB", SD3.image_size, (30, 120, 200)))
    assert torch.equal(ours, expected) == passes

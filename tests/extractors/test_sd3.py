"""What is particular to SD3 / SD3.5 beyond the contract (tests/extractors/contract/entry_sd3.py):
the branch stays out of the image-only `attn2` of dual-attention blocks, the timestep is 1000 sigma
in float32 whatever the weights' dtype, the scheduler's shift is the static 3.0, and bad settings are
one line naming the field (its config: tests/extractors/test_backbone_configs.py)."""

import pytest
import torch
from diffusers.models.attention_processor import JointAttnProcessor2_0
from PIL import Image

from refam.errors import ConfigError
from refam.extractors.sd3 import SD3BranchProcessor, SD3Extractor
from refam.testing.tiny_sd3 import save_tiny_sd3
from refam.text.reader import EncodedExpressions

SETTINGS = dict(resolution=64, keep_aspect=True, caption_max_tokens=16)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_sd3(tmp_path_factory.mktemp("sd3") / "pipe")


def _extractor(folder, **settings):
    extractor = SD3Extractor(str(folder), **{"torch_dtype": "float32", **SETTINGS, **settings})
    extractor.setup(torch.device("cpu"))
    return extractor


def test_the_branch_rides_in_attn_and_never_in_the_image_only_attn2(folder):
    extractor = _extractor(folder)
    dual, plain, last = extractor.pipe.transformer.transformer_blocks
    assert [type(b.attn.processor) for b in (dual, plain, last)] == [SD3BranchProcessor] * 3
    assert type(dual.attn2.processor) is JointAttnProcessor2_0
    assert [p.block_index for p in extractor.processors] == [0, 1, 2]


def test_the_transformer_is_told_1000_sigma_in_float32_with_bfloat16_weights(folder):
    extractor = _extractor(folder, torch_dtype="bfloat16")
    told = []
    hook = extractor.pipe.transformer.time_text_embed.register_forward_pre_hook(lambda _m, args: told.append(args[0]))
    try:
        latent = extractor.encode_image(Image.new("RGB", (96, 64)))
        extractor.forward(latent.x0, 0.75, latent.grid, extractor.encode_caption("a dog"))
    finally:
        hook.remove()
    assert told[0].dtype == torch.float32 and told[0].item() == 750.0  # bfloat16 would make it 752


def test_the_noise_shift_is_the_checkpoints_static_shift(folder):
    shift = _extractor(folder).noise_shift(4096)
    assert shift(0.75) == pytest.approx(0.9) and shift(0.5) == pytest.approx(0.75)  # 3 s / (1 + 2 s), any size


@pytest.mark.parametrize("field, value", [("resolution", 100), ("caption_max_tokens", 600)])
def test_a_bad_setting_is_one_line_naming_its_field(field, value):
    with pytest.raises(ConfigError) as error:
        SD3Extractor("unused", **{**SETTINGS, field: value})
    assert error.value.field == field and "\n" not in str(error.value)


def test_the_templates_defaults_place_all_three_text_encoders_and_join_the_branch_after_the_caption(folder):
    extractor = _extractor(folder)
    pipe = extractor.pipe
    encoders, denoiser, resident = extractor.placement_modules(pipe)
    assert encoders == [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3]
    assert denoiser is pipe.transformer and resident == [pipe.vae]
    text = torch.zeros(1, 3, 4)
    embeds = torch.tensor([1.0, 2.0], dtype=torch.float64)[:, None, None].expand(2, 1, 4)  # K = 2 expressions of 1 token
    expressions = EncodedExpressions(embeds, torch.ones(2, 1, dtype=torch.bool), [[], []])
    joined = extractor.join_text(text, expressions)
    assert joined.dtype == text.dtype and joined[0, :, 0].tolist() == [0, 0, 0, 1, 2]  # [caption | expressions]
    assert extractor.join_text(text, None) is text

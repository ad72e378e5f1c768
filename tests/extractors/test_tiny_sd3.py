"""The tiny Stable Diffusion 3.5 pipeline (refam.testing.tiny_sd3) is the real diffusers pipeline:
its folder loads offline, the stock `encode_prompt` and transformer run unchanged, and it has the
three MMDiT block kinds of SD3.5-medium (dual attention, plain, `context_pre_only`)."""

import json

import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0
from diffusers.models.normalization import RMSNorm

from refam.testing.tiny_sd3 import CLIP_WIDTHS, T5_WIDTH, build_tiny_sd3, save_tiny_sd3

CAPTION_T5_TOKENS = 16



@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3") / "sd3")


@pytest.fixture(scope="module")
def pipe(folder):
    return StableDiffusion3Pipeline.from_pretrained(folder, local_files_only=True)


def test_the_folder_has_the_real_layout_and_loads_offline(folder, pipe):
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    assert index["transformer"] == ["diffusers", "SD3Transformer2DModel"]
    assert index["text_encoder"] == index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert index["text_encoder_3"] == ["transformers", "T5EncoderModel"]
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["shift"] == 3.0 and not scheduler["use_dynamic_shifting"]  # as the SD3.5 checkpoints
    # the weights that were saved are the ones a fresh build with the same seed makes
    loaded = pipe.transformer.state_dict()
    for name, tensor in build_tiny_sd3(seed=0).transformer.state_dict().items():
        assert torch.equal(loaded[name], tensor), name


def test_the_build_is_deterministic_by_seed():
    first = build_tiny_sd3(seed=0).transformer.state_dict()
    again = build_tiny_sd3(seed=0).transformer.state_dict()
    other = build_tiny_sd3(seed=1).transformer.state_dict()
    name = "transformer_blocks.0.attn.add_k_proj.weight"
    assert torch.equal(first[name], again[name]) and not torch.equal(first[name], other[name])


def test_it_has_the_three_block_kinds_of_sd35_medium(pipe):
    first, middle, last = pipe.transformer.transformer_blocks
    assert first.use_dual_attention and isinstance(first.attn2, Attention)  # MMDiT-X: an image-only attention
    assert first.attn2.add_k_proj is None
    assert not middle.use_dual_attention and middle.attn2 is None and not middle.context_pre_only
    assert last.context_pre_only and last.attn.to_add_out is None  # the caption is not updated any more
    assert all(isinstance(b.attn.processor, JointAttnProcessor2_0) for b in (first, middle, last))
    # QK RMSNorm on both streams, with scales that differ between them
    attn = middle.attn
    assert all(isinstance(n, RMSNorm) for n in (attn.norm_q, attn.norm_k, attn.norm_added_q, attn.norm_added_k))
    assert not torch.allclose(attn.norm_k.weight, attn.norm_added_k.weight)


def test_the_stock_encode_prompt_runs(pipe):
    embeds, _, pooled, _ = pipe.encode_prompt(
        "the red dog on the left", None, None, do_classifier_free_guidance=False, max_sequence_length=CAPTION_T5_TOKENS
    )
    clip_tokens = pipe.tokenizer.model_max_length
    assert embeds.shape == (1, clip_tokens + CAPTION_T5_TOKENS, T5_WIDTH)
    assert pooled.shape == (1, sum(CLIP_WIDTHS))
    clip_part, t5_part = embeds[0, :clip_tokens], embeds[0, clip_tokens:]
    # CLIP-L and CLIP-G features side by side, zero-padded up to T5's width
    assert clip_part[:, sum(CLIP_WIDTHS) :].abs().max() == 0 and clip_part[:, : sum(CLIP_WIDTHS)].abs().max() > 0
    # T5 reads the caption padded to max_sequence_length with no attention mask
    ids = pipe.tokenizer_3("the red dog on the left", padding="max_length", max_length=CAPTION_T5_TOKENS,
                           return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(t5_part, pipe.text_encoder_3(ids)[0][0], atol=1e-5)
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == pipe.tokenizer.eos_token


def test_the_stock_transformer_runs_on_a_non_square_grid(pipe):
    pixels = torch.rand(1, 3, 64, 96) * 2 - 1  # 64 x 96 px -> latent 8 x 12 -> 4 x 6 tokens
    with torch.no_grad():
        latent = pipe.vae.encode(pixels).latent_dist.mode()
        embeds, _, pooled, _ = pipe.encode_prompt("a man", None, None, do_classifier_free_guidance=False,
                                                  max_sequence_length=CAPTION_T5_TOKENS)

        def velocity(timestep):
            return pipe.transformer(hidden_states=latent, encoder_hidden_states=embeds, pooled_projections=pooled,
                                    timestep=torch.tensor([timestep]), return_dict=False)[0]

        out = velocity(750.0)
    assert latent.shape == (1, 16, 8, 12) and out.shape == latent.shape and out.isfinite().all()
    assert not torch.allclose(out, velocity(250.0))  # the noise level reaches the output

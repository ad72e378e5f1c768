"""HunyuanVideo 1.5 beyond the contract: the tiny pipeline is the real one (its Qwen prefix is the
pipeline's 108-token crop), and the contract fails on the bugs its token refiner and LLM reader
invite: a reader of the wrong hidden layer (only the encode_prompt check sees it), rows without the
Qwen condition-type embedding (block 0), and K expressions refined as one caption (K alone)."""

import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image

from refam.aggregators.magnets import AppendMagnets
from refam.errors import ConfigError
from refam.extractors.hunyuanvideo15 import HunyuanVideo15Extractor
from refam.extractors.text_side import each_alone
from refam.extractors.trajectory import NoiseAt
from refam.testing.tiny_hunyuanvideo15 import build_hunyuanvideo15_tokenizer, build_tiny_hunyuanvideo15
from tests.extractors.contract.contract import load_entries, recomputed_scores

ENTRY = next(e for e in load_entries(Path(__file__).parent / "contract") if e.name == "hunyuanvideo15")
EXPRESSIONS = [AppendMagnets().augment(e) for e in ("the red dog on the left", "a man")]
CAPTION, SIGMA = "a dog and a man", 0.6


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return ENTRY.save(tmp_path_factory.mktemp("hunyuanvideo15") / "pipe", 2)


@pytest.fixture(scope="module")
def stock(folder):
    return ENTRY.pipeline_class.from_pretrained(str(folder), dtype=torch.float32)


def _extractor(folder, **overrides):
    extractor = HunyuanVideo15Extractor(str(folder), **{**ENTRY.settings, "trajectory": NoiseAt(SIGMA), **overrides})
    extractor.setup(torch.device("cpu"))
    return extractor


def _picture():
    image = Image.new("RGB", ENTRY.image_size, (30, 120, 200))
    image.paste((220, 40, 40), (10, 5, 50, 35))
    return image


def _block0_gap(folder, stock) -> float:
    extractor = _extractor(folder, blocks=[0])
    maps = extractor.extract(_picture(), CAPTION, EXPRESSIONS[:1], "bug")
    expected = recomputed_scores(ENTRY, stock, extractor, _picture(), CAPTION, EXPRESSIONS[0], SIGMA, "bug")
    return float((maps.scores[0].flatten(1) - expected).abs().max() / expected.abs().max())


def _rows_gap(folder, stock) -> float:
    encoded = _extractor(folder).encode_expressions(EXPRESSIONS[:1])
    with torch.no_grad():
        expected = ENTRY.stock_expression(stock, EXPRESSIONS[0][0], int(encoded.valid[0].sum()))
    return float((encoded.embeds[0, encoded.valid[0]] - expected).abs().max() / expected.abs().max())


def _k_maps(folder):
    """(K together, alone): the second expression's maps, as the contract's K-alone check compares them."""
    extractor = _extractor(folder)
    together = extractor.extract(_picture(), CAPTION, EXPRESSIONS, "k")
    alone = extractor.extract(_picture(), CAPTION, EXPRESSIONS[1:], "k")
    return together.scores[1, : alone.valid.shape[1]], alone.scores[0]


def test_the_tiny_pipeline_is_the_real_one(stock):
    from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15Transformer3DModel
    from transformers import Qwen2_5_VLTextModel

    assert isinstance(stock.transformer, HunyuanVideo15Transformer3DModel)
    assert isinstance(stock.vae, AutoencoderKLHunyuanVideo15) and isinstance(stock.text_encoder, Qwen2_5_VLTextModel)
    assert stock.scheduler.config.shift == 5.0
    config = stock.transformer.config
    assert config.text_embed_dim != config.num_attention_heads * config.attention_head_dim  # the refiner projects
    scales = stock.transformer.transformer_blocks[0].attn.norm_added_k.weight
    assert not torch.allclose(scales, torch.ones_like(scales))  # random QK scales


def test_the_chat_templates_prefix_is_the_pipelines_crop():
    """encode_prompt drops 108 tokens: the tiny tokenizer's prefix is exactly that long, as the real one's."""
    from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import format_text_input

    from refam.testing.tiny_hunyuanvideo15 import hunyuanvideo15_system_message

    tokenizer = build_hunyuanvideo15_tokenizer()
    text = tokenizer.apply_chat_template(format_text_input(["{}"], hunyuanvideo15_system_message()),
                                         add_generation_prompt=True, tokenize=False)[0]
    assert len(tokenizer(text.split("{}")[0])["input_ids"]) == 108


def test_builds_are_deterministic_by_seed():
    first, again, other = (build_tiny_hunyuanvideo15(seed=s, layers=1).transformer.state_dict() for s in (0, 0, 1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_a_reader_of_the_wrong_hidden_layer_fails_the_encode_prompt_check_only(folder, stock, monkeypatch):
    assert _rows_gap(folder, stock) < 1e-5
    original = HunyuanVideo15Extractor.expression_reader

    def one_layer_later(self):
        reader = original(self)
        reader.template = dataclasses.replace(reader.template, hidden_layers=(-2,))  # the pipeline reads -3
        return reader

    monkeypatch.setattr(HunyuanVideo15Extractor, "expression_reader", one_layer_later)
    assert _block0_gap(folder, stock) < 1e-4  # the map checks read the extractor's own rows on both sides
    assert _rows_gap(folder, stock) > 1e-2


def test_rows_without_the_condition_type_embedding_fail_block_0(folder, stock, monkeypatch):
    assert _block0_gap(folder, stock) < 1e-4

    def unembedded(self, expressions, sigma):  # the token refiner alone
        model, timestep = self.pipe.transformer, self.timestep_tensor(sigma)
        return each_alone(expressions, lambda rows: model.context_embedder(rows, timestep, rows.new_ones(rows.shape[:2])))

    monkeypatch.setattr(HunyuanVideo15Extractor, "text_side", unembedded)
    assert _block0_gap(folder, stock) > 1e-2


def test_expressions_refined_as_one_caption_fail_the_k_alone_check(folder, monkeypatch):
    torch.testing.assert_close(*_k_maps(folder), rtol=1e-4, atol=1e-5)  # the contract's tolerance
    original = HunyuanVideo15Extractor.text_side

    def as_one_caption(self, expressions, sigma):  # the refiner mixes the K expressions' tokens
        flat = dataclasses.replace(expressions, embeds=expressions.embeds.flatten(0, 1)[None],
                                   valid=expressions.valid.flatten()[None])
        rows = original(self, flat, sigma).embeds
        return dataclasses.replace(expressions, embeds=rows.reshape(*expressions.valid.shape, -1))

    monkeypatch.setattr(HunyuanVideo15Extractor, "text_side", as_one_caption)
    with pytest.raises(AssertionError, match="not close"):
        torch.testing.assert_close(*_k_maps(folder), rtol=1e-4, atol=1e-5)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="height"):
        HunyuanVideo15Extractor("unused", height=488)
    with pytest.raises(ConfigError, match="clip_frames"):
        HunyuanVideo15Extractor("unused", clip_frames=20)

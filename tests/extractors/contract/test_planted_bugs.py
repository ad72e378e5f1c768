"""The contract catches the bugs that slipped past the per-backbone tests it replaced: FLUX's image
ids with rows and columns swapped, and the expression tokens given a RoPE position the caption's
tokens do not get (each planted in a FluxExtractor subclass), and a clean latent normalised wrongly
(SD3's without the VAE's scaling_factor, which every check reading the extractor's own latent on both
sides passes). And those that slipped past the contract itself while it recomputed block 0 alone,
read the extractor's own expression embeddings on both sides, built tiny models whose QK norms
scaled by 1 and whose text was as wide as the model, and copied refam's VP timestep: an expression
that also sees the caption (visible from block 1 on), expression keys without their QK norm in
single-stream blocks, a text-key norm swapped for the image one, an expression skipping the text
projection, a reader of the wrong LLM hidden layers, and a VP timestep one step off; on a model that
reads text block-causally (Qwen-Image 2.1), an expression that sees the image and its own later tokens. And LTX-2's
own: branch keys without norm_k, Gemma's layers concatenated instead of stacked, expressions refined as a short
prompt, a video that attends to the audio. The contract's checks must fail on each, and pass on the code as it is."""

import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image

from refam.aggregators.magnets import AppendMagnets
from refam.extractors import cogvideox, ltx2, qwenimage
from refam.extractors.branch import split_heads
from refam.extractors.capture import BranchLayout
from refam.extractors.flux import FluxBranchProcessor, FluxExtractor, flux_joint
from refam.extractors.flux2 import Flux2Extractor
from refam.extractors.sd3 import SD3Extractor
from refam.extractors.latents import Latent
from refam.extractors.trajectory import NoiseAt
from refam.extractors.vp import VPFlow
from refam.text.decoder import DecoderReader
from tests.extractors.contract.contract import (clean_latents, every_block_gaps, load_entries, noised_latent,
                                                recomputed_scores)

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


# ---------------------------------------------------------------- blind spots of a block-0 contract
CAPTION, SIGMA = "a dog and a man", 0.6


def _loaded(entry, folder, **overrides):
    extractor = entry.extractor_class(str(folder), **{**entry.settings, "trajectory": NoiseAt(SIGMA), **overrides})
    extractor.setup(torch.device("cpu"))
    return extractor


def _picture(entry):
    image = Image.new("RGB", entry.image_size, (30, 120, 200))
    image.paste((220, 40, 40), (10, 5, 50, 35))
    return image


def _block0_gap(entry, folder) -> float:
    """The block-0 check (test_maps_are_the_stock_modules_with_the_stock_rope_on_a_non_square_grid)."""
    stock = entry.pipeline_class.from_pretrained(str(folder), dtype=torch.float32)
    sigma = entry.stock_sigma(stock)
    extractor = _loaded(entry, folder, blocks=[0], trajectory=NoiseAt(sigma))
    maps = extractor.extract(_picture(entry), CAPTION, [EXPRESSION], "bug")
    expected = recomputed_scores(entry, stock, extractor, _picture(entry), CAPTION, EXPRESSION, sigma, "bug")
    return float((maps.scores[0].flatten(1) - expected).abs().max() / expected.abs().max())


def _block_gaps(entry, folder, softmax_stage="after_mean") -> dict[int, float]:
    """{block: its map's gap} of the every-block check, cross-attention space."""
    gaps = every_block_gaps(entry, _loaded(entry, folder), _picture(entry), CAPTION, EXPRESSION, SIGMA, softmax_stage,
                            ["cross_attention"])
    return {block: gap for (_, block), gap in gaps.items()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folders = {}

    def folder(name):
        if name not in folders:
            folders[name] = ENTRIES[name].save(tmp_path_factory.mktemp(name) / "pipe", 2)
        return folders[name]

    return folder


def _caption_leak(original):
    def key_bias(self, num_image_tokens):  # the caption's columns opened to the branch's queries
        bias, start = original(self, num_image_tokens), 0
        for segment in self.key_order:
            size = {"branch": self.branch_len, "caption": self.caption_len, "image": num_image_tokens}[segment]
            if segment == "caption":
                bias[:, start : start + size] = 0.0
            start += size
        return bias

    return key_bias


@pytest.mark.parametrize("name", ["flux", "sd3", "mochi", "cogvideox", "qwenimage", "zimage", "lumina2", "hunyuanimage",
                                  "cogview4", "qwenimage21", "hidream"])
@pytest.mark.parametrize("softmax_stage", ["after_mean", "per_head"])
def test_an_expression_that_also_sees_the_caption_fails_at_block_1_not_block_0(tiny, monkeypatch, name, softmax_stage):
    entry, folder = ENTRIES[name], tiny(name)
    assert max(_block_gaps(entry, folder, softmax_stage).values()) < 1e-4  # the code as it is
    monkeypatch.setattr(BranchLayout, "key_bias", _caption_leak(BranchLayout.key_bias))
    gaps = _block_gaps(entry, folder, softmax_stage)
    assert gaps[0] < 1e-4 and _block0_gap(entry, folder) < 1e-4  # block 0's keys come before any attention
    assert max(gap for block, gap in gaps.items() if block > 0) > 1e-3  # ten times the check's tolerance


def _bidirectional(original):
    def key_bias(self, num_image_tokens):  # the expression read as a bidirectional model reads it: all of it and the image
        return original(dataclasses.replace(self, causal=False), num_image_tokens)

    return key_bias


@pytest.mark.parametrize("softmax_stage", ["after_mean", "per_head"])
def test_a_causal_text_expression_that_sees_the_image_and_its_later_tokens_fails_at_block_1(tiny, monkeypatch, softmax_stage):
    """Qwen-Image 2.1 reads text block-causally (`causal_text`): an expression that sees its whole self and the
    image, as on the bidirectional models, keeps block 0's keys and changes every later block's."""
    entry, folder = ENTRIES["qwenimage21"], tiny("qwenimage21")
    assert entry.causal_text and max(_block_gaps(entry, folder, softmax_stage).values()) < 1e-4
    monkeypatch.setattr(BranchLayout, "key_bias", _bidirectional(BranchLayout.key_bias))
    gaps = _block_gaps(entry, folder, softmax_stage)
    assert gaps[0] < 1e-4 and max(gap for block, gap in gaps.items() if block > 0) > 1e-3


def test_expression_keys_without_their_qk_norm_in_single_blocks_fail_there(tiny, monkeypatch):
    stock_with_branch = FluxBranchProcessor.with_branch

    def unnormed(self, capture, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb):
        if encoder_hidden_states is not None:  # double block: as it is
            return stock_with_branch(self, capture, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        query, value = split_heads(attn, attn.to_q(hidden_states), attn.norm_q), split_heads(attn, attn.to_v(hidden_states))
        key, raw = split_heads(attn, attn.to_k(hidden_states), attn.norm_k), split_heads(attn, attn.to_k(hidden_states))
        branch = capture.layout.branch_len  # [branch | caption | image]: the branch's keys skip norm_k
        key = torch.cat([raw[:, :branch], key[:, branch:]], dim=1)
        return flux_joint(self, capture, query, key, value, attention_mask, image_rotary_emb)

    monkeypatch.setattr(FluxBranchProcessor, "with_branch", unnormed)
    folder = tiny("flux")
    assert _block0_gap(FLUX, folder) < 1e-4  # block 0 is a double block
    gaps = _block_gaps(FLUX, folder)  # 2 double blocks, then 2 single ones
    assert max(gaps[0], gaps[1]) < 1e-4 and min(gaps[2], gaps[3]) > 1e-2, gaps


def _unit_qk_norms(*modules):
    for module in modules:
        for name, parameter in module.named_parameters():
            if any(f"norm_{kind}." in name for kind in ("q", "k", "added_q", "added_k")) and name.endswith("weight"):
                parameter.data.fill_(1.0)


def test_a_text_key_norm_swapped_for_the_image_one_fails_where_norm_scales_differ(tiny, monkeypatch):
    """Qwen-Image's text keys normed by the image stream's norm_k: with the tiny model's random QK
    scales the block-0 check fails; with every scale 1 (a fresh model's) the two norms are one
    function, and it passed."""
    stock_qkv = qwenimage.stream_qkv

    def swapped(attn, x, added=False):
        query, key, value = stock_qkv(attn, x, added)
        return query, split_heads(attn, attn.add_k_proj(x), attn.norm_k) if added else key, value

    monkeypatch.setattr(qwenimage, "stream_qkv", swapped)
    entry, folder = ENTRIES["qwenimage"], tiny("qwenimage")
    assert _block0_gap(entry, folder) > 1e-2

    extractor, stock = _loaded(entry, folder, blocks=[0]), entry.pipeline_class.from_pretrained(str(folder), dtype=torch.float32)
    _unit_qk_norms(extractor.pipe.transformer, stock.transformer)
    maps = extractor.extract(_picture(entry), CAPTION, [EXPRESSION], "bug")
    expected = recomputed_scores(entry, stock, extractor, _picture(entry), CAPTION, EXPRESSION, SIGMA, "bug")
    assert (maps.scores[0].flatten(1) - expected).abs().max() / expected.abs().max() < 1e-4


def test_an_expression_that_skips_the_text_projection_cannot_pass(tiny, monkeypatch):
    """CogVideoX's branch tokens given to the blocks without `text_proj`: with T5 narrower than the
    transformer, as the real ones, the contract's forwards cannot run at all."""
    def unprojected(self, module, args, out):
        if self.branch is not None:
            branch, self.branch = self.branch, None
            return torch.cat([branch, out], dim=1)

    monkeypatch.setattr(cogvideox.BranchSkipsPositions, "join", unprojected)
    with pytest.raises(RuntimeError, match="[Ss]izes of tensors must match"):
        _block0_gap(ENTRIES["cogvideox"], tiny("cogvideox"))


def _velocity_gap(entry, folder) -> float:
    """The velocity check's largest difference: the extractor's forward against the stock call at the entry's level."""
    stock = entry.pipeline_class.from_pretrained(str(folder), dtype=torch.float32)
    extractor, sigma = _loaded(entry, folder), entry.stock_sigma(stock)
    latent, x_t = noised_latent(extractor, _picture(entry), sigma, "bug")
    with torch.no_grad():
        expected = entry.stock_velocity(stock, x_t, sigma, latent.grid, CAPTION)
    return float((extractor.forward(x_t, sigma, latent.grid, extractor.encode_caption(CAPTION)) - expected).abs().max())


def _rows_gap(entry, extractor, stock) -> float:
    encoded = extractor.encode_expressions([EXPRESSION])
    length = int(encoded.valid[0].sum())
    with torch.no_grad():
        expected = entry.stock_expression(stock, EXPRESSION[0], length)
    return float((encoded.embeds[0, encoded.valid[0]] - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("name", ["flux2", "flux2-klein"])
def test_a_reader_of_the_wrong_hidden_layers_fails_the_encode_prompt_check(tiny, monkeypatch, name):
    """FLUX.2's expressions read from LLM layers other than the ones the pipeline stacks for a caption:
    every map check reads the extractor's own embeddings on both sides and passes; the rows do not
    match the stock encode_prompt's."""
    entry, folder = ENTRIES[name], tiny(name)
    stock = entry.pipeline_class.from_pretrained(str(folder), dtype=torch.float32)
    assert _rows_gap(entry, _loaded(entry, folder), stock) < 1e-5
    monkeypatch.setattr(Flux2Extractor, "expression_reader", _shifted_layers(Flux2Extractor.expression_reader))
    assert _block0_gap(entry, folder) < 1e-4
    assert _rows_gap(entry, _loaded(entry, folder), stock) > 1e-2


def _shifted_layers(original):
    def reader(self):
        made = original(self)
        made.template = dataclasses.replace(made.template, hidden_layers=tuple(layer - 1 for layer in made.template.hidden_layers))
        return made

    return reader


def test_a_vp_timestep_one_step_off_fails_the_scheduler_and_velocity_checks(tiny, monkeypatch):
    entry, folder = ENTRIES["cogvideox"], tiny("cogvideox")
    stock = entry.pipeline_class.from_pretrained(str(folder), dtype=torch.float32)

    def gaps():
        told = max(abs(_loaded(entry, folder).timestep(sigma) - t) for sigma, t in entry.scheduler_levels(stock))
        return told, _velocity_gap(entry, folder)

    told, velocity = gaps()
    assert told < 1e-6 and velocity < 1e-5
    stock_timestep = VPFlow.timestep
    monkeypatch.setattr(VPFlow, "timestep", lambda self, sigma: stock_timestep(self, sigma) + 1.0)
    told, velocity = gaps()
    assert told == pytest.approx(1.0) and velocity > 1e-4


# ---------------------------------------------------------------- LTX-2's own parts
class _FirstCallOnly(torch.nn.Module):
    """A norm applied on its first call only; later calls pass their input through."""

    def __init__(self, norm: torch.nn.Module) -> None:
        super().__init__()
        self.norm, self.calls = norm, 0

    def forward(self, x):
        self.calls += 1
        return self.norm(x) if self.calls == 1 else x


def _ltx2_unnormed_branch_keys(monkeypatch):  # attn2 norms the caption's keys, then the branch's: those skip norm_k
    original = ltx2.LTX2BranchProcessor.with_branch

    def with_branch(self, capture, attn, *args, **kwargs):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(attn, "norm_k", _FirstCallOnly(attn.norm_k))
            return original(self, capture, attn, *args, **kwargs)

    monkeypatch.setattr(ltx2.LTX2BranchProcessor, "with_branch", with_branch)


def _ltx2_layers_unstacked(monkeypatch):  # Gemma's layers concatenated one after the other, not stacked per feature
    monkeypatch.setattr(ltx2.StackedLayersReader, "encode", DecoderReader.encode)


def _ltx2_short_prompt(monkeypatch):  # each expression through the connectors as a prompt of 16 tokens, not 32
    original = ltx2.LTX2Extractor.text_side

    def text_side(self, expressions, sigma):
        kept, self.caption_max_tokens = self.caption_max_tokens, 16
        try:
            return original(self, expressions, sigma)
        finally:
            self.caption_max_tokens = kept

    monkeypatch.setattr(ltx2.LTX2Extractor, "text_side", text_side)


def _ltx2_audio_attended(monkeypatch):  # the forward lets the video attend to the (zero) audio latent
    original = ltx2.LTX2Extractor.denoise

    def denoise(self, *args):
        forward = self.pipe.transformer.forward
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(self.pipe.transformer, "forward", lambda *a, **k: forward(*a, **{**k, "isolate_modalities": False}))
            return original(self, *args)

    monkeypatch.setattr(ltx2.LTX2Extractor, "denoise", denoise)


@pytest.mark.parametrize("plant, fails", [
    (None, set()),
    (_ltx2_unnormed_branch_keys, {"block 0"}),
    (_ltx2_layers_unstacked, {"rows"}),
    (_ltx2_short_prompt, {"block 0"}),
    (_ltx2_audio_attended, {"velocity"}),
], ids=["as-it-is", "branch-keys-without-norm_k", "gemma-layers-unstacked", "connectors-on-a-short-prompt", "audio-attended"])
def test_ltx2s_planted_bugs_fail_the_check_that_sees_them(tiny, monkeypatch, plant, fails):
    """LTX-2's own ways to be wrong, each caught by one check and passing the others: branch keys without attn2's
    norm_k (block 0's maps), Gemma's hidden states concatenated instead of stacked per feature as the pipeline packs
    them (the encode_prompt rows: every map check reads the extractor's rows on both sides and passes), expressions
    refined by the connectors as a prompt shorter than the caption's, so beside fewer registers (block 0's maps), and
    a forward whose video attends to the audio latent (the velocity: the stock call draws the pipeline's audio noise
    and isolates the modalities)."""
    entry, folder = ENTRIES["ltx2"], tiny("ltx2")
    if plant is not None:
        plant(monkeypatch)
    stock = entry.pipeline_class.from_pretrained(str(folder), dtype=torch.float32)
    gaps = {"block 0": _block0_gap(entry, folder), "rows": _rows_gap(entry, _loaded(entry, folder), stock),
            "velocity": _velocity_gap(entry, folder)}
    assert {check for check, gap in gaps.items() if gap > 1e-4} == fails, gaps
    assert all(gaps[check] > 1e-2 for check in fails), gaps

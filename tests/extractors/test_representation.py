"""The "attention output" representation space (ConceptAttention; the paper's Table 8) against the
default cross-attention space, on a tiny FLUX (2 double blocks, numbered 0-1, then 2 single, 2-3)."""

import math

import pytest
import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
from PIL import Image

from refam.aggregators.magnets import AppendMagnets
from refam.errors import ConfigError
from refam.extractors.capture import AttentionCapture, BranchLayout
from refam.extractors.flux import FluxExtractor

MAGNETS = AppendMagnets()
EXPRESSIONS = ["the red dog on the left", "a man", "the small blue car near the tree"]
DOUBLE_BLOCK, SINGLE_BLOCK = 1, 3


def _inputs(extractor, expressions=EXPRESSIONS, caption="a dog and a man"):
    image = Image.new("RGB", (96, 80), (40, 90, 160))
    latent = extractor.encode_image(image)
    noise = torch.randn(latent.x0.shape, generator=torch.Generator().manual_seed(0))
    x_t = 0.25 * latent.x0 + 0.75 * noise
    encoded = extractor.encode_expressions([MAGNETS.augment(e) for e in expressions])
    return x_t, latent.grid, extractor.encode_caption(caption), encoded


def _capture(condition, encoded, grid, blocks, representation, softmax_stage="after_mean"):
    return AttentionCapture(
        BranchLayout(caption_len=condition.embeds.shape[1], key_valid=encoded.valid),
        num_image_tokens=math.prod(grid),
        selected_blocks=set(blocks),
        softmax_stage=softmax_stage,
        representation=representation,
    )


def _extractor(tiny_flux_dir, **kwargs):
    extractor = FluxExtractor(str(tiny_flux_dir), torch_dtype="float32", resolution=128, caption_max_tokens=16, **kwargs)
    extractor.setup(torch.device("cpu"))
    return extractor


# ------------------------------------------------------------------ the default is unchanged


def test_the_default_representation_is_cross_attention(tiny_flux_dir):
    extractor = FluxExtractor(str(tiny_flux_dir))
    assert extractor.representation == "cross_attention"
    layout = BranchLayout(caption_len=1, key_valid=torch.ones(1, 2, dtype=torch.bool))
    assert AttentionCapture(layout, 4, {0}).representation == "cross_attention"


@pytest.mark.parametrize("softmax_stage", ["after_mean", "per_head"])
def test_cross_attention_scores_are_bit_identical_to_the_original_formula(softmax_stage):
    """The formula the capture used before representations existed, verbatim: the default must
    reproduce it bit for bit."""
    generator = torch.Generator().manual_seed(1)
    n, k, length, heads, dim = 12, 3, 5, 2, 8
    valid = torch.ones(k, length, dtype=torch.bool)
    valid[1, 3:] = False
    valid[2, 1:] = False
    q_img = torch.randn(n, heads, dim, generator=generator)
    k_expr = torch.randn(k, length, heads, dim, generator=generator)
    text_probs = torch.rand(heads, k * length, k * length, generator=generator)

    capture = AttentionCapture(BranchLayout(caption_len=4, key_valid=valid), n, {0}, softmax_stage=softmax_stage)
    for _ in range(2):
        capture.add(q_img, k_expr, text_probs)

    scores = torch.zeros(n, k, length)
    scale = dim**-0.5
    for _ in range(2):
        if softmax_stage == "after_mean":
            logits = q_img.flatten(1).float() @ k_expr.flatten(2).flatten(0, 1).float().T
            scores.add_(logits.view_as(scores), alpha=scale / heads)
        else:
            logits = torch.einsum("nhd,klhd->hnkl", q_img.float(), k_expr.float()) * scale
            logits = logits.masked_fill(~valid, float("-inf"))
            scores.add_(logits.softmax(dim=-1).nan_to_num_(0.0).mean(dim=0))
    assert torch.equal(capture.scores, scores)


# ------------------------------------------------------------------ invariants in attention_output mode


@pytest.mark.parametrize("softmax_stage", ["after_mean", "per_head"])
def test_branch_is_invisible_to_the_denoising_stream_in_attention_output_mode(tiny_extractor, softmax_stage):
    x_t, grid, condition, encoded = _inputs(tiny_extractor)
    plain = tiny_extractor.forward(x_t, 0.75, grid, condition)
    capture = _capture(condition, encoded, grid, range(tiny_extractor.num_blocks), "attention_output", softmax_stage)
    with_branch = tiny_extractor.forward(x_t, 0.75, grid, condition, encoded, capture)
    assert capture.observations == tiny_extractor.num_blocks
    assert capture.scores.abs().sum() > 0
    assert torch.equal(with_branch, plain), f"max difference {(with_branch - plain).abs().max():.3g}"


def test_per_head_attention_output_maps_are_distributions_over_the_real_tokens(tiny_flux_dir):
    extractor = _extractor(tiny_flux_dir, softmax_stage="per_head", representation="attention_output")
    maps = extractor.extract(Image.new("RGB", (96, 80), (20, 160, 90)), "", [MAGNETS.augment(e) for e in EXPRESSIONS], "s")
    assert maps.kind == "probs"
    assert not maps.valid.all()  # the shorter expressions are padded
    padding = ~maps.valid[:, :, None, None].expand_as(maps.scores)
    assert (maps.scores[padding] == 0).all()
    assert (maps.scores >= 0).all()
    torch.testing.assert_close(maps.scores.sum(dim=1), torch.ones(maps.scores.shape[0], *maps.scores.shape[2:]))
    assert not torch.allclose(maps.scores[0, 0], maps.scores[0, 0, 0, 0].expand_as(maps.scores[0, 0]))  # not flat


def test_extractor_passes_the_representation_to_its_capture(tiny_flux_dir):
    extractor = _extractor(tiny_flux_dir, representation="attention_output")
    _, grid, condition, encoded = _inputs(extractor)
    assert extractor.new_capture(encoded, condition, grid).representation == "attention_output"


@pytest.mark.parametrize("softmax_stage", ["after_mean", "per_head"])
def test_attention_output_capture_accumulates_in_place(tiny_extractor, softmax_stage):
    x_t, grid, condition, encoded = _inputs(tiny_extractor)
    capture = _capture(condition, encoded, grid, range(tiny_extractor.num_blocks), "attention_output", softmax_stage)
    tensors = {name: (t.data_ptr(), t.shape) for name, t in vars(capture).items() if isinstance(t, torch.Tensor)}
    tiny_extractor.forward(x_t, 0.75, grid, condition, encoded, capture)
    tiny_extractor.forward(x_t, 0.5, grid, condition, encoded, capture)
    assert capture.observations == 2 * tiny_extractor.num_blocks
    after = {name: (t.data_ptr(), t.shape) for name, t in vars(capture).items() if isinstance(t, torch.Tensor)}
    assert after == tensors  # no new buffers, the same storage


def test_a_bad_representation_is_a_config_error(tiny_flux_dir):
    with pytest.raises(ConfigError, match=r"^representation: .*cross_attention.*attention_output") as raised:
        FluxExtractor(str(tiny_flux_dir), representation="concept_attention")
    assert raised.value.field == "representation"
    layout = BranchLayout(caption_len=1, key_valid=torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="representation"):
        AttentionCapture(layout, 4, {0}, representation="output")


# ------------------------------------------------------------------ an independent recomputation


def _record_attention_inputs(transformer, block_index):
    """A pre-hook that records what the block hands its attention module (after the block's norm)."""
    blocks = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)
    attn = blocks[block_index].attn
    record = {}
    handle = attn.register_forward_pre_hook(lambda module, args, kwargs: record.update(kwargs), with_kwargs=True)
    return attn, record, handle


def _stock_attention_output(attn, hidden_states, encoder_hidden_states, rotary):
    """The stock diffusers processor, with the output projections made identities: the attention
    output before projection, heads concatenated."""
    if encoder_hidden_states is None:  # single-stream attention has no output projection
        return FluxAttnProcessor()(attn, hidden_states, None, None, rotary)
    to_out, to_add_out = attn.to_out[0], attn.to_add_out
    attn.to_out[0], attn.to_add_out = torch.nn.Identity(), torch.nn.Identity()
    try:
        return FluxAttnProcessor()(attn, hidden_states, encoder_hidden_states, None, rotary)
    finally:
        attn.to_out[0], attn.to_add_out = to_out, to_add_out


def _reference_scores(attn, record, caption_len, valid, num_image, representation):
    """scores [K, L, N] of one block, recomputed with the stock processor: the main stream alone
    ([caption | image]) gives the image vectors, and each expression alone with the image
    ([expression's real tokens | image], as ConceptAttention's concept-image attention) its own."""
    kk, length = valid.shape
    b, i = kk * length, kk * length + caption_len  # the joint sequence is [branch | caption | image]
    cos, sin = record["image_rotary_emb"]
    image_rows = torch.arange(i, i + num_image)
    main_rows = torch.cat([torch.arange(b, i), image_rows])
    double = record.get("encoder_hidden_states") is not None
    if double:
        text, image = record["encoder_hidden_states"], record["hidden_states"]
    else:
        sequence = record["hidden_states"]

    def rope(rows):
        return cos[rows], sin[rows]

    reference = torch.zeros(kk, length, num_image)
    for k in range(kk):
        real = int(valid[k].sum())
        assert valid[k, :real].all()  # right padding
        rows = torch.arange(k * length, k * length + real)
        if representation == "attention_output":
            if double:
                img_out, _ = _stock_attention_output(attn, image, text[:, b:], rope(main_rows))
                _, expr_out = _stock_attention_output(attn, image, text[:, rows], rope(torch.cat([rows, image_rows])))
            else:
                img_out = _stock_attention_output(attn, sequence[:, main_rows], None, rope(main_rows))[:, caption_len:]
                both = torch.cat([rows, image_rows])
                expr_out = _stock_attention_output(attn, sequence[:, both], None, rope(both))[:, :real]
            reference[k, :real] = expr_out[0] @ img_out[0].T  # no scaling, summed over heads
        else:  # image query . expression key / sqrt(d), after QK norm and RoPE, mean over heads
            heads, dim = attn.heads, attn.head_dim
            if double:
                q = attn.norm_q(attn.to_q(image).unflatten(-1, (heads, dim)))
                k_ = attn.norm_added_k(attn.add_k_proj(text[:, rows]).unflatten(-1, (heads, dim)))
            else:
                q = attn.norm_q(attn.to_q(sequence[:, image_rows]).unflatten(-1, (heads, dim)))
                k_ = attn.norm_k(attn.to_k(sequence[:, rows]).unflatten(-1, (heads, dim)))
            q = apply_rotary_emb(q, rope(image_rows), sequence_dim=1)
            k_ = apply_rotary_emb(k_, rope(rows), sequence_dim=1)
            reference[k, :real] = torch.einsum("bnhd,bthd->tn", q, k_) / dim**0.5 / heads
    return reference


@pytest.mark.parametrize("block", [DOUBLE_BLOCK, SINGLE_BLOCK], ids=["double", "single"])
@pytest.mark.parametrize("representation", ["attention_output", "cross_attention"])
def test_scores_equal_an_independent_recomputation(tiny_extractor, block, representation):
    x_t, grid, condition, encoded = _inputs(tiny_extractor)
    capture = _capture(condition, encoded, grid, [block], representation)
    attn, record, handle = _record_attention_inputs(tiny_extractor.pipe.transformer, block)
    try:
        tiny_extractor.forward(x_t, 0.75, grid, condition, encoded, capture)
    finally:
        handle.remove()
    assert capture.observations == 1
    assert (record.get("encoder_hidden_states") is not None) == (block == DOUBLE_BLOCK)
    scores, _ = capture.result()
    with torch.inference_mode():
        reference = _reference_scores(
            attn, record, condition.embeds.shape[1], encoded.valid, math.prod(grid), representation
        )
    valid = encoded.valid[:, :, None].expand_as(scores)
    assert reference[valid].abs().max() > 1e-3
    torch.testing.assert_close(scores[valid], reference[valid], rtol=1e-4, atol=1e-5)


def test_the_two_representations_give_different_maps(tiny_extractor):
    x_t, grid, condition, encoded = _inputs(tiny_extractor)
    results = {}
    for representation in ("cross_attention", "attention_output"):
        capture = _capture(condition, encoded, grid, [DOUBLE_BLOCK], representation)
        tiny_extractor.forward(x_t, 0.75, grid, condition, encoded, capture)
        results[representation] = capture.result()
    assert not torch.allclose(results["cross_attention"][0], results["attention_output"][0])
    # the GAS statistic does not depend on the representation
    torch.testing.assert_close(results["cross_attention"][1], results["attention_output"][1], rtol=0, atol=0)

"""The auxiliary grounding term of refam-shapes v2 reads the maps inference reads, and pulls them
towards the referent."""

import numpy as np
import pytest
import torch
from PIL import Image

from refam.aggregators.magnets import AppendMagnets
from refam.shapes.grounding import BatchCapture, Expression, GroundingTerm, cell_coverage

MAGNETS = AppendMagnets()
NONE = AppendMagnets([])


def _drawn(rows):
    out = []
    for row in rows:
        items = []
        for text, strategy in row:
            augmented, start = strategy.augment(text)
            items.append((Expression(augmented, start, 0), strategy))
        out.append(items)
    return out


def test_training_capture_equals_the_extractors_capture_per_scene(tiny_extractor):
    """Two scenes with different expressions (and paddings) in one training batch give, per scene,
    the scores `FluxExtractor` captures for that scene alone, and the velocity of the plain model."""
    extractor = tiny_extractor
    term = GroundingTerm(extractor.pipe.tokenizer_2, extractor.pipe.text_encoder_2, expressions_per_scene=2)
    drawn = _drawn([[("the red dog on the left", MAGNETS), ("a man", NONE)], [("the small blue car near the tree", MAGNETS)]])
    images = [Image.new("RGB", (96, 80), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))]
    condition = extractor.encode_caption("a dog and a man")
    latents = [extractor.encode_image(image) for image in images]
    grid = latents[0].grid
    assert latents[1].grid == grid  # both resized to the extractor's square frame
    x_t = torch.cat([0.25 * latent.x0 + 0.75 * torch.randn(latent.x0.shape, generator=torch.Generator().manual_seed(i))
                     for i, latent in enumerate(latents)])
    with torch.no_grad():
        embeds, valid, kept = term.encode(drawn, torch.device("cpu"))
        text = torch.cat([embeds.flatten(1, 2), condition.embeds.expand(2, -1, -1)], dim=1)
        capture = BatchCapture(valid, condition.embeds.shape[1], x_t.shape[1], extractor.num_blocks)
        for processor in extractor.processors:
            processor.capture = capture
        transformer = extractor.pipe.transformer
        try:
            velocity = transformer(hidden_states=x_t, encoder_hidden_states=text,
                                   pooled_projections=condition.pooled.expand(2, -1), timestep=torch.full((2,), 0.75),
                                   img_ids=extractor.pipe._prepare_latent_image_ids(1, *grid[1:], "cpu", torch.float32),
                                   txt_ids=torch.zeros(text.shape[1], 3), return_dict=False,
                                   guidance=None if condition.guidance is None else condition.guidance.expand(2))[0]
        finally:
            for processor in extractor.processors:
                processor.capture = None
        logits = capture.logits()  # [B, N, K, L]
    assert kept[0, 1].sum() == 1  # "a man" without magnets keeps "man"
    for b, row in enumerate(drawn):
        single = extractor.encode_expressions([(e.text, e.magnet_start) for e, _ in row])
        alone = extractor.new_capture(single, condition, grid)
        plain = extractor.forward(x_t[b : b + 1], 0.75, grid, condition)
        extractor.forward(x_t[b : b + 1], 0.75, grid, condition, single, alone)
        scores, _ = alone.result()  # [K, L, N]
        k, length = single.valid.shape
        assert valid[b, :k, :length].equal(single.valid) and not valid[b, :k, length:].any()
        torch.testing.assert_close(logits[b, :, :k, :length].permute(1, 2, 0), scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(velocity[b : b + 1], plain, rtol=1e-4, atol=1e-5)
    assert not valid[1, 1].any()  # the second scene has one expression: its second slot is empty


def _loss_inputs():
    n, length = 16, 5
    valid = torch.ones(1, 1, length, dtype=torch.bool)
    kept = torch.tensor([[[False, True, True, False, False]]])
    coverage = torch.zeros(1, 1, n)
    coverage[0, 0, :4] = 1.0
    return n, length, valid, kept, coverage


def test_loss_is_lower_when_the_kept_tokens_win_on_the_referent():
    term = GroundingTerm.__new__(GroundingTerm)
    term.sharpness = 10.0
    n, length, valid, kept, coverage = _loss_inputs()
    right = torch.zeros(1, n, 1, length)
    right[0, :4, 0, 1:3] = 4.0  # kept tokens win on the referent's cells
    right[0, 4:, 0, 3] = 4.0  # a magnet wins elsewhere
    wrong = torch.zeros(1, n, 1, length)
    wrong[0, 8:12, 0, 1:3] = 4.0  # kept tokens win on another object
    wrong[0, :4, 0, 3] = 4.0
    weight = torch.ones(1)
    assert term.loss(right, valid, kept, coverage, weight) < term.loss(torch.zeros(1, n, 1, length), valid, kept, coverage, weight)
    assert term.loss(torch.zeros(1, n, 1, length), valid, kept, coverage, weight) < term.loss(wrong, valid, kept, coverage, weight)


def test_empty_slots_and_unweighted_items_add_nothing_and_no_nan():
    term = GroundingTerm.__new__(GroundingTerm)
    term.sharpness = 10.0
    n, length, valid, kept, coverage = _loss_inputs()
    logits = torch.randn(2, n, 2, length, requires_grad=True)
    valid2 = torch.zeros(2, 2, length, dtype=torch.bool)
    kept2 = torch.zeros_like(valid2)
    cover2 = torch.zeros(2, 2, n)
    valid2[0, 0], kept2[0, 0], cover2[0, 0] = valid[0, 0], kept[0, 0], coverage[0, 0]
    valid2[1, 0], kept2[1, 0], cover2[1, 0] = valid[0, 0], kept[0, 0], coverage[0, 0]
    loss = term.loss(logits, valid2, kept2, cover2, torch.tensor([1.0, 0.0]))
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[1].abs().sum() == 0  # weight 0: the second scene is not grounded
    assert logits.grad[0, :, 1].abs().sum() == 0  # its empty slot neither
    alone = term.loss(logits[:1, :, :1].detach(), valid, kept, coverage, torch.ones(1))
    torch.testing.assert_close(loss.detach(), alone)


def test_cell_coverage_is_the_share_of_each_token_cell():
    mask = np.zeros((64, 32), dtype=bool)  # a tall image: resized to the square frame
    mask[:32, :16] = True  # its top-left quarter
    cells = cell_coverage(mask, frame=128, grid=16)
    assert cells.shape == (16, 16)
    # interior cells full, cells past the edge empty (the edge itself is blurred by the resize, as the image is)
    assert cells[:7, :7].min() > 0.99 and cells[9:, :].max() < 0.01 and cells[:, 9:].max() < 0.01
    assert cells.sum().item() == pytest.approx(64, abs=1.0)

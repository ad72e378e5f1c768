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


def test_an_absent_referent_pulls_every_patch_to_the_rest_tokens_without_nan():
    term = GroundingTerm.__new__(GroundingTerm)
    term.sharpness = 10.0
    n, length, valid, kept, _ = _loss_inputs()
    nothing = torch.zeros(1, 1, n)  # the expression names nothing in the scene
    # random kept logits; the rest tokens tie within each patch (the term asks them for equal shares,
    # so a tie isolates the kept-against-rest move from reshuffling among the rest)
    logits = torch.randn(1, n, 1, length, generator=torch.Generator().manual_seed(0))
    logits[..., ~kept[0, 0]] = logits[..., 3:4]
    logits.requires_grad_(True)
    loss = term.loss(logits, valid, kept, nothing, torch.ones(1))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # a small descent step lowers every kept token's logit at every patch, and every patch's kept mass
    assert (logits.grad[0, :, 0][:, kept[0, 0]] > 0).all()
    kept_mass = lambda z: z.softmax(dim=-1)[0, :, 0][:, kept[0, 0]].sum(-1)  # noqa: E731
    after = logits.detach() - 0.1 * logits.grad
    assert (kept_mass(after) < kept_mass(logits.detach())).all()
    # and the loss is lower the more every patch gives the rest tokens (no spatial part to reward a place)
    to_rest = torch.zeros(1, n, 1, length)
    to_rest[..., ~kept[0, 0]] = 4.0
    to_kept = torch.zeros(1, n, 1, length)
    to_kept[0, :4, 0, 1:3] = 4.0  # kept tokens claim a few cells: worse than nothing claimed
    weight = torch.ones(1)
    even = torch.zeros(1, n, 1, length)
    assert term.loss(to_rest, valid, kept, nothing, weight) < term.loss(even, valid, kept, nothing, weight) \
        < term.loss(to_kept, valid, kept, nothing, weight)


def test_the_absent_share_draws_expressions_the_scene_lacks_and_share_zero_replays():
    from refam.embedded.palette import COLOURS, SHAPES
    from refam.shapes.absent import absent_expressions
    from refam.shapes.varied import make_varied_scene

    scenes = [make_varied_scene("train", i) for i in range(6)]
    term = GroundingTerm.__new__(GroundingTerm)
    term.k, term.magnet_rate, term.kind_weights = 3, 0.75, {}
    term.with_magnets, term.without_magnets = MAGNETS, NONE
    term.absent_share = 0.0
    before = term.draw(scenes, np.random.default_rng(1))
    term.absent_share = 1.0
    absent = term.draw(scenes, np.random.default_rng(1))
    replay = np.random.default_rng(1)  # the draw refam-shapes was trained with, by hand
    for scene, row in zip(scenes, before):
        picks = replay.permutation(len(scene.referrals))[:3]
        expected = [MAGNETS.augment(scene.referrals[i].text)[0] if replay.random() < 0.75 else scene.referrals[i].text
                    for i in picks]
        assert [e.text for e, _ in row] == expected and [e.target for e, _ in row] == [scene.referrals[i].target for i in picks]
    for scene, row in zip(scenes, absent):
        named = {(o.colour, o.shape) for o in scene.objects}
        for expression, _ in row:
            assert expression.target is None
            words = expression.text.split()
            colour = next((w for w in words if w in COLOURS), None)
            shape = next((w for w in words if w in SHAPES), None)
            assert not any((colour in (None, c)) and (shape in (None, s)) for c, s in named), expression.text
    lacks = absent_expressions(scenes[0], np.random.default_rng(0))
    assert {kind for _, kind, _ in lacks} <= {"colour+shape", "shape", "colour"}

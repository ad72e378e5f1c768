"""Cross-attention backbones have no expression queries: a token's text mass is the share of the
image queries' attention it draws, softmaxed over its expression's real tokens."""

import torch

from refam.extractors.capture import AttentionCapture, BranchLayout


def _capture(valid):
    return AttentionCapture(BranchLayout(caption_len=5, key_valid=valid), num_image_tokens=7, selected_blocks={0})


def test_image_share_is_a_distribution_over_each_expressions_real_tokens_and_chunks_do_not_change_it():
    valid = torch.tensor([[True, True, True, False], [True, True, False, False]])
    generator = torch.Generator().manual_seed(0)
    q_img, k_expr = torch.randn(7, 2, 8, generator=generator), torch.randn(2, 4, 2, 8, generator=generator)
    capture = _capture(valid)
    whole = capture._token_probs(q_img, k_expr).mean(dim=0)
    chunked = capture._token_probs(q_img, k_expr, chunk=2).mean(dim=0)
    torch.testing.assert_close(whole, chunked)
    torch.testing.assert_close(whole.sum(dim=1), torch.ones(2))
    assert (whole[~valid] == 0).all() and (whole[valid] > 0).all()
    logits = torch.einsum("nhd,lhd->hnl", q_img, k_expr[0, :3]) / 8**0.5
    torch.testing.assert_close(whole[0, :3], logits.softmax(dim=-1).mean(dim=(0, 1)))


def test_a_cross_attention_observation_adds_the_image_share_as_text_mass():
    valid = torch.tensor([[True, True, False]])
    capture = _capture(valid)
    q_img, k_expr = torch.randn(7, 2, 8), torch.randn(1, 3, 2, 8)
    capture.add(q_img, k_expr, None)
    capture.add(q_img, k_expr, None)
    _, mass = capture.result()
    torch.testing.assert_close(mass, capture._token_probs(q_img, k_expr).mean(dim=0))


def test_per_head_cross_attention_scores_are_the_softmax_whose_mean_is_the_text_mass():
    """One per-head softmax serves both the maps and the text mass (computed once per block)."""
    valid = torch.tensor([[True, True, False], [True, True, True]])
    capture = AttentionCapture(BranchLayout(caption_len=5, key_valid=valid), num_image_tokens=7, selected_blocks={0},
                               softmax_stage="per_head")
    generator = torch.Generator().manual_seed(1)
    q_img, k_expr = torch.randn(7, 2, 8, generator=generator), torch.randn(2, 3, 2, 8, generator=generator)
    capture.add(q_img, k_expr, None)
    scores, mass = capture.result()  # scores [K, L, N]
    logits = torch.einsum("nhd,klhd->hnkl", q_img, k_expr) / 8**0.5
    probs = logits.masked_fill(~valid, float("-inf")).softmax(dim=-1).mean(dim=0)
    torch.testing.assert_close(scores, probs.permute(1, 2, 0))
    torch.testing.assert_close(mass, probs.mean(dim=0))

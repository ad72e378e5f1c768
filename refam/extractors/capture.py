"""The expression branch's layout and its streaming attention capture.

The denoising stream sees the caption and the image exactly as the stock model computes them. The K
expressions ride along as extra text tokens (`refam.extractors.branch` runs them inside each
block's attention): each expression's queries attend to its own tokens and to the image tokens; no
caption or image query attends to any expression token, and expressions are blind to each other. So
the velocity prediction is unchanged and K expressions in one forward give the maps of K separate
forwards.

Per selected block the capture adds, in place, one [N, K, L] score map into one buffer, in one of
two representation spaces (the paper's Table 8):

- "cross_attention" (default): the image-query x expression-key scores q_p . k_t / sqrt(d) (after
  the block's QK norm and RoPE), averaged over heads;
- "attention_output" (ConceptAttention's output space): o_p . o_t, the dot product of the image
  patch's and the expression token's attention outputs, taken as ConceptAttention's original BFL
  code does (`output_space_image_vectors = img_attn`, `output_space_concept_vectors = concept_attn`):
  the SDPA outputs BEFORE the output projection (`to_out` / `to_add_out` in double blocks,
  `proj_out` in single blocks), heads concatenated, so the dot product is the SUM over heads of the
  per-head dot products, with no 1/sqrt(d) or 1/H scaling. o_p is the main stream's output (what
  the model really computes), o_t the branch's output of the same block. (ConceptAttention's
  diffusers port takes both after the output projections instead: a different space, not used.)

and the text-to-text attention mass each expression token receives into a [K, L] buffer: memory
does not grow with the number of blocks, and no attention matrix over the whole sequence is ever
stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SOFTMAX_STAGES = ("after_mean", "per_head")
REPRESENTATIONS = ("cross_attention", "attention_output")


@dataclass
class BranchLayout:
    """Where the expression tokens sit, and the order of the keys the branch's queries are
    multiplied with: `key_order` names its segments, "branch" (the K L expression tokens; a query
    sees only its own expression's real tokens), "caption" (never seen) and "image" (all seen).
    Joint-attention kernels hand the branch the whole joint sequence in this order: [branch |
    caption | image] (FLUX) or [image | caption | branch] (SD3, Mochi). `causal` reads each expression
    as a block-causal model (Qwen-Image 2.1) reads its caption: a query sees its own expression's real
    tokens up to its own position, and not the image."""

    caption_len: int
    key_valid: torch.Tensor  # [K, L] bool: real tokens of each expression (False = padding)
    key_order: tuple[str, ...] = ("branch", "caption", "image")
    # [K, L] bool: the real tokens that enter the per-patch softmax across tokens (and whose queries
    # weigh the text mass); a prompt template's are attended but left out by default. None: key_valid
    key_scored: torch.Tensor | None = None
    causal: bool = False  # each expression token sees its own earlier tokens and itself, never the image

    @property
    def scored(self) -> torch.Tensor:
        return self.key_valid if self.key_scored is None else self.key_scored

    def key_bias(self, num_image_tokens: int) -> torch.Tensor:
        """[K L, S] float32 added to the branch's logits: 0 where a branch query may look, -inf where
        it may not (another expression's tokens, its own padding, the caption; with `causal`, its own
        later tokens and the image)."""
        kk, length = self.key_valid.shape
        sizes = {"branch": self.branch_len, "caption": self.caption_len, "image": num_image_tokens}
        bias = torch.full((self.branch_len, sum(sizes[segment] for segment in self.key_order)), float("-inf"))
        start = 0
        for segment in self.key_order:
            part = bias[:, start : start + sizes[segment]]
            if segment == "branch":  # [K, L(query), K, L(key)]: own expression's real tokens only
                own = torch.eye(kk, dtype=torch.bool)[:, None, :, None] & self.key_valid[None, None]
                if self.causal:  # key position <= query position
                    own = own & torch.ones(length, length, dtype=torch.bool).tril()[None, :, None, :]
                part.masked_fill_(own.expand(kk, length, kk, length).reshape(self.branch_len, self.branch_len), 0.0)
            elif segment != "caption" and not self.causal:  # the image
                part.zero_()
            start += sizes[segment]
        return bias

    @property
    def num_expressions(self) -> int:
        return self.key_valid.shape[0]

    @property
    def expression_len(self) -> int:
        return self.key_valid.shape[1]

    @property
    def branch_len(self) -> int:
        return self.key_valid.numel()


class AttentionCapture:
    """Accumulates expression-token x image-patch scores over blocks (and trajectory states).

    `representation` picks the space ("cross_attention" or "attention_output", see the module
    docstring); `softmax_stage` the order:

    - "after_mean": raw scores are summed (cross_attention: averaged over heads, scaled by
      1/sqrt(d); attention_output: head-concatenated dot products, unscaled); the aggregator
      softmaxes across tokens per patch after the mean over blocks (TokenMaps kind "logits").
    - "per_head": a softmax over the expression's scored tokens (`BranchLayout.scored`) per patch
      before averaging (cross_attention: per head and block, then the mean over heads;
      attention_output: per block, on the head-summed dot product, which is ConceptAttention's
      order), then the mean over blocks (kind "probs"). Padding tokens, and template tokens left
      out, get exactly zero.

    `dtype` is the branch's compute dtype, that of the `key_bias` the kernels add to its logits.
    """

    def __init__(
        self,
        layout: BranchLayout,
        num_image_tokens: int,
        selected_blocks: set[int],
        softmax_stage: str = "after_mean",
        device: torch.device | str = "cpu",
        representation: str = "cross_attention",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if softmax_stage not in SOFTMAX_STAGES:
            raise ValueError(f"softmax_stage must be one of {SOFTMAX_STAGES}, got {softmax_stage!r}")
        if representation not in REPRESENTATIONS:
            raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")
        self.layout = layout
        self.selected_blocks = selected_blocks
        self.softmax_stage = softmax_stage
        self.representation = representation
        k, length = layout.key_valid.shape
        self.scores = torch.zeros(num_image_tokens, k, length, dtype=torch.float32, device=device)
        self.text_mass = torch.zeros(k, length, dtype=torch.float32, device=device)
        self.observations = 0
        self._scored = layout.scored.to(device)  # the tokens each per-patch softmax runs over
        self.key_bias = layout.key_bias(num_image_tokens).to(device, dtype)  # in the branch's dtype: 0 and -inf are exact
        valid = self._scored.float()
        # weights of the scored queries of each expression, broadcast over [H, K L(query), K L(key)]
        self._query_weight = (valid / valid.sum(dim=1, keepdim=True).clamp(min=1)).flatten()[None, :, None]

    def add(self, img_vectors: torch.Tensor, expr_vectors: torch.Tensor, text_probs: torch.Tensor | None) -> None:
        """One block's observation. img_vectors [N, H, D], expr_vectors [K, L, H, D]: for
        "cross_attention" the image queries and expression keys (post norm and RoPE), for
        "attention_output" the image and expression attention outputs (before any output
        projection); text_probs [H, K L, K L] the expression queries' attention on the expression
        tokens (zero outside each expression's own block), or None where the expressions have no
        queries (cross-attention backbones): then each token's mass is the share of the image
        queries' attention, softmaxed over the expression's scored tokens, it draws."""
        probs = None  # [N, K, L] each image query's softmax over each expression's tokens, where computed
        if self.representation == "cross_attention":
            probs = self._add_cross_attention(img_vectors, expr_vectors)
        else:
            self._add_attention_output(img_vectors, expr_vectors)
        if text_probs is None:
            probs = self._token_probs(img_vectors, expr_vectors) if probs is None else probs
            self.text_mass.add_(probs.mean(dim=0))
        else:
            # mean over heads and the expression's scored queries of the mass each of its tokens receives
            mass = (text_probs * self._query_weight).sum(dim=(0, 1))
            self.text_mass.add_(mass.view_as(self.text_mass), alpha=1 / text_probs.shape[0])
        self.observations += 1

    def _token_probs(self, q_img: torch.Tensor, k_expr: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """[N, K, L]: the mean over heads of each image query's softmax over each expression's real
        tokens (a fully padded row gives zeros), in chunks of image queries: a whole [H, N, K, L]
        tensor would be ~300 MB per block at Wan 14B's 32,760 tokens."""
        scale = q_img.shape[2] ** -0.5
        parts = []
        for part in q_img.split(chunk):
            logits = torch.einsum("nhd,klhd->hnkl", part.float(), k_expr.float()) * scale
            parts.append(logits.masked_fill(~self._scored, float("-inf")).softmax(dim=-1).nan_to_num_(0.0).mean(dim=0))
        return torch.cat(parts)

    def _add_cross_attention(self, q_img: torch.Tensor, k_expr: torch.Tensor) -> torch.Tensor | None:
        """q_img [N, H, D], k_expr [K, L, H, D]: mean over heads of q . k / sqrt(d) ("after_mean"), or of
        the per-head softmax over the expression's tokens ("per_head", returned for the text mass)."""
        heads, head_dim = q_img.shape[1], q_img.shape[2]
        if self.softmax_stage == "after_mean":
            # mean over heads of per-head dot products = dot product of the head-concatenated vectors / H
            logits = q_img.flatten(1).float() @ k_expr.flatten(2).flatten(0, 1).float().T
            self.scores.add_(logits.view_as(self.scores), alpha=head_dim**-0.5 / heads)
            return None
        probs = self._token_probs(q_img, k_expr)
        self.scores.add_(probs)
        return probs

    def _add_attention_output(self, o_img: torch.Tensor, o_expr: torch.Tensor) -> None:
        """o_img [N, H, D], o_expr [K, L, H, D]: ConceptAttention's output-space score, the dot
        product of the head-concatenated vectors (= sum over heads), unscaled as in its code."""
        logits = (o_img.flatten(1).float() @ o_expr.flatten(2).flatten(0, 1).float().T).view_as(self.scores)
        if self.softmax_stage == "after_mean":
            self.scores.add_(logits)
        else:  # ConceptAttention: softmax over the concepts (here: the expression's scored tokens) per patch
            logits = logits.masked_fill(~self._scored, float("-inf"))
            self.scores.add_(logits.softmax(dim=-1).nan_to_num_(0.0))  # a fully padded row has no tokens

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [K, L, N], text_mass [K, L]) averaged over what was observed."""
        if self.observations == 0:
            raise RuntimeError("no block was captured: check the extractor's block selection")
        return (self.scores / self.observations).permute(1, 2, 0), self.text_mass / self.observations

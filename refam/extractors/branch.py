"""The expression branch inside a block's attention: one kernel per attention kind, shared by every backbone.

A backbone's attention processor computes what its stock processor computes up to the attention
itself (projections, QK norms, RoPE, with the block's weights, for the branch's tokens exactly as
for the caption's), hands the q/k/v to a kernel here, and applies its output projections to the
kernel's output. The kernels own what is the same everywhere:

- `joint_branch` (joint attention: FLUX.1/2, SD3.5, Qwen-Image, Mochi, CogVideoX, HunyuanVideo 1.5,
  Z-Image, Lumina 2): the main stream's attention over its own tokens exactly as the stock processor runs it (the
  backbone's `main_attention`), the branch's attention (each expression's queries over its own real
  tokens and the image, never the caption or another expression: `BranchLayout.key_bias`), and the
  capture of one observation per selected block;
- `cross_branch` (cross-attention: Wan, PixArt-Sigma): the image queries attend to the caption's keys
  exactly as the stock processor does; the expression keys, made by the same `to_k` (and norm), are
  scored against the image queries and kept out of the output's softmax.

`BranchProcessor` wraps the stock processor: while its `capture` is None it IS the stock processor
(same call, same signature: diffusers filters keyword arguments by the processor's signature), and
while a capture is set it runs the backbone's `with_branch`.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable

import torch

from refam.extractors.capture import AttentionCapture

# the stock attention of the main stream: (query, key, value) [B, S, H, D] -> output [B, S, H, D]
MainAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def split_heads(attn, x: torch.Tensor, norm: torch.nn.Module | None = None) -> torch.Tensor:
    """[B, S, H D] -> [B, S, H, D] for `attn`'s heads, normed per head where the stock processor
    applies a QK norm."""
    x = x.unflatten(-1, (attn.heads, -1))
    return x if norm is None else norm(x)


def stream_qkv(attn, x: torch.Tensor, added: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [B, S, H, D] of one stream of a joint-attention block, after its QK norm: the image
    stream's `to_q/to_k/to_v` and `norm_q/norm_k`, or (`added`) the text stream's `add_q_proj/
    add_k_proj/add_v_proj` and `norm_added_q/norm_added_k` (the branch's tokens are text rows)."""
    if added:
        q, k, v, norm_q, norm_k = attn.add_q_proj(x), attn.add_k_proj(x), attn.add_v_proj(x), attn.norm_added_q, attn.norm_added_k
    else:
        q, k, v, norm_q, norm_k = attn.to_q(x), attn.to_k(x), attn.to_v(x), attn.norm_q, attn.norm_k
    return split_heads(attn, q, norm_q), split_heads(attn, k, norm_k), split_heads(attn, v)


def video_text_qkv(attn, video: torch.Tensor, text: torch.Tensor, rotary_emb, video_first: bool = True,
                   unbind_dim: int = -1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [B, S, H, D] of a joint block's [video | text] (`video_first`) or [text | video] after its QK
    norms, RoPE turning the video rows only (text tokens have no positions: HunyuanVideo, HunyuanImage,
    CogVideoX). A block with one set of projections for every token (no `add_q_proj`: CogVideoX's, the
    Hunyuan single-stream blocks) projects the joint sequence in one call, as its stock processor does;
    a dual-stream block projects each stream with its own (`stream_qkv`). `unbind_dim` is the stock call's
    `use_real_unbind_dim` (CogView4's -2 pairs the halves of a head rather than neighbours)."""
    from diffusers.models.embeddings import apply_rotary_emb

    order = (video, text) if video_first else (text, video)
    if attn.add_q_proj is None:
        query, key, value = stream_qkv(attn, torch.cat(order, dim=1))
    else:
        streams = [stream_qkv(attn, x, added=x is not video) for x in order]
        query, key, value = (torch.cat(parts, dim=1) for parts in zip(*streams))
    if rotary_emb is None:
        return query, key, value
    start = 0 if video_first else text.shape[1]
    rows = slice(start, start + video.shape[1])
    query, key = (torch.cat([x[:, : rows.start], apply_rotary_emb(x[:, rows], rotary_emb, use_real_unbind_dim=unbind_dim, sequence_dim=1), x[:, rows.stop:]], dim=1)
                  for x in (query, key))
    return query, key, value


def dispatched(processor: BranchProcessor, attn_mask: torch.Tensor | None = None, parallel: bool = True) -> MainAttention:
    """The stock processors' `dispatch_attention_fn` call, on the backend the stock processor is
    set to (`parallel`: with its context-parallel config, as self-attention calls pass it)."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    stock = processor.stock

    def main_attention(q, k, v):
        return dispatch_attention_fn(q, k, v, attn_mask=attn_mask, backend=stock._attention_backend,
                                     parallel_config=stock._parallel_config if parallel else None)

    return main_attention


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The stock call of processors that run torch's SDPA on contiguous [B, H, S, D], with no mask."""
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)


def legacy_sdpa(attn, attention_mask: torch.Tensor | None) -> MainAttention:
    """The attention call of diffusers' legacy `AttnProcessor2_0` (PixArt's, SANA's cross-attention),
    masked as it masks: `attention_mask` (the transformer's bias [B, 1, Lk] over the keys the call
    sees, the caption's alone) prepared per head (`attn.prepare_attention_mask`, viewed [B, H, 1, Lk]),
    then SDPA on [B, H, S, D] views of the [B, S, H, D] q, k, v, as the stock processor's
    `view(...).transpose(1, 2)` hands them."""

    def main_attention(q, k, v):
        mask = attention_mask
        if mask is not None:
            mask = attn.prepare_attention_mask(mask, k.shape[1], q.shape[0])
            mask = mask.view(q.shape[0], attn.heads, -1, mask.shape[-1])
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, dropout_p=0.0, is_causal=False)
        return out.transpose(1, 2)

    return main_attention


def branch_attention(
    q_e: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The expression branch's attention, shared by every backbone.

    q_e [B, H, K L, D]: the K expressions' queries (L each, right-padded); key, value [B, H, S, D]:
    the whole joint sequence, in `BranchLayout.key_order`; key_bias [K L, S] (`AttentionCapture.key_bias`) 0 where a
    query may look and -inf where not, so each expression sees its own real tokens and the image,
    never the caption or another expression. One scaled, biased matmul (baddbmm), one float32
    softmax, one matmul. Returns the output [B, H, K L, D] and the probabilities [B, H, K L, S].
    A bias of shape [B, K L, S] gives each batch item its own (training batches of several scenes).
    """
    batch, heads = q_e.shape[:2]
    if key_bias.dim() == 3:
        key_bias = key_bias.repeat_interleave(heads, dim=0)
    logits = torch.baddbmm(
        key_bias.to(q_e.dtype), q_e.flatten(0, 1), key.flatten(0, 1).transpose(-1, -2), alpha=q_e.shape[-1] ** -0.5
    )
    probs = logits.softmax(dim=-1, dtype=torch.float32).to(q_e.dtype)
    out = torch.bmm(probs, value.flatten(0, 1))
    return out.unflatten(0, (batch, heads)), probs.unflatten(0, (batch, heads))


def _segments(capture: AttentionCapture, sequence: tuple[str, ...], total: int) -> dict[str, slice]:
    """Where each named segment sits in a sequence of `total` tokens laid out in `sequence` order."""
    layout = capture.layout
    known = {"branch": layout.branch_len, "caption": layout.caption_len}
    sizes = {name: known.get(name, 0) for name in sequence}
    sizes["image"] = total - sum(size for name, size in sizes.items() if name != "image")
    spans, start = {}, 0
    for name in sequence:
        spans[name] = slice(start, start + sizes[name])
        start += sizes[name]
    return spans


def joint_branch(
    capture: AttentionCapture,
    block_index: int,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    sequence: tuple[str, ...],
    main_attention: MainAttention,
) -> torch.Tensor:
    """One joint-attention block with the branch riding along.

    query, key, value [B, S, H, D]: the whole joint sequence after the block's norms and RoPE, its
    segments ("branch", "caption", "image") in `sequence` order, the branch first or last; the main
    stream is the rest, and `main_attention` runs the stock attention on it. The branch's queries
    score the whole sequence (`capture.key_bias` hides the caption and the other expressions), so
    its keys are views, never copies. Returns the joint output [B, S, H, D] in `sequence` order (the
    branch's rows are its attention output; the main stream's are `main_attention`'s)."""
    layout = capture.layout
    if layout.key_order != sequence or (sequence[0] != "branch" and sequence[-1] != "branch"):
        raise ValueError(f"the block's sequence {sequence} must put the branch first or last and match the "
                         f"capture's key order {layout.key_order} (the extractor's `branch_first`)")
    spans = _segments(capture, sequence, query.shape[1])
    branch = spans["branch"]
    main = slice(branch.stop, None) if branch.start == 0 else slice(0, branch.start)
    main_out = main_attention(query[:, main], key[:, main], value[:, main])
    branch_out, probs = branch_attention(query[:, branch].transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                         capture.key_bias)
    branch_out = branch_out.transpose(1, 2)  # [B, K L, H, D]

    if block_index in capture.selected_blocks:
        image = spans["image"]
        image_in_main = slice(image.start - main.start, image.stop - main.start)
        shape = (layout.num_expressions, layout.expression_len)
        for item in range(query.shape[0]):
            if capture.representation == "cross_attention":
                image_vectors, expression_vectors = query[item, image], key[item, branch]
            else:  # both before the output projection, from this same block call
                image_vectors, expression_vectors = main_out[item, image_in_main], branch_out[item]
            capture.add(image_vectors, expression_vectors.unflatten(0, shape), probs[item, :, :, branch])

    return torch.cat([branch_out, main_out] if branch.start == 0 else [main_out, branch_out], dim=1)


def cross_branch(
    capture: AttentionCapture,
    block_index: int,
    query: torch.Tensor,
    caption_key: torch.Tensor,
    caption_value: torch.Tensor,
    branch_key: torch.Tensor,
    main_attention: MainAttention,
) -> torch.Tensor:
    """One cross-attention call with the branch riding along.

    query [B, N, H, D]: the image queries as the stock processor makes them; caption_key,
    caption_value [B, Lc, H, D]: the caption's; branch_key [B, K L, H, D]: the expressions' keys,
    made by the same projection and norm. The output is the stock attention over the caption only
    (the expression keys stay out of its softmax); the capture scores image queries x expression
    keys (there are no expression queries, so no attention-output space and no text-to-text mass:
    the capture takes the share of the image's attention each token draws instead)."""
    out = main_attention(query, caption_key, caption_value)
    if block_index in capture.selected_blocks:
        shape = (capture.layout.num_expressions, capture.layout.expression_len)
        for item in range(query.shape[0]):
            capture.add(query[item], branch_key[item].unflatten(0, shape), None)
    return out


class BranchProcessor(abc.ABC):
    """A stock diffusers attention processor with the expression branch switched in while `capture` is set.

    Subclasses name the stock class (`stock_class`) and implement `with_branch(capture, attn, ...)`,
    which receives the stock call's arguments by name. The wrapper's call signature is the stock
    one's, so the attention module passes it exactly what it passes the stock processor."""

    stock_class: type
    refused_arguments: tuple[str, ...] = ("attention_mask",)  # stock arguments the branch cannot honour when set

    def __init__(self, block_index: int) -> None:
        self.block_index = block_index
        self.stock = self.stock_class()
        self.capture: AttentionCapture | None = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "stock_class" not in cls.__dict__:
            return
        signature = inspect.signature(cls.stock_class.__call__)

        def __call__(self, *args, **kwargs):
            if self.capture is None:
                return self.stock(*args, **kwargs)
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            del arguments[next(iter(signature.parameters))]  # the stock processor's `self`
            refused = [name for name in self.refused_arguments if arguments.get(name) is not None]
            if refused:
                raise ValueError(f"the expression branch does not support {', '.join(refused)} on the main stream")
            return self.with_branch(self.capture, **arguments)

        __call__.__signature__ = signature
        cls.__call__ = __call__

    @abc.abstractmethod
    def with_branch(self, capture: AttentionCapture, attn, **arguments):
        """The stock processor's computation with the branch's tokens joined (see the kernels)."""


def install(blocks: list[torch.nn.Module], processor_class: type[BranchProcessor], attribute: str = "attn") -> list[BranchProcessor]:
    """Give the attention module `attribute` of each block its own processor, numbered in order."""
    processors = []
    for index, block in enumerate(blocks):
        processor = processor_class(index)
        getattr(block, attribute).processor = processor
        processors.append(processor)
    return processors

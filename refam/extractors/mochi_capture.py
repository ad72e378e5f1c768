"""The expression branch for Mochi (diffusers `MochiTransformer3DModel`), as an attention processor.

How the branch rides through Mochi's blocks
-------------------------------------------
The extractor appends the K expressions' T5 embeddings to the caption's: the transformer gets
`encoder_hidden_states = [caption (Lc, padded) | expr_1 ... expr_K (L each)]` and an
`encoder_attention_mask` that is the caption's mask followed by False for every branch token. To
everything outside the attention, the branch tokens are caption padding:

- `time_embed`: the attention pooler that adds the caption to the timestep embedding averages and
  attends only over tokens whose mask is True, so `temb` is unchanged; `caption_proj` is per token,
  so the branch tokens get the same 4096 -> text-width projection the caption tokens get;
- every block: `norm1_context` (modulated RMSNorm with the block's `temb`), `norm2/3/4_context`,
  `ff_context` and the gated residuals are per token, so the branch tokens are updated exactly as
  caption tokens are; the last block (`context_pre_only`) updates no text token at all.

The only place where tokens meet is the joint attention, which `MochiBranchProcessor` replaces
(assigned to each `block.attn1.processor`: Mochi has no `set_attn_processor`). It computes the
video q/k/v (`to_q/k/v`, `norm_q/k`, RoPE) and the text q/k/v of caption AND branch tokens
(`add_q/k/v_proj`, `norm_added_q/k`, no RoPE) with the block's weights, then:

- main stream: exactly the stock `MochiAttnProcessor2_0` on [video; valid caption tokens] (the
  caption's padding removed per batch item via the mask, outputs padded back at the end as the
  stock code does). No video or caption query sees a branch token, so the velocity is unchanged;
- branch: each expression's queries attend to the video keys and to their own expression's real
  tokens (not the caption, not the other expressions), so K expressions in one forward give the
  maps of K separate forwards;
- outputs: [video | caption | branch] go through `to_out` / `to_add_out` as the stock code does.

While its `capture` is set, each processor hands `AttentionCapture` (refam.extractors.capture) one
observation per selected block: the video queries (after `norm_q` and RoPE) x the expression keys
(after `norm_added_k`) / sqrt(d), mean over heads ("cross_attention"), or the video's and the
expressions' attention outputs before `to_out` / `to_add_out` ("attention_output"); and the
expression queries' attention on their own tokens (text-to-text mass, for GAS). Video token n is
latent frame n // (h w), row (n % (h w)) // w, column n % w (Mochi's frame-major patch order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import MochiAttnProcessor2_0

from refam.extractors.capture import AttentionCapture, branch_attention


def apply_mochi_rope(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Mochi's RoPE on [B, N, H, D] (interleaved even/odd pairs), as `MochiAttnProcessor2_0` applies it."""
    x_even = x[..., 0::2].float()
    x_odd = x[..., 1::2].float()
    cos = (x_even * freqs_cos - x_odd * freqs_sin).to(x.dtype)
    sin = (x_even * freqs_sin + x_odd * freqs_cos).to(x.dtype)
    return torch.stack([cos, sin], dim=-1).flatten(-2)


class MochiBranchProcessor:
    """Drop-in for `MochiAttnProcessor2_0` that runs the expression branch while `capture` is set."""

    KEY_ORDER = ("image", "branch")  # the keys `_branch` hands `branch_attention`: [video | branch]

    def __init__(self, block_index: int) -> None:
        self.block_index = block_index
        self.stock = MochiAttnProcessor2_0()
        self.capture: AttentionCapture | None = None

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        capture = self.capture
        if capture is None:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        layout = capture.layout
        c, e = layout.caption_len, layout.caption_len + layout.branch_len
        if encoder_hidden_states.shape[1] != e:
            raise ValueError(
                f"the text sequence has {encoder_hidden_states.shape[1]} tokens; the branch layout expects "
                f"{layout.caption_len} caption + {layout.branch_len} expression tokens"
            )

        # projections, as MochiAttnProcessor2_0 computes them (caption and branch tokens alike)
        query = attn.norm_q(attn.to_q(hidden_states).unflatten(2, (attn.heads, -1)))
        key = attn.norm_k(attn.to_k(hidden_states).unflatten(2, (attn.heads, -1)))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        e_query = attn.norm_added_q(attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1)))
        e_key = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1)))
        e_value = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
        if image_rotary_emb is not None:  # video tokens only
            query = apply_mochi_rope(query, *image_rotary_emb)
            key = apply_mochi_rope(key, *image_rotary_emb)
        # [B, H, S, D]
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))
        e_query, e_key, e_value = (t.transpose(1, 2) for t in (e_query, e_key, e_value))

        main_out = self._main(query, key, value, e_query[:, :, :c], e_key[:, :, :c], e_value[:, :, :c], attention_mask[:, :c])
        num_video = query.shape[2]
        branch_out = self._branch(
            e_query[:, :, c:e], e_key[:, :, c:e], e_value[:, :, c:e], query, key, value, main_out[:, :, :num_video]
        )
        out = torch.cat([main_out, branch_out.to(main_out.dtype)], dim=2)  # [B, H, N + Lc + K L, D]
        out = out.transpose(1, 2).flatten(2, 3)
        video_out, text_out = out.split_with_sizes((num_video, e), dim=1)
        video_out = attn.to_out[1](attn.to_out[0](video_out))
        if hasattr(attn, "to_add_out"):
            text_out = attn.to_add_out(text_out)
        return video_out, text_out

    @staticmethod
    def _main(query, key, value, c_query, c_key, c_value, caption_mask) -> torch.Tensor:
        """The stock joint attention over [video; valid caption tokens], per batch item; the rows of
        removed (padding) tokens are zeros at the end, as in `MochiAttnProcessor2_0`."""
        total = query.shape[2] + c_query.shape[2]
        outputs = []
        for idx in range(query.shape[0]):
            valid = torch.nonzero(caption_mask[idx].flatten(), as_tuple=False).flatten()
            q = torch.cat([query[idx : idx + 1], c_query[idx : idx + 1, :, valid]], dim=2)
            k = torch.cat([key[idx : idx + 1], c_key[idx : idx + 1, :, valid]], dim=2)
            v = torch.cat([value[idx : idx + 1], c_value[idx : idx + 1, :, valid]], dim=2)
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
            outputs.append(F.pad(out, (0, 0, 0, total - out.shape[2])))
        return torch.cat(outputs, dim=0)

    def _branch(self, q_e, k_e, v_e, q_vid, k_vid, v_vid, vid_out) -> torch.Tensor:
        """Expression tokens [B, H, K L, D] attend to their own expression's real tokens and to the
        video tokens [B, H, N, D]. `vid_out` [B, H, N, D] is the main stream's video attention
        output of this block (before `to_out`). Returns [B, H, K L, D]."""
        capture = self.capture
        layout = capture.layout
        num_video = k_vid.shape[2]  # keys in the layout's order: [video | branch]
        keys, values = torch.cat([k_vid, k_e], dim=2), torch.cat([v_vid, v_e], dim=2)
        out, probs = branch_attention(q_e, keys, values, capture.key_bias)
        if self.block_index in capture.selected_blocks:
            kk, length = layout.num_expressions, layout.expression_len
            for item in range(out.shape[0]):
                if capture.representation == "cross_attention":
                    vid_vectors, expr_vectors = q_vid[item].transpose(0, 1), k_e[item].transpose(0, 1)  # [N, H, D], [K L, H, D]
                else:  # both before the output projections, from this same block call
                    vid_vectors, expr_vectors = vid_out[item].transpose(0, 1), out[item].transpose(0, 1)
                capture.add(vid_vectors, expr_vectors.unflatten(0, (kk, length)), probs[item, :, :, num_video:])
        return out


def install_mochi_branch(transformer) -> list[MochiBranchProcessor]:
    """Give every block of a MochiTransformer3DModel its own branch processor (block i -> index i)."""
    processors = []
    for index, block in enumerate(transformer.transformer_blocks):
        processor = MochiBranchProcessor(index)
        block.attn1.processor = processor
        processors.append(processor)
    return processors

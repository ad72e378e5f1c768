"""HiDream-I1 (diffusers `HiDreamImagePipeline`): double- then single-stream blocks; block i reads an evolving
[T5 | Llama layer `llama_layers[-1]`] text stream and the fresh Llama layer `llama_layers[i]`, dropped after it.
Sigma: the transformer is told 1000 sigma and predicts x0 - eps (`velocity_sign = -1`; the pipeline negates it).

An expression rides as a caption of its text would (its real tokens): its T5 rows and its Llama rows in each of the
three groups, after the caption's, [T5 | Llama | Llama] tokens (`HiDreamReader`), seeing its own rows and the image
(not the caption, another expression or a non-square image's padding); the per-patch softmax runs over all its
rows, as the model's attention compares a caption's. CLIP's pooled vector, modulating every row, is the caption's.
"""

from __future__ import annotations

import math
from collections import namedtuple
from dataclasses import dataclass

import torch
from diffusers.models.transformers.transformer_hidream_image import HiDreamAttnProcessor, apply_rope

from refam.extractors.branch import BranchProcessor, install, joint_branch
from refam.extractors.latents import Latent, patched_latent, vae_latent
from refam.extractors.template import ImageDiTExtractor
from refam.text.decoder import DecoderReader, PromptTemplate
from refam.text.reader import EncodedExpressions, ExpressionReader
from refam.text.t5 import T5Reader


HiDreamCaption = namedtuple("HiDreamCaption", "t5 llama pooled")  # [1, Lt, D], [layers, 1, Ll, D], [1, CLIP-L + G]


@dataclass
class HiDreamExpressions(EncodedExpressions):
    """Rows [K, L, Dt5 + layers Dllama] in token order (T5's, Llama's, Llama's real tokens, then the padding), T5
    rows in T5's columns, Llama's (every layer) in the rest; `groups` [K, L]: a token's row in [T5 | Llama | Llama]."""

    groups: torch.Tensor | None = None
    t5_rows: int = 0


class TextRows:
    """One forward's text, set by `denoise` for the processors: caption, expressions, the image's real tokens."""

    caption: HiDreamCaption
    expressions: HiDreamExpressions
    image: int

    def split(self, total: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(main rows, the branch's rows in token order, image rows with padding) of a block's sequence
        [image | caption T5 | branch T5 | caption Llama | branch Llama | caption fresh | branch fresh]."""
        g, lt, caption_t5, caption_llama = (self.expressions.groups, self.expressions.t5_rows,
                                            self.caption.t5.shape[1], self.caption.llama.shape[2])
        (k, length), ll = g.shape, (g.shape[1] - lt) // 2
        images = total - caption_t5 - 2 * caption_llama - k * length
        t5 = images + caption_t5  # where each group's branch rows start
        llama, fresh = t5 + k * lt + caption_llama, t5 + k * (lt + ll) + 2 * caption_llama
        main = torch.cat([torch.arange(t5), torch.arange(t5 + k * lt, llama), torch.arange(llama + k * ll, fresh)])
        first = torch.arange(k)[:, None]
        branch = torch.where(g < lt, t5 + first * lt + g, torch.where(
            g < lt + ll, llama + first * ll + g - lt, fresh + first * ll + g - lt - ll))
        return main, branch.flatten(), images


def stock_qkv(attn, hidden_states, masks, text, rotary_emb):
    """q, k, v [B, S, H, D] of [image | text] as `HiDreamAttnProcessor` makes them: each stream's projections and
    RMS norms over all heads, the image's padding keys zeroed, RoPE (text ids are zeros: the identity)."""
    batch, dtype, parts = hidden_states.shape[0], hidden_states.dtype, []
    for x, stream in [(hidden_states, "")] + ([] if attn.single else [(text, "_t")]):  # the text's modules end in _t
        to_q, to_k, to_v, norm_q, norm_k = (getattr(attn, name + stream)
                                            for name in ("to_q", "to_k", "to_v", "q_rms_norm", "k_rms_norm"))
        q, k, v = norm_q(to_q(x)).to(dtype=dtype), norm_k(to_k(x)).to(dtype=dtype), to_v(x)
        q, k, v = (t.view(batch, -1, attn.heads, t.shape[-1] // attn.heads) for t in (q, k, v))
        parts.append([q, k * masks.view(batch, -1, 1, 1) if masks is not None and not parts else k, v])
    query, key, value = parts[0] if attn.single else (torch.cat(pair, dim=1) for pair in zip(*parts))
    turned = query.shape[-1] if query.shape[-1] == rotary_emb.shape[-3] * 2 else query.shape[-1] // 2  # or half a head
    q, k = apply_rope(query[..., :turned], key[..., :turned], rotary_emb)
    return torch.cat([q, query[..., turned:]], dim=-1), torch.cat([k, key[..., turned:]], dim=-1), value


class HiDreamBranchProcessor(BranchProcessor):
    """`HiDreamAttnProcessor` of a double- or single-stream block, the branch handed to the kernel last."""

    stock_class = HiDreamAttnProcessor
    rows: TextRows  # set at install, filled by `denoise`

    def with_branch(self, capture, attn, hidden_states, hidden_states_masks, encoder_hidden_states, image_rotary_emb,
                    **unused):
        query, key, value = stock_qkv(attn, hidden_states, hidden_states_masks, encoder_hidden_states, image_rotary_emb)
        main, branch, images = self.rows.split(query.shape[1])
        real, stock = self.rows.image, []

        def main_attention(*_):  # the stock call on the main stream in its own order, the image's padding included
            out = torch.nn.functional.scaled_dot_product_attention(
                *(t[:, main].transpose(1, 2) for t in (query, key, value)), dropout_p=0.0, is_causal=False)
            stock.append(out.transpose(1, 2))
            return torch.cat([stock[0][:, :real], stock[0][:, images:]], dim=1)

        handed = torch.cat([main[:real], main[images:], branch])  # [real image | caption | branch]
        out = joint_branch(capture, self.block_index, query[:, handed], key[:, handed], value[:, handed],
                           ("image", "caption", "branch"), main_attention)
        joint = torch.empty_like(query)
        joint[:, main], joint[:, branch] = stock[0], out[:, -branch.numel():]
        joint = joint.flatten(2, 3).to(query.dtype)
        return attn.to_out(joint) if attn.single else (attn.to_out(joint[:, :images]), attn.to_out_t(joint[:, images:]))


class HiDreamReader(ExpressionReader):
    """An expression as HiDream's blocks read a caption: T5's rows, then Llama's (every hidden layer but the
    embeddings), then Llama's again (the fresh group); tokens likewise, so words are filtered in each group."""

    def __init__(self, t5: T5Reader, llama: DecoderReader) -> None:
        self.t5, self.llama, self.max_tokens = t5, llama, t5.max_tokens

    def count_tokens(self, text: str) -> int:
        return max(self.t5.count_tokens(text), self.llama.count_tokens(text))

    def tokenize(self, expressions):
        return [a + b + b for a, b in zip(self.t5.tokenize(expressions), self.llama.tokenize(expressions))]

    def encode(self, expressions, device, dtype, magnet_vectors=None) -> HiDreamExpressions:
        t5, llama = (reader.encode(expressions, device, dtype, magnet_vectors) for reader in (self.t5, self.llama))
        (k, lt, width), ll = t5.embeds.shape, llama.valid.shape[1]
        grouped = t5.embeds.new_zeros(k, lt + 2 * ll, width + llama.embeds.shape[-1])
        grouped[:, :lt, :width], grouped[:, lt:, width:] = t5.embeds, llama.embeds.repeat(1, 2, 1)
        valid = torch.cat([t5.valid, llama.valid, llama.valid], dim=1)
        groups = torch.stack(  # token order: the real rows of the three groups, then their padding
            [torch.cat([row.nonzero()[:, 0], (~row).nonzero()[:, 0]]) for row in valid])
        tokens = [[(a + b + b)[g] for g in order] for a, b, order in zip(t5.tokens, llama.tokens, groups.tolist())]
        return HiDreamExpressions(embeds=grouped.gather(1, groups.to(grouped.device)[..., None].expand_as(grouped)),
                                  valid=valid.gather(1, groups), tokens=tokens, groups=groups, t5_rows=lt)


class HiDreamExtractor(ImageDiTExtractor):
    """Maps of referring expressions from HiDream-I1 (16 double- + 32 single-stream blocks). `ImageDiTExtractor`'s
    settings; caption_max_tokens is the caption's T5 and Llama length (the pipeline's 128)."""

    pipeline = "HiDreamImagePipeline"
    branch_first = False
    velocity_sign = -1
    checkpoint_layout = ("the folder of a HiDream-I1 checkpoint in the diffusers layout (model_index.json, transformer/, "
                         "vae/, text_encoder/ to text_encoder_4/, tokenizer/ to tokenizer_4/, scheduler/) or a hub id "
                         "such as HiDream-ai/HiDream-I1-Full")

    def __init__(self, pretrained: str, caption_max_tokens: int = 128, **settings) -> None:
        super().__init__(pretrained, caption_max_tokens=caption_max_tokens, **settings)

    def install_branch(self, pipe) -> list[HiDreamBranchProcessor]:
        blocks, self.rows = (*pipe.transformer.double_stream_blocks, *pipe.transformer.single_stream_blocks), TextRows()
        processors = install([block.block for block in blocks], HiDreamBranchProcessor, attribute="attn1")
        for processor in processors:
            processor.rows = self.rows
        return processors

    def expression_reader(self) -> HiDreamReader:
        pipe, limit = self.pipe, self.expression_max_tokens
        layers = tuple(range(1, pipe.text_encoder_4.config.num_hidden_layers + 1))  # hidden_states[1:]
        llama = DecoderReader(pipe.tokenizer_4, pipe.text_encoder_4, PromptTemplate("{}", hidden_layers=layers), limit)
        return HiDreamReader(T5Reader(pipe.tokenizer_3, pipe.text_encoder_3, limit), llama)

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> HiDreamCaption:
        t5, _, llama, _, pooled, _ = self.prompt(prompt=caption, do_classifier_free_guidance=False,
                                                 max_sequence_length=self.caption_max_tokens)
        return HiDreamCaption(*(x.to(self.device, self.dtype) for x in (t5, llama, pooled)))

    def caption_len(self, condition: HiDreamCaption) -> int:
        return condition.t5.shape[1] + 2 * condition.llama.shape[2]  # T5, the evolving and the fresh Llama rows

    @torch.inference_mode()
    def encode_image(self, image) -> Latent:  # the inverse of the pipeline's decode, 2 x 2 cells a token
        return patched_latent(vae_latent(self.pipe, self.pixels(image)), self.dtype, 2)

    def timestep(self, sigma: float) -> float:
        return 1000.0 * sigma

    def denoise(self, x_t, sigma, grid, condition: HiDreamCaption, expressions: HiDreamExpressions | None):
        t5, llama = condition.t5, condition.llama
        if expressions is not None:
            (k, length, _), lt, width = expressions.embeds.shape, expressions.t5_rows, t5.shape[-1]
            layers, ll = llama.shape[0], (length - lt) // 2  # Llama rows of each of its two groups
            index = expressions.groups.to(self.device)[..., None].expand_as(expressions.embeds)
            rows = torch.empty_like(expressions.embeds).scatter_(1, index, expressions.embeds).to(t5.dtype)  # groups
            t5 = torch.cat([t5, rows[:, :lt, :width].reshape(1, k * lt, width)], dim=1)
            branch = rows[:, lt : lt + ll, width:].unflatten(-1, (layers, -1)).permute(2, 0, 1, 3)
            llama = torch.cat([llama, branch.reshape(layers, 1, k * ll, -1)], dim=2)
            self.rows.caption, self.rows.expressions, self.rows.image = condition, expressions, math.prod(grid)
        return self.pipe.transformer(
            hidden_states=x_t, timesteps=self.timestep_tensor(sigma), encoder_hidden_states_t5=t5,
            encoder_hidden_states_llama3=llama, pooled_embeds=condition.pooled, return_dict=False,
        )[0]

"""HiDream-I1 under the contract: the stock `HiDreamImagePipeline.__call__` and `HiDreamAttnProcessor`.

An expression's rows are its T5 rows, then its Llama rows (every layer) as the evolving group and as the fresh
group, [T5 | Llama | Llama]; refam packs them one row a token, T5's in T5's columns and Llama's (layers side by
side) in the rest, the other columns zero, which is how this entry tells the groups apart."""

import torch
import torch.nn.functional as F
from diffusers import HiDreamImagePipeline
from diffusers.models.transformers.transformer_hidream_image import apply_rope

from refam.extractors.hidream import HiDreamExtractor
from refam.testing.tiny_hidream import save_tiny_hidream
from tests.extractors.contract.contract import ContractEntry, block_inputs, flow_levels

CAPTION_TOKENS = 16  # the pipeline's max_sequence_length: T5 and Llama captions padded to it, unmasked


def _call(pipe, x_t, sigma, t5, llama, pooled):
    # HiDreamImagePipeline.__call__ (its conditional half): the scheduler's timestep 1000 sigma, the latent [B, C, H, W]
    # the transformer patchifies (a non-square one padded to max_resolution), the output negated after the call
    return pipe.transformer(hidden_states=x_t, timesteps=torch.full((1,), 1000.0 * sigma), encoder_hidden_states_t5=t5,
                            encoder_hidden_states_llama3=llama, pooled_embeds=pooled, return_dict=False)[0]


def _caption(pipe, caption):
    t5, _, llama, _, pooled, _ = pipe.encode_prompt(prompt=caption, do_classifier_free_guidance=False,
                                                    max_sequence_length=CAPTION_TOKENS)
    return t5, llama, pooled


def stock_velocity(pipe, x_t, sigma, grid, caption):
    return _call(pipe, x_t, sigma, *_caption(pipe, caption))


def _groups(pipe, rows):
    """(T5 rows [1, Lt, Dt5], Llama rows [layers, 1, Ll, D]) of packed rows [1, Lt + 2 Ll, W]."""
    width = pipe.text_encoder_3.config.d_model
    lt = int((rows[0, :, width:] == 0).all(dim=-1).sum())
    ll = (rows.shape[1] - lt) // 2
    llama = rows[0, lt : lt + ll, width:].unflatten(-1, (pipe.text_encoder_4.config.num_hidden_layers, -1))
    return rows[:, :lt, :width], llama.permute(1, 0, 2)[:, None]


def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
    # the image queries of the stock forward with the caption; the expression's keys are the text keys of the
    # stock forward with its T5 and Llama rows as the caption's, beside the caption's pooled vector
    attn = pipe.transformer.double_stream_blocks[0].block.attn1
    t5, llama, pooled = _caption(pipe, caption)
    image = block_inputs(attn, lambda: _call(pipe, x_t, sigma, t5, llama, pooled))
    text = block_inputs(attn, lambda: _call(pipe, x_t, sigma, *_groups(pipe, expression), pooled))
    heads = attn.heads
    query = attn.q_rms_norm(attn.to_q(image["args"][0])).unflatten(-1, (heads, -1))
    key = attn.k_rms_norm_t(attn.to_k_t(text["args"][2])).unflatten(-1, (heads, -1))
    rope = image["image_rotary_emb"]
    query, _ = apply_rope(query, query, rope[:, : query.shape[1]])
    return query[0, : grid[1] * grid[2]], key[0]  # text ids are zeros: no rotation


def reference_hooks(transformer, valid):
    # the stock joint sequence is [image | caption T5 | branch T5 | caption Llama | branch Llama | caption fresh |
    # branch fresh]: while each attention runs, its SDPA sees it reordered to [image | caption | branch, expression
    # by expression], the reference's segments, and returns its output in the stock order
    k, length = valid.shape
    assert k == 1, "the reference reads one expression (every_block_gaps): its three groups are then unpadded"
    sizes, saved = {}, []

    def record(module, args, kwargs):
        sizes["t5"] = (kwargs["encoder_hidden_states_t5"].shape[1] - CAPTION_TOKENS) // k
        sizes["llama"] = (kwargs["encoder_hidden_states_llama3"].shape[2] - CAPTION_TOKENS) // k
        assert sizes["t5"] + 2 * sizes["llama"] == length

    def order(total):
        groups = [sizes["t5"], sizes["llama"], sizes["llama"]]
        start = images = total - 3 * CAPTION_TOKENS - k * sum(groups)
        main, branch = [torch.arange(images)], []
        for per in groups:
            main.append(torch.arange(start, start + CAPTION_TOKENS))
            branch.append(torch.arange(start + CAPTION_TOKENS, start + CAPTION_TOKENS + k * per).view(k, per))
            start += CAPTION_TOKENS + k * per
        return torch.cat([*main, torch.cat(branch, dim=1).flatten()])

    def enter(*_):
        inner = F.scaled_dot_product_attention
        saved.append(inner)

        def reordered(query, key, value, **kwargs):
            index = order(query.shape[2])
            out = inner(query[:, :, index], key[:, :, index], value[:, :, index], **kwargs)
            return torch.empty_like(out).index_copy_(2, index, out)

        F.scaled_dot_product_attention = reordered

    def leave(*_):
        F.scaled_dot_product_attention = saved.pop()

    attns = [block.block.attn1 for block in (*transformer.double_stream_blocks, *transformer.single_stream_blocks)]
    return [transformer.register_forward_pre_hook(record, with_kwargs=True),
            *(hook for attn in attns for hook in (attn.register_forward_pre_hook(enter), attn.register_forward_hook(leave)))]


class _NoRope(torch.nn.Module):
    """The identity rotation for every token: `HiDreamImageEmbedND`'s [B, S, 1, D / 2, 2, 2] of cos 1, sin 0."""

    def __init__(self, pairs):
        super().__init__()
        self.pairs = pairs

    def forward(self, ids):
        eye = torch.eye(2, device=ids.device)
        return eye.expand(ids.shape[0], ids.shape[1], 1, self.pairs, 2, 2).clone()


def positions_off(transformer, monkeypatch):
    monkeypatch.setattr(transformer, "pe_embedder", _NoRope(transformer.config.attention_head_dim // 2))


def stock_expression(pipe, text, length):
    # HiDreamImagePipeline.encode_prompt: T5's rows of the text's tokens (the prompt padded to max_sequence_length,
    # masked in T5), Llama's hidden_states[1:] of its tokens (right-padded, masked), packed as refam packs them
    t5, llama, _ = _caption(pipe, text)
    lt, ll = len(pipe.tokenizer_3(text).input_ids), len(pipe.tokenizer_4(text).input_ids)
    assert lt + 2 * ll == length, f"the pipeline reads {lt} + 2 x {ll} rows, the extractor {length}"
    llama = llama[:, 0, :ll].permute(1, 0, 2).flatten(1)
    rows = t5.new_zeros(length, t5.shape[-1] + llama.shape[-1])
    rows[:lt, : t5.shape[-1]], rows[lt:, t5.shape[-1]:] = t5[0, :lt], llama.repeat(2, 1)
    return rows


def stock_latent(pipe, image, height, width):
    # diffusers has no image-conditioned HiDream pipeline: the inverse of HiDreamImagePipeline's decode
    # (latents / scaling_factor + shift_factor), on its image_processor's pixels, the VAE's mode
    pixels = pipe.image_processor.preprocess(image, height=height, width=width)
    latent = pipe.vae.encode(pixels).latent_dist.mode()
    return (latent - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor


ENTRY = ContractEntry(
    name="hidream",
    extractor_class=HiDreamExtractor,
    pipeline_class=HiDreamImagePipeline,
    save=lambda folder, depth: save_tiny_hidream(folder, double_blocks=depth, single_blocks=depth),
    settings=dict(torch_dtype="float32", resolution=96, keep_aspect=True, caption_max_tokens=CAPTION_TOKENS),
    image_size=(120, 70),  # a 5 x 8 token grid, padded to the tiny max_resolution's 64 tokens
    stock_velocity=stock_velocity,
    block0_vectors=block0_vectors,
    positions_off=positions_off,
    stock_latent=stock_latent,
    # HiDreamImagePipeline with UniPC: set_timesteps(N), the integer timesteps told as they are
    scheduler_levels=lambda pipe: flow_levels(pipe),
    stock_expression=stock_expression,
    depth_observations=lambda depth: 2 * depth,
    reference_hooks=reference_hooks,
)

"""A Lumina-Image-2.0-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as Alpha-VLLM/Lumina-Image-2.0 (Lumina2Transformer2DModel, Gemma2Model, GemmaTokenizer,
AutoencoderKL with FLUX's latent layout, FlowMatchEulerDiscreteScheduler). The tokenizer is GemmaTokenizer's
own layout (spaces normalised to "▁", BPE with byte fallback, BOS added) over a vocabulary made here: each
tiny-vocabulary word and each word of the pipeline's system prompt one "▁word" token, so the templated prompt
stays short. Shapes kept from the real model: grouped-query attention in the transformer (24 heads over 8
key/value heads: here 4 over 2) and in Gemma 2, two context-refiner and two noise-refiner blocks, three equal
RoPE axes. The text width differs from the model's (the real ones are both 2304), and every QK-norm scale is
drawn at random, so that a skipped caption embedder or a swapped norm shows.
"""

from __future__ import annotations

from pathlib import Path

import torch

from refam.testing.tiny_flux import randomize_qk_norms, save_pipeline_folder, tiny_vocabulary
from refam.testing.tiny_zimage import build_flux_vae

# Lumina2Pipeline.__init__'s system prompt, which every prompt follows
LUMINA2_SYSTEM_PROMPT = (
    "You are an assistant designed to generate superior images with the superior degree of image-text alignment "
    "based on textual prompts or user prompts."
)


def build_gemma_tokenizer(texts: tuple[str, ...] = (LUMINA2_SYSTEM_PROMPT + " <Prompt Start> _",)):
    """A GemmaTokenizer whose merges make every tiny-vocabulary word and every word of `texts` one token
    after a space ("▁dog"), and the first word of each text one token at its start."""
    from transformers import GemmaTokenizer

    vocab = {token: index for index, token in enumerate(("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"))}
    vocab.update({f"<0x{byte:02X}>": len(vocab) + byte for byte in range(256)})
    words = {"▁" + word for word in tiny_vocabulary()} | {"▁" + w for text in texts for w in text.split()}
    words |= {text.split()[0] for text in texts}
    for char in sorted({char for word in words for char in word}):
        vocab.setdefault(char, len(vocab))
    merges = []
    for size in range(2, max(map(len, words)) + 1):  # shorter pieces first: each merge extends a word's prefix
        for word in sorted(w for w in words if len(w) >= size):
            if word[:size] not in vocab:
                vocab[word[:size]] = len(vocab)
                merges.append((word[: size - 1], word[size - 1]))
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)  # as the real one: <bos> first
    tokenizer.padding_side = "right"
    return tokenizer


def tiny_gemma2(tokenizer, width: int, layers: int = 3, max_positions: int = 1024):
    """A Gemma2Model over `build_gemma_tokenizer`'s vocabulary (pad 0, eos 1, bos 2), grouped-query, drawn from
    torch's current random state: Lumina 2's and SANA's text encoder."""
    from transformers import Gemma2Config, Gemma2Model

    return Gemma2Model(Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=width // 2, query_pre_attn_scalar=width // 2,
        max_position_embeddings=max_positions, sliding_window=64, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )).eval()


def build_tiny_lumina2(seed: int = 0, width: int = 48, heads: int = 4, kv_heads: int = 2, layers: int = 2,
                       text_width: int = 24):
    """A randomly initialised Lumina2Pipeline with the real component classes, deterministic by seed."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    tokenizer = build_gemma_tokenizer()
    axis = width // heads // 3
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = tiny_gemma2(tokenizer, text_width)
        transformer = Lumina2Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=16, hidden_size=width, num_layers=layers, num_refiner_layers=2,
            num_attention_heads=heads, num_kv_heads=kv_heads, multiple_of=16, axes_dim_rope=(axis, axis, axis),
            axes_lens=(256, 64, 64), cap_feat_dim=text_width,
        )
        randomize_qk_norms(transformer, seed + 2)
        vae = build_flux_vae()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=6.0, use_dynamic_shifting=False)
    return Lumina2Pipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                           tokenizer=tokenizer)


def save_tiny_lumina2(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_lumina2(**kwargs), folder)

"""A FLUX.2-architecture pipeline built tiny from configs, saved in the diffusers layout.

Two variants, the classes of the real checkpoints:
- "dev" (black-forest-labs/FLUX.2-dev): Flux2Pipeline, Flux2Transformer2DModel with guidance
  embedding, AutoencoderKLFlux2, Mistral3ForConditionalGeneration read through a PixtralProcessor
  (Mistral Small 3.1's control tokens at their ids, left padding, its chat template);
- "klein" (black-forest-labs/FLUX.2-klein-4B): Flux2KleinPipeline, the transformer without guidance
  embedding, Qwen3ForCausalLM read through a Qwen2Tokenizer (right padding, Qwen3's template).

Byte-level BPE vocabularies trained on the tiny vocabulary (`refam.testing.tiny_tokenizers`) stand
in for Tekken's and Qwen's, so the folder loads through `<Pipeline>.from_pretrained` offline and
`pipe.encode_prompt(prompt)` runs unchanged with its defaults: the text encoders are tiny in width
but deep enough (dev 32, klein 28 layers) for the hidden layers the pipelines stack ((10, 20, 30)
and (9, 18, 27)), none of them the final, normed, layer.

Kept from the real models: the stacked text width (3 x the LLM width = joint_attention_dim), four
RoPE axes (t, h, w, l) with theta 2000, the VAE's 8x compression, 2x2 patchify into 4 x latent
channels and the batch-norm statistics the latents are normalised with (drawn at random here, so a
missing normalisation shows), and FLUX.1-dev's scheduler config (which the FLUX.2-dev conversion
copies). The QK norms' scales are drawn at random (fresh ones are all 1), so that a text-key norm
swapped for the image one shows. FLUX.2's RoPE is not learned, so a fresh model already has a non-trivial one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from refam.testing.tiny_flux import randomize_qk_norms, save_pipeline_folder
from refam.testing.tiny_tokenizers import build_qwen2_tokenizer, train_byte_level_bpe

VARIANTS = ("dev", "klein")

# black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json, which diffusers'
# scripts/convert_flux2_to_diffusers.py copies into FLUX.2-dev; Flux2Pipeline overrides the shift
# with its own `compute_empirical_mu` (diffusers pipelines/flux2/pipeline_flux2.py, after
# black-forest-labs/flux2 src/flux2/sampling.py)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096,
)

# Tekken's pre-tokenizer split (mistral-common's pattern, as transformers' MistralConverter uses it)
TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Mistral Small 3.1's first control tokens at their real ids (Tekken reserves 0..999 for them)
MISTRAL_SPECIAL_TOKENS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
)

# Mistral Small 3.1's chat template, reduced to what it renders for system, user (text and image
# blocks) and assistant turns: BOS, [SYSTEM_PROMPT]...[/SYSTEM_PROMPT], [INST]...[/INST]
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set blocks = [{'type': 'text', 'text': message['content']}] %}"
    "{%- else %}{%- set blocks = message['content'] %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + blocks[0]['text'] + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' }}"
    "{%- for block in blocks %}{%- if block['type'] == 'text' %}{{- block['text'] }}"
    "{%- elif block['type'] in ['image', 'image_url'] %}{{- '[IMG]' }}{%- endif %}{%- endfor %}"
    "{{- '[/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}{{- blocks[0]['text'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)

# Qwen3's added tokens after Qwen2.5-VL's special ones (the same, at the same ids 151643...): the
# tool and thinking tokens, added but NOT special in the real tokenizer
QWEN3_PLAIN_ADDED_TOKENS = ("<tool_call>", "</tool_call>", "<think>", "</think>")

# Qwen3's chat template, reduced to plain system/user/assistant turns and `enable_thinking`
# (Flux2KleinPipeline renders one user turn, add_generation_prompt=True, enable_thinking=False)
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def build_mistral_processor(system_message: str):
    """A PixtralProcessor over a tiny Tekken-style byte-level BPE: the transformers v5 backend that
    AutoTokenizer gives Mistral3 without mistral-common (TokenizersBackend), left padding, and the
    system message's words one token each so that the pipeline's prompt stays short."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PixtralImageProcessor, PixtralProcessor
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(TEKKEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    # the special tokens come in after training, so that they take their real ids, in order
    base = TokenizersBackend(tokenizer_object=backend, padding_side="left", model_max_length=131072)
    tokenizer = train_byte_level_bpe(base, [system_message, " _ ; . , -"], MISTRAL_SPECIAL_TOKENS)
    tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = "<unk>", "<s>", "</s>", "<pad>"
    return PixtralProcessor(
        image_processor=PixtralImageProcessor(size={"longest_edge": 64}, patch_size=16),
        tokenizer=tokenizer, patch_size=16, spatial_merge_size=2, chat_template=MISTRAL_CHAT_TEMPLATE,
    )


def build_qwen3_tokenizer():
    """Qwen2.5-VL's tokenizer (`build_qwen2_tokenizer`: pad <|endoftext|>, eos <|im_end|>, right
    padding), its chat roles one token each, with Qwen3's plain added tokens and chat template."""
    from tokenizers import AddedToken

    tokenizer = build_qwen2_tokenizer("user\nassistant\nsystem\n\n _ ; . , -")
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN3_PLAIN_ADDED_TOKENS])
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def _mistral_encoder(vocab_size: int, width: int, layers: int):
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    config = Mistral3Config(
        text_config=dict(
            model_type="mistral", vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width,
            num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=width // 2,
            max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=1e9, sliding_window=None,
            bos_token_id=1, eos_token_id=2, pad_token_id=11,
        ),
        vision_config=dict(
            model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            head_dim=8, image_size=64, patch_size=16, num_channels=3,
        ),
        image_token_index=10, spatial_merge_size=2, vision_feature_layer=-1,
    )
    return Mistral3ForConditionalGeneration(config)


def _qwen3_encoder(tokenizer, width: int, layers: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=width // 2, max_position_embeddings=1024,
        rope_theta=1e6, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    ))


def build_tiny_flux2(
    seed: int = 0, variant: str = "dev", width: int = 32, heads: int = 2, double_blocks: int = 1,
    single_blocks: int = 2, text_width: int = 16, latent_channels: int = 4, text_depth: int | None = None,
):
    """A randomly initialised FLUX.2 pipeline ("dev" or "klein") with the real component classes,
    deterministic by seed. `text_depth`: the LLM's layers (default dev 32, klein 28, so that the
    pipelines' default stacked layers exist; fewer make a faster model for the layers given)."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    head_dim = width // heads
    if head_dim % 8:
        raise ValueError(f"width / heads must be a multiple of 8 (four even RoPE axes), got {head_dim}")
    tokenizer = build_mistral_processor(SYSTEM_MESSAGE) if variant == "dev" else build_qwen3_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if variant == "dev":
            text_encoder = _mistral_encoder(len(tokenizer.tokenizer), text_width, layers=text_depth or 32)
        else:
            text_encoder = _qwen3_encoder(tokenizer, text_width, layers=text_depth or 28)
        transformer = Flux2Transformer2DModel(
            patch_size=1, in_channels=4 * latent_channels, num_layers=double_blocks,
            num_single_layers=single_blocks, attention_head_dim=head_dim, num_attention_heads=heads,
            joint_attention_dim=3 * text_width, timestep_guidance_channels=256, mlp_ratio=3.0,
            axes_dims_rope=(head_dim // 4,) * 4, rope_theta=2000, guidance_embeds=variant == "dev",
        )
        randomize_qk_norms(transformer, seed + 1)
        vae = AutoencoderKLFlux2(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
            latent_channels=latent_channels, norm_num_groups=4, sample_size=64,
        )
        vae.bn.running_mean.normal_(0.0, 0.5)
        vae.bn.running_var.uniform_(0.5, 2.0)
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
    if variant == "dev":
        from diffusers import Flux2Pipeline

        return Flux2Pipeline(
            scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
        )
    from diffusers import Flux2KleinPipeline

    return Flux2KleinPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
        is_distilled=True,
    )


def save_tiny_flux2(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_flux2(**kwargs), folder)

"""The tiny FLUX.2 pipelines (refam.testing.tiny_flux2) are a real Flux2Pipeline (dev: Mistral 3)
and a real Flux2KleinPipeline (klein: Qwen3): they load offline from their folders, the stock
prompt encoding and transformer run on them, and they keep the real prompt layout (chat template,
padding side, stacked hidden layers, text positions 0..511) that the expression branch must copy."""

import pytest
import torch

from refam.testing.tiny_flux2 import build_tiny_flux2, save_tiny_flux2

ROWS, COLS = 4, 6  # a non-square token grid: latent [4 C, 4, 6] after the 2x2 patchify



@pytest.fixture(scope="module", params=["dev", "klein"])
def pipe(request, tmp_path_factory):
    from diffusers import Flux2KleinPipeline, Flux2Pipeline

    folder = save_tiny_flux2(tmp_path_factory.mktemp("tiny-flux2") / request.param, variant=request.param)
    pipeline_class = Flux2Pipeline if request.param == "dev" else Flux2KleinPipeline
    loaded = pipeline_class.from_pretrained(folder, local_files_only=True)
    loaded.variant = request.param
    return loaded


def _tokenizer(pipe):
    return pipe.tokenizer.tokenizer if pipe.variant == "dev" else pipe.tokenizer


def _caption(pipe, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        return pipe.encode_prompt(text, device="cpu")


def _velocity(pipe, latent, embeds, txt_ids, sigma=0.75):
    guidance = torch.tensor([4.0]) if pipe.transformer.config.guidance_embeds else None
    with torch.inference_mode():
        return pipe.transformer(
            hidden_states=latent, encoder_hidden_states=embeds, timestep=torch.tensor([sigma]),
            img_ids=pipe._prepare_latent_ids(torch.zeros(1, 1, ROWS, COLS)), txt_ids=txt_ids, guidance=guidance,
            return_dict=False,
        )[0]


def test_the_folder_loads_as_the_real_component_classes(pipe):
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Mistral3ForConditionalGeneration, PixtralProcessor, Qwen2Tokenizer, Qwen3ForCausalLM

    assert isinstance(pipe.transformer, Flux2Transformer2DModel)
    assert isinstance(pipe.vae, AutoencoderKLFlux2)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    if pipe.variant == "dev":
        assert isinstance(pipe.text_encoder, Mistral3ForConditionalGeneration)
        assert isinstance(pipe.tokenizer, PixtralProcessor)
        assert pipe.transformer.config.guidance_embeds
    else:
        assert isinstance(pipe.text_encoder, Qwen3ForCausalLM)
        assert isinstance(pipe.tokenizer, Qwen2Tokenizer)
        assert not pipe.transformer.config.guidance_embeds and pipe.config.is_distilled
    assert pipe.vae_scale_factor == 8 and pipe.transformer.config.in_channels == 4 * pipe.vae.config.latent_channels
    assert pipe.transformer.config.rope_theta == 2000 and len(pipe.transformer.config.axes_dims_rope) == 4
    config = pipe.scheduler.config
    assert (config.shift, config.use_dynamic_shifting, config.base_shift, config.max_shift) == (3.0, True, 0.5, 1.15)


def test_the_tokenizer_has_the_real_special_tokens_and_padding_side(pipe):
    tokenizer = _tokenizer(pipe)
    if pipe.variant == "dev":  # Mistral Small 3.1's control ids; FLUX.2-dev's prompts are left-padded
        ids = tokenizer.convert_tokens_to_ids(["<s>", "[INST]", "[/INST]", "<pad>", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"])
        assert ids == [1, 3, 4, 11, 17, 18] and tokenizer.padding_side == "left"
    else:  # Qwen3 pads with <|endoftext|> on the right; <think> is an added token but not a special one
        assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.padding_side) == ("<|endoftext|>", "<|im_end|>", "right")
        added = {token.content: token.special for token in tokenizer.added_tokens_decoder.values()}
        assert added["<|im_start|>"] and added["<|im_end|>"] and not added["<think>"] and not added["</think>"]
    # template tokens written in the text are not in `special_tokens_mask` (it marks what the
    # tokenizer adds: padding here), so a reader must find them by their offsets, not by that mask
    enc = tokenizer(["[INST]a<|im_start|>", "a"], padding="longest", return_special_tokens_mask=True)
    assert enc["special_tokens_mask"][0] == [0] * len(enc["input_ids"][0]) and 1 in enc["special_tokens_mask"][1]


def test_byte_level_pieces_carry_their_leading_space_in_their_offsets(pipe):
    """What the magnets and stop-word filter must cope with: ' red' is one piece, 'Ġred', spanning
    the space; the magnet '_' after a space is one piece 'Ġ_'."""
    tokenizer = _tokenizer(pipe)
    text = "the red dog _ with to and pink"
    enc = tokenizer(text, return_offsets_mapping=True)
    pieces = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert pieces == ["the", "Ġred", "Ġdog", "Ġ_", "Ġwith", "Ġto", "Ġand", "Ġpink"]
    assert [text[a:b] for a, b in enc["offset_mapping"]] == ["the", " red", " dog", " _", " with", " to", " and", " pink"]


def test_encode_prompt_stacks_three_hidden_layers_over_512_templated_tokens(pipe):
    embeds, txt_ids = _caption(pipe, "the red dog on the left")
    text_width = pipe.text_encoder.config.get_text_config().hidden_size
    assert embeds.shape == (1, 512, 3 * text_width)
    assert pipe.transformer.config.joint_attention_dim == 3 * text_width
    # positions (t, h, w, l) = (0, 0, 0, index in the padded sequence), padding included
    assert torch.equal(txt_ids[0], torch.stack([torch.zeros(512), torch.zeros(512), torch.zeros(512), torch.arange(512)], 1).long())
    assert torch.isfinite(embeds).all()


def test_the_prompt_sits_where_the_padding_side_puts_it(pipe):
    """dev: [<pad>... <s> [SYSTEM_PROMPT] ... [/SYSTEM_PROMPT] [INST] prompt [/INST]] (left padding);
    klein: [<|im_start|> user \\n prompt <|im_end|> ... </think> \\n\\n <|endoftext|>...] (right padding)."""
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    if pipe.variant == "dev":
        inputs = pipe.tokenizer.apply_chat_template(
            format_input(["the red dog"], pipe.system_message), add_generation_prompt=False, tokenize=True,
            return_dict=True, return_tensors="pt", padding="max_length", truncation=True, max_length=512,
        )
        pieces = pipe.tokenizer.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
        assert pieces[-5:] == ["[INST]", "the", "Ġred", "Ġdog", "[/INST]"] and pieces[0] == "<pad>"
        first = int(inputs["attention_mask"][0].argmax())
        assert pieces[first : first + 2] == ["<s>", "[SYSTEM_PROMPT]"] and inputs["attention_mask"][0, first:].all()
    else:
        text = pipe.tokenizer.apply_chat_template(
            [{"role": "user", "content": "the red dog"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        assert text == "<|im_start|>user\nthe red dog<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        inputs = pipe.tokenizer(text, padding="max_length", max_length=512, return_tensors="pt")
        pieces = pipe.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
        assert pieces[:6] == ["<|im_start|>", "user", "Ċ", "the", "Ġred", "Ġdog"] and pieces[-1] == "<|endoftext|>"


def test_one_stock_forward_on_a_non_square_grid(pipe):
    embeds, txt_ids = _caption(pipe, "the red dog on the left")
    latent = torch.randn(1, ROWS * COLS, pipe.transformer.config.in_channels, generator=torch.Generator().manual_seed(0))
    velocity = _velocity(pipe, latent, embeds, txt_ids)
    assert velocity.shape == latent.shape and torch.isfinite(velocity).all()
    # the text tokens' RoPE positions matter: the expression branch must copy them exactly
    shifted = txt_ids.clone()
    shifted[..., 3] += 1
    assert not torch.allclose(_velocity(pipe, latent, embeds, shifted), velocity, atol=1e-6)


def test_the_build_is_deterministic_by_seed():
    a, b, c = build_tiny_flux2(seed=0, variant="klein"), build_tiny_flux2(seed=0, variant="klein"), build_tiny_flux2(seed=1, variant="klein")
    for name in ("transformer", "text_encoder", "vae"):
        sa, sb, sc = (getattr(p, name).state_dict() for p in (a, b, c))
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    assert a.tokenizer.backend_tokenizer.to_str() == b.tokenizer.backend_tokenizer.to_str()

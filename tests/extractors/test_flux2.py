"""FLUX.2 specifics beyond the contract (tests/extractors/contract/entry_flux2.py): the shift is the
pipeline's own, expressions are read in the chat template with clean words and encoded as the
pipeline encodes a prompt, the caption length bounds an expression with its template, other
pipelines and bad settings are refused in one line."""

import pytest
import torch

from refam.aggregators.magnets import AppendMagnets
from refam.errors import CheckpointError, ConfigError, ExpressionError
from refam.extractors.flux2 import Flux2Extractor
from refam.testing.tiny_flux2 import build_tiny_flux2

SETTINGS = dict(torch_dtype="float32", resolution=96, keep_aspect=True, caption_max_tokens=64, text_layers=[1, 2, 3])



@pytest.fixture(scope="module", params=["dev", "klein"])
def extractor(request):
    extractor = Flux2Extractor("unused", **SETTINGS)
    extractor.use_pipeline(build_tiny_flux2(variant=request.param, text_depth=4), torch.device("cpu"))
    return extractor


def test_the_noise_shift_is_the_pipelines_schedule(extractor):
    """NoiseAt(shift=True) moves sigma where Flux2Pipeline's scheduler puts it: exponential time shift
    with BFL's compute_empirical_mu(image tokens, steps), not the config's FLUX.1 rule."""
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    scheduler = extractor.pipe.scheduler
    for tokens, steps in ((4096, 50), (1024, 4), (6000, 28)):
        extractor.shift_steps = steps
        scheduler.set_timesteps(sigmas=[0.75, 0.3], mu=compute_empirical_mu(tokens, steps))
        shift = extractor.noise_shift(tokens)
        torch.testing.assert_close(torch.tensor([shift(0.75), shift(0.3)]), scheduler.sigmas[:2].float(), rtol=1e-6, atol=0)
    assert shift(1.0) == 1.0 and shift(0.0) == 0.0


def test_expressions_are_read_in_the_chat_template_with_clean_words(extractor):
    magnets = AppendMagnets()
    expression = "the red dog on the left"
    tokens = extractor.tokenize(*magnets.augment(expression))
    own = [t for t in tokens if not t.special]
    assert [t.word for t in own] == ["the", "red", "dog", "on", "the", "left", "_", "with", "to", "and", "pink"]
    assert [t.magnet for t in own] == [False] * 6 + [True] * 5
    special = [t.piece for t in tokens if t.special]
    if type(extractor.pipe).__name__ == "Flux2Pipeline":  # the whole rendered prompt rides along
        assert special[:2] == ["<s>", "[SYSTEM_PROMPT]"] and special[-2:] == ["[INST]", "[/INST]"]
    else:  # Qwen3's generation prompt, <think> included though it is not a special token
        assert special[:3] == ["<|im_start|>", "user", "Ċ"] and "<think>" in special
    kept = [t.word for t, keep in zip(tokens, magnets.keep(tokens, expression)) if keep]
    assert kept == ["red", "dog", "left"]


@pytest.mark.parametrize("expression", [("the red car near the tree", None), AppendMagnets().augment("the big brown dog")])
def test_expressions_are_encoded_as_the_pipeline_encodes_a_prompt(extractor, expression):
    """The branch's rows of an expression are the rows Flux2Pipeline / Flux2KleinPipeline.encode_prompt
    gives the same text as a prompt (its chat template, its stacked layers): the last n rows of the
    padded prompt on dev (left padding), the first n on klein (right padding)."""
    from diffusers import Flux2Pipeline

    encoded = extractor.encode_expressions([expression])
    n = encoded.embeds.shape[1]
    assert encoded.valid.all()
    prompt, _ = extractor.pipe.encode_prompt(expression[0], max_sequence_length=SETTINGS["caption_max_tokens"],
                                             text_encoder_out_layers=tuple(SETTINGS["text_layers"]))
    rows = prompt[0, -n:] if isinstance(extractor.pipe, Flux2Pipeline) else prompt[0, :n]
    # the pipeline attends over the padded prompt with a mask, the reader over n tokens: the same sums in
    # another order (measured: 1 ulp, 3.7e-9, on values up to 0.07); rows off by one are off by 0.08
    torch.testing.assert_close(encoded.embeds[0], rows, rtol=0, atol=1e-7)


def test_an_expression_longer_than_the_caption_with_its_template_is_refused(extractor):
    extractor.validate_expression("the red dog")
    with pytest.raises(ExpressionError, match="caption_max_tokens"):
        extractor.validate_expression(" ".join(["dog"] * 60))


def test_another_pipeline_is_refused_by_name():
    from refam.testing.tiny_flux import build_tiny_flux

    with pytest.raises(CheckpointError, match="FluxPipeline") as error:
        Flux2Extractor("unused", **SETTINGS).use_pipeline(build_tiny_flux(), torch.device("cpu"))
    assert error.value.field == "pretrained"


@pytest.mark.parametrize("field, value", [("resolution", 100), ("shift_steps", 0)])
def test_a_bad_setting_is_one_line_naming_its_field(field, value):
    with pytest.raises(ConfigError) as error:
        Flux2Extractor("unused", **{**SETTINGS, field: value})
    assert error.value.field == field and "\n" not in str(error.value)

"""A prompt template's tokens ride in the branch but stay out of the per-patch softmax by default.

An LLM text encoder reads an expression inside its pipeline's chat template: on FLUX.2 dev a
3-7-word expression rides with 40-44 tokens, most of them the system prompt. The paper's softmax
across tokens runs over the expression's own tokens, its magnets and its end token; the template's
other tokens (system prompt, role markers) are context the encoder and the DiT need, not candidates
for a patch. `template_tokens: "include"` puts them back in the softmax. Checked on the tiny FLUX.2
(dev: Mistral 3, klein: Qwen3) and Qwen-Image (Qwen2.5-VL) pipelines.
"""

import pytest
import torch
from PIL import Image

from refam.aggregators.base import SoftmaxMeanAggregator
from refam.aggregators.magnets import AppendMagnets
from refam.errors import ConfigError
from refam.extractors.flux2 import Flux2Extractor
from refam.extractors.qwenimage import QwenImageExtractor
from refam.testing.tiny_flux2 import build_tiny_flux2
from refam.testing.tiny_qwenimage import build_tiny_qwenimage

SETTINGS = dict(torch_dtype="float32", resolution=96, keep_aspect=True, caption_max_tokens=64)
IMAGE = Image.new("RGB", (120, 70), (90, 140, 60))
EXPRESSIONS = ("the red dog", "a small cup on the left")
# the end token: the template's first token after the expression (and its magnets)
END = {"dev": "[/INST]", "klein": "<|im_end|>", "qwenimage": "<|im_end|>"}


def _build(backbone: str, **settings):
    if backbone == "qwenimage":
        extractor = QwenImageExtractor("unused", **SETTINGS, **settings)
        extractor.use_pipeline(build_tiny_qwenimage(), torch.device("cpu"))
    else:
        extractor = Flux2Extractor("unused", **SETTINGS, text_layers=[1, 2, 3], **settings)
        extractor.use_pipeline(build_tiny_flux2(variant=backbone, text_depth=4), torch.device("cpu"))
    return extractor


@pytest.fixture(scope="module", params=["dev", "klein", "qwenimage"])
def extractor(request):
    extractor = _build(request.param)
    extractor.backbone = request.param
    return extractor


def _maps(extractor, template_tokens: str | None = None, softmax_stage: str = "after_mean"):
    """The maps of EXPRESSIONS (with the paper's magnets) and their encoding; `template_tokens`
    None: the extractor's default."""
    default = extractor.template_tokens
    extractor.template_tokens, extractor.softmax_stage = template_tokens or default, softmax_stage
    try:
        expressions = [AppendMagnets().augment(e) for e in EXPRESSIONS]
        return extractor.extract(IMAGE, "a photo", expressions, "template-tokens"), extractor.encode_expressions(expressions)
    finally:
        extractor.template_tokens, extractor.softmax_stage = default, "after_mean"


def _own(tokens) -> list[str]:
    return [t.piece for t in tokens if not t.special]


def test_by_default_the_softmax_runs_over_the_expressions_own_tokens_magnets_and_end_token(extractor):
    assert extractor.template_tokens == "exclude" and extractor.init_args["template_tokens"] == "exclude"
    maps, encoded = _maps(extractor)
    for k, tokens in enumerate(maps.tokens):
        scored = [t.piece for t, v in zip(tokens, maps.valid[k].tolist()) if v]
        assert scored == _own(tokens) + [END[extractor.backbone]]
        magnets = {t.word for t, v in zip(tokens, maps.valid[k].tolist()) if v and t.magnet}
        assert magnets == {"_", "with", "to", "and", "pink"}
        carried = int(encoded.valid[k].sum())
        assert carried > len(scored)  # the template's other tokens still ride in the branch
        assert all(t.template for t, v, c in zip(tokens, maps.valid[k].tolist(), encoded.valid[k].tolist()) if c and not v)
        if extractor.backbone == "dev":  # the system prompt is most of the branch and none of the softmax
            assert carried - len(scored) > 2 * len(scored)
    probabilities = SoftmaxMeanAggregator()(maps, maps.valid).probabilities
    assert (probabilities[~maps.valid] == 0).all()
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones_like(probabilities.sum(dim=1)))


def test_include_puts_the_template_back_and_changes_the_maps(extractor):
    default, encoded = _maps(extractor, "exclude")
    included, _ = _maps(extractor, "include")
    assert included.valid.equal(encoded.valid.cpu()) and (included.valid & ~default.valid).any()
    # the same forward (the template rides either way): identical logits, another softmax
    assert torch.equal(included.scores, default.scores)
    aggregate = SoftmaxMeanAggregator()
    keep = default.valid & torch.tensor([[not (t.special or t.magnet) for t in row] for row in default.tokens])
    assert not torch.allclose(aggregate(included, keep).heatmaps, aggregate(default, keep).heatmaps, atol=1e-4)
    # per head the softmax runs in the capture: template tokens get exactly zero there unless included
    per_head, _ = _maps(extractor, "exclude", "per_head")
    per_head_included, _ = _maps(extractor, "include", "per_head")
    template = included.valid & ~default.valid
    assert (per_head.scores[template] == 0).all() and (per_head_included.scores[template] > 0).all()
    sums = per_head.scores.sum(dim=1)
    torch.testing.assert_close(sums, torch.ones_like(sums))


@pytest.mark.parametrize("cls", [Flux2Extractor, QwenImageExtractor], ids=lambda c: c.__name__)
def test_the_setting_is_in_the_map_cache_key_and_checked(cls):
    default, included = (cls("org/model", local_files_only=True, **settings) for settings in ({}, {"template_tokens": "include"}))
    for extractor in (default, included):
        extractor.device, extractor.given_pipeline = torch.device("cpu"), False
    keys = default.cache_key_settings(), included.cache_key_settings()
    changed = {name for name in keys[0]["settings"] if keys[0]["settings"][name] != keys[1]["settings"][name]}
    assert changed == {"template_tokens"}
    with pytest.raises(ConfigError) as error:
        cls("org/model", template_tokens="drop")
    assert error.value.field == "template_tokens" and "\n" not in str(error.value)

"""What LTX-2 adds to the contract (tests/extractors/contract/entry_ltx2.py): the settings and checkpoints it refuses,
each in one line naming what to change."""

import pytest
import torch

from refam.errors import CheckpointError, ConfigError
from refam.extractors.ltx2 import LTX2Extractor
from refam.testing.tiny_ltx2 import build_tiny_ltx2

SETTINGS = dict(torch_dtype="float32", height=160, width=224, clip_frames=9, caption_max_tokens=32, expression_max_tokens=24)


@pytest.mark.parametrize("setting, field", [
    (dict(frame_rate=0.0), "frame_rate"),
    (dict(expression_max_tokens=32), "expression_max_tokens"),  # an expression is read as a prompt of 32 tokens
    (dict(clip_frames=13), "clip_frames"),  # 8 k + 1 frames
    (dict(width=208), "width"),  # 32 pixels a token
], ids=["frame-rate", "expression-longer-than-the-prompt", "clip-frames", "width"])
def test_settings_it_cannot_serve_are_refused_in_one_line(setting, field):
    with pytest.raises(ConfigError) as error:
        LTX2Extractor("unused", **{**SETTINGS, **setting})
    assert error.value.field == field and "\n" not in str(error.value)


def test_a_caption_length_off_the_registers_and_a_perturbed_transformer_are_refused():
    pipe = build_tiny_ltx2()
    with pytest.raises(ConfigError, match="multiple of the connectors' 8 registers") as error:
        LTX2Extractor("unused", **{**SETTINGS, "caption_max_tokens": 36}).use_pipeline(pipe, torch.device("cpu"))
    assert error.value.field == "caption_max_tokens"
    pipe.transformer.register_to_config(perturbed_attn=True)
    with pytest.raises(CheckpointError, match="perturbs attention"):
        LTX2Extractor("unused", **SETTINGS).use_pipeline(pipe, torch.device("cpu"))

"""Qwen-Image 2.1 beyond the contract: its pipeline cuts no caption, so `caption_max_tokens` is the longest
caption accepted, and a longer one is refused in one line naming the setting."""

import pytest
import torch

from refam.errors import ConfigError
from refam.extractors.qwenimage21 import QwenImage21Extractor
from refam.testing.tiny_qwenimage21 import save_tiny_qwenimage21
from tests.extractors.contract.entry_qwenimage21 import ENTRY


def test_a_caption_longer_than_caption_max_tokens_is_refused(tmp_path):
    folder = save_tiny_qwenimage21(tmp_path / "pipe", layers=1)
    extractor = QwenImage21Extractor(str(folder), **{**ENTRY.settings, "caption_max_tokens": 12})
    extractor.setup(torch.device("cpu"))
    assert extractor.encode_caption("a dog").shape[1] == 3 + 2 + 5  # "<|im_start|>user\n", the text, the suffix
    with pytest.raises(ConfigError, match="caption_max_tokens.*13 tokens, more than 12"):
        extractor.encode_caption("a dog and a man")

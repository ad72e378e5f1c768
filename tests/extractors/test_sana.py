"""SANA beyond the contract: the pipeline lowercases a prompt before it reads it after the complex human
instruction, and the branch reads an expression alike. The contract's expressions are all lowercase, so only a
capitalised one shows a reader that keeps the case."""

import torch
from diffusers import SanaPipeline

from refam.extractors.sana import SanaExtractor
from refam.testing.tiny_sana import save_tiny_sana
from tests.extractors.contract.entry_sana import ENTRY, stock_expression


def test_a_capitalised_expression_is_read_as_the_pipeline_reads_it(tmp_path):
    folder = save_tiny_sana(tmp_path / "pipe", layers=1)
    extractor = SanaExtractor(str(folder), **ENTRY.settings)
    extractor.setup(torch.device("cpu"))
    text = "The Red Dog on the Left"
    encoded = extractor.encode_expressions([(text, None)])
    rows = encoded.embeds[0, encoded.valid[0]]
    with torch.no_grad():
        expected = stock_expression(SanaPipeline.from_pretrained(str(folder), dtype=torch.float32), text, rows.shape[0])
    torch.testing.assert_close(rows, expected, rtol=1e-4, atol=1e-5)
    words = [t.word for t in encoded.tokens[0] if not t.special]
    assert words == ["the", "red", "dog", "on", "the", "left"]

"""End-to-end regression test: the committed refam-shapes model must ground held-out expressions.

Held-out "test" split scenes (never seen in training, disjoint from the demo set) run through the
same `RefAMModule.segment_sample` as `refam test`. Random weights score about chance here; the
floor sits far above chance and below the committed model's score, and the deliberate bugs below
(each a classic mistake this test exists to catch) must fall under it.
"""

from pathlib import Path

import pytest

from refam.data.manifest import ManifestDataset
from refam.embedded import REFAM_SHAPES
from refam.extractors.flux import FluxExtractor
from refam.shapes.dataset import write_shapes_set
from refam.shapes.evaluate import MAGNET_ROWS, build_module, evaluate, expression_kinds

MODEL = REFAM_SHAPES
PA_FLOOR = 18.0  # percent: chance is about 5 %, the committed model scores 26.7, the bugs below 0 to 11.7


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    manifest = write_shapes_set(tmp_path_factory.mktemp("held-out"), "test", scenes=12, per_scene=5)
    dataset, kinds = ManifestDataset(str(manifest)), expression_kinds(manifest)
    assert 50 <= len(kinds) <= 60
    return dataset, kinds


def score(held_out) -> dict:
    module = build_module(str(MODEL), MAGNET_ROWS["magnets + stop-word filter (paper)"])
    return evaluate(module, *held_out)


@pytest.mark.slow
def test_refam_shapes_grounds_held_out_expressions(held_out):
    result = score(held_out)
    assert result["expressions"] == len(held_out[1])
    assert result["chance"] < 10.0
    assert result["PA"] >= PA_FLOOR, f"point accuracy {result['PA']:.1f} % under the floor {PA_FLOOR} %"


def _transposed_grid(monkeypatch):
    extract = FluxExtractor.extract

    def wrong(self, *args, **kwargs):
        maps = extract(self, *args, **kwargs)
        maps.scores = maps.scores.transpose(-1, -2).contiguous()  # rows read as columns
        return maps

    monkeypatch.setattr(FluxExtractor, "extract", wrong)


def _softmax_over_patches(monkeypatch):
    extract = FluxExtractor.extract

    def wrong(self, *args, **kwargs):
        maps = extract(self, *args, **kwargs)
        k, t, h, w = maps.scores.shape
        logits = maps.scores.masked_fill(~maps.valid[:, :, None, None], float("-inf"))
        maps.scores = logits.flatten(2).softmax(dim=2).nan_to_num(0.0).view(k, t, h, w)
        maps.kind = "probs"  # already normalised: the aggregator averages them as they are
        return maps

    monkeypatch.setattr(FluxExtractor, "extract", wrong)


def _kept_tokens_shifted(monkeypatch):
    strategy = type(MAGNET_ROWS["magnets + stop-word filter (paper)"])
    keep = strategy.keep

    def wrong(self, tokens, expression=""):
        flags = keep(self, tokens, expression)
        return [False] + flags[:-1]  # off by one token

    monkeypatch.setattr(strategy, "keep", wrong)


@pytest.mark.slow
@pytest.mark.parametrize("bug", [_transposed_grid, _softmax_over_patches, _kept_tokens_shifted],
                         ids=["transposed-grid", "softmax-over-patches", "kept-tokens-off-by-one"])
def test_deliberate_bugs_fall_under_the_floor(held_out, monkeypatch, bug):
    bug(monkeypatch)
    assert score(held_out)["PA"] < PA_FLOOR

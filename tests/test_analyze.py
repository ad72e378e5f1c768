"""`refam analyze` on the embedded refam-shapes model: the figures exist and their numbers are right."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from refam.apps.analyze import analyze, block_entropies
from refam.shapes.scenes import make_scene

ROOT = Path(__file__).resolve().parents[1]
REFAM = str(Path(sys.executable).parent / "refam")


@pytest.fixture(scope="module")
def model():
    from refam import RefAM

    return RefAM.load()


@pytest.fixture(scope="module")
def scene():
    return make_scene("test", 100)


def test_magnet_runs_differ_only_by_the_magnets(model, scene):
    result = analyze(model, scene.image, "the orange square", scene.caption())
    runs = result["runs"]
    assert runs["with magnets"]["tokens"] == ["▁the", "▁orange", "▁square", "▁", "_", "▁with", "▁to", "▁and", "▁pink", "</s>"]
    assert runs["without magnets"]["tokens"] == ["▁the", "▁orange", "▁square", "</s>"]
    assert runs["with magnets"]["kept_tokens"] == runs["without magnets"]["kept_tokens"] == ["▁orange", "▁square"]
    assert runs["with magnets"]["point"] != runs["without magnets"]["point"]  # the magnets move the argmax here
    mass = [r["mass"] for r in result["text_attention"]]
    mean = sum(mass) / len(mass)
    assert [r["sink"] for r in result["text_attention"]] == [m > result["gas_factor"] * mean for m in mass]
    assert {r["token"] for r in result["text_attention"] if r["sink"]} == set(runs["with magnets"]["sinks"])


def test_block_entropy_is_normalised_and_restores_the_block_choice(model, scene):
    before = model.pipeline.extractor.blocks
    rows = block_entropies(model, scene.image, scene.caption(), "the orange square")
    assert model.pipeline.extractor.blocks == before
    assert [r["block"] for r in rows] == list(range(model.pipeline.extractor.num_blocks))
    assert all(0.0 <= r["min"] <= r["mean"] <= 1.0 for r in rows)


def test_analyze_never_changes_the_loaded_pipeline(model, scene, monkeypatch):
    """Issue O point 1: the settings analyze compares (magnets on and off, one block at a time) are
    passed per call; the loaded pipeline and extractor are never reassigned, not even for a moment."""
    from refam.pipeline import RefAMPipeline

    pipeline, extractor = model.pipeline, model.pipeline.extractor
    magnets, blocks = pipeline.magnets, extractor.blocks
    seen = []
    extract, segment = type(extractor).extract, RefAMPipeline.segment_sample

    def watched_extract(self, *args, **kwargs):
        seen.append((pipeline.magnets, extractor.blocks))
        return extract(self, *args, **kwargs)

    def watched_segment(self, *args, **kwargs):
        seen.append((pipeline.magnets, extractor.blocks))
        return segment(self, *args, **kwargs)

    monkeypatch.setattr(type(extractor), "extract", watched_extract)
    monkeypatch.setattr(RefAMPipeline, "segment_sample", watched_segment)
    result = analyze(model, scene.image, "the orange square", scene.caption())
    assert len(seen) > extractor.num_blocks and all(m is magnets and b == blocks for m, b in seen)
    assert result["runs"]["without magnets"]["tokens"] == ["\u2581the", "\u2581orange", "\u2581square", "</s>"]


def test_with_settings_shares_the_weights_and_changes_nothing(model):
    from refam.aggregators.magnets import AppendMagnets
    from refam.errors import ConfigError

    other = model.pipeline.with_settings(magnets=AppendMagnets([]), key_frame="confident", blocks=[0])
    assert other is not model.pipeline and other.extractor is model.pipeline.extractor
    assert other.segmenter is model.pipeline.segmenter and other.map_cache is model.pipeline.map_cache
    assert other.magnets.magnets == [] and model.pipeline.magnets.magnets != []
    assert other.settings.blocks == (0,) and model.pipeline.settings.blocks is None
    assert model.pipeline.key_frame == "first"
    with pytest.raises(ConfigError, match="key_frame"):
        model.pipeline.with_settings(key_frame="middle")
    with pytest.raises(TypeError, match="segmenter"):
        model.pipeline.with_settings(segmenter=None)  # loaded, not a setting


def test_entropy_of_a_planted_map(model, scene, monkeypatch):
    """One hot patch gives entropy 0, a flat map gives 1."""
    extractor = model.pipeline.extractor
    extract = type(extractor).extract

    def planted(self, *args, **kwargs):
        maps = extract(self, *args, **kwargs)
        maps.scores = torch.zeros_like(maps.scores)
        maps.scores[:, 1, 3, 4] = 1e4  # token "orange": all mass on one patch; "square" stays flat
        return maps

    monkeypatch.setattr(type(extractor), "extract", planted)
    rows = block_entropies(model, scene.image, scene.caption(), "the orange square")
    for r in rows:
        assert r["min"] == pytest.approx(0.0, abs=1e-4) and r["mean"] == pytest.approx(0.5, abs=1e-4)


@pytest.mark.slow
def test_cli_writes_the_three_figures_and_the_numbers(tmp_path, scene, refam_here):
    image = tmp_path / "scene.png"
    scene.image.save(image)
    result = subprocess.run([REFAM, "analyze", "--image", str(image), "--expression", "the orange square",
                             "--caption", scene.caption(), "--output", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("token_maps.png", "text_attention.png", "block_entropy.png"):
        with Image.open(tmp_path / "out" / name) as figure:
            assert figure.format == "PNG" and figure.width > 200 and figure.height > 100
    numbers = json.loads((tmp_path / "out/analysis.json").read_text())
    assert len(numbers["block_entropy"]) == 4 and "▁pink" in numbers["runs"]["with magnets"]["tokens"]
    bad = refam_here("analyze", "--image", str(tmp_path / "missing.png"), "--expression", "x",
                     "--output", str(tmp_path / "out2"))  # in this process: the one above was the console script
    assert bad.returncode == 2 and "missing.png" in bad.stderr and not (tmp_path / "out2").exists()



def test_every_expression_given_is_analysed(tmp_path, refam_here, monkeypatch):
    """Two --expression give two analyses, each of its own expression into its own folder (argparse
    kept only the last). The model and the figures are stand-ins: what is checked is what main asks for."""
    import refam.apps.analyze
    from refam.api import RefAM

    image = tmp_path / "scene.png"
    Image.new("RGB", (64, 48), "white").save(image)
    loaded = object()
    asked = []
    monkeypatch.setattr(RefAM, "load", classmethod(lambda cls, *args, **kwargs: loaded))
    monkeypatch.setattr(refam.apps.analyze, "analyze", lambda model, image, text, caption: {"model": model, "text": text})
    monkeypatch.setattr(refam.apps.analyze, "write_analysis", lambda result, image, folder: asked.append((result, folder)))
    texts = ["the orange square", "the pink circle"]
    result = refam_here("analyze", "--image", str(image), "--expression", texts[0], "--expression", texts[1],
                        "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r["text"] for r, _ in asked] == texts and all(r["model"] is loaded for r, _ in asked)
    folders = [folder for _, folder in asked]
    assert len(set(folders)) == 2 and all(f.parent == tmp_path / "out" for f in folders)
    assert [f.name for f in folders] == ["0-the-orange-square", "1-the-pink-circle"]

"""`refam train-shapes` writes a loadable FLUX folder with its training record; evaluation runs it."""

import json
from pathlib import Path

import pytest
import torch

from refam.data.manifest import ManifestDataset
from refam.extractors.flux import FluxExtractor
from refam.shapes.dataset import write_shapes_set
from refam.shapes.evaluate import MAGNET_ROWS, build_pipeline, evaluate, expression_kinds
from refam.shapes.train_cli import main as train_shapes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    monitored = write_shapes_set(root / "monitor", "test", scenes=2, per_scene=2)
    train_shapes(["--monitor-every", "5", "--monitor-manifest", str(monitored),
                  "--output", str(root / "model"), "--work-dir", str(root / "work"), "--vae-steps", "3",
                  "--flow-steps", "10", "--scenes", "16", "--batch-size", "4", "--width", "32", "--heads", "2",
                  "--double-blocks", "1", "--single-blocks", "1", "--pooled-prompt", "empty",
                  "--ground-weight", "1.0", "--ground-share", "0.5"])
    return root


@pytest.mark.slow
def test_training_writes_a_flux_folder_and_its_record(trained):
    record = json.loads((trained / "model/training.json").read_text())
    assert record["flow_steps"] == 10 and record["seed"] == 0 and record["pooled_prompt"] == "empty"
    assert record["flow_loss_curve"] and all(loss > 0 for _, loss in record["flow_loss_curve"])
    assert record["family"] == "varied" and record["ground_weight"] == 1.0  # v2's recipe: the grounding term ran
    assert record["ground_loss_curve"] and all(loss > 0 for _, loss in record["ground_loss_curve"])
    curve = record["point_accuracy_curve"]["steps_pa"]  # grounding scored while training
    assert [step for step, _ in curve] == [5, 10] and all(0.0 <= pa <= 100.0 for _, pa in curve)
    extractor = FluxExtractor(str(trained / "model"), torch_dtype="float32", resolution=128, caption_max_tokens=32)
    extractor.setup(torch.device("cpu"))
    assert extractor.num_blocks == 2
    vae = extractor.pipe.vae.config
    assert vae.scaling_factor != 1.0 and vae.shift_factor != 0.0  # latent statistics were measured


def test_rope_split_must_leave_even_spatial_axes():
    from refam.shapes.model import ShapesModelConfig, build_components

    transformer = build_components(ShapesModelConfig(width=64, heads=2, rope_fixed_dims=16))["transformer"]
    assert tuple(transformer.config.axes_dims_rope) == (16, 8, 8)
    with pytest.raises(ValueError, match="rope_fixed_dims=6"):
        build_components(ShapesModelConfig(width=64, heads=2, rope_fixed_dims=6))


def test_absent_share_needs_the_grounding_term(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_shapes(["--output", str(tmp_path / "m"), "--work-dir", str(tmp_path / "w"), "--absent-share", "0.25"])
    assert "--absent-share needs --ground-weight" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_continues_from_a_saved_model(trained):
    train_shapes(["--resume-from", str(trained / "model"), "--output", str(trained / "more"), "--work-dir",
                  str(trained / "work2"), "--flow-steps", "5", "--scenes", "8", "--batch-size", "4",
                  "--ground-weight", "1.0", "--absent-share", "0.5"])  # a fine-tune that also teaches "absent"
    record = json.loads((trained / "more/training.json").read_text())
    assert record["resumed_from"]["flow_steps"] == 10
    assert record["absent_share"] == 0.5 and record["resumed_from"]["absent_share"] == 0.0
    before = FluxExtractor(str(trained / "model"), torch_dtype="float32")
    after = FluxExtractor(str(trained / "more"), torch_dtype="float32")
    for e in (before, after):
        e.setup(torch.device("cpu"))
    assert torch.equal(before.pipe.vae.encoder.conv_in.weight, after.pipe.vae.encoder.conv_in.weight)  # VAE kept
    assert not torch.equal(before.pipe.transformer.x_embedder.weight, after.pipe.transformer.x_embedder.weight)


@pytest.mark.slow
def test_evaluation_scores_every_expression(trained, tmp_path):
    manifest = write_shapes_set(tmp_path / "set", "test", scenes=3, per_scene=3)
    kinds = expression_kinds(manifest)
    module = build_pipeline(str(trained / "model"), MAGNET_ROWS["magnets + stop-word filter (paper)"])
    assert module.extractor.pooled_prompt == "empty"  # read from the model's training record
    result = evaluate(module, ManifestDataset(str(manifest)), kinds)
    assert sum(n for _, n in result["PA by kind"].values()) == len(kinds) == result["expressions"]
    assert 0.0 <= result["PA"] <= 100.0 and 0.0 < result["chance"] < 20.0


def test_the_trained_model_goes_under_the_current_folder_never_into_the_package_unasked(tmp_path, monkeypatch):
    """The default --output is a folder of the user's; the shipped model is written over only with
    --overwrite-embedded, and no folder that already holds a model is."""
    import refam
    from refam.embedded import REFAM_SHAPES
    from refam.errors import ConfigError
    from refam.shapes.train_cli import output_folder

    package = Path(refam.__file__).resolve().parent
    monkeypatch.chdir(tmp_path)
    default = output_folder(None, overwrite_embedded=False)
    assert default.resolve().is_relative_to(tmp_path.resolve()) and not default.resolve().is_relative_to(package)
    for inside in (REFAM_SHAPES, package / "embedded", package / "mine"):
        with pytest.raises(ConfigError, match="--overwrite-embedded"):
            output_folder(inside, overwrite_embedded=False)
    assert output_folder(None, overwrite_embedded=True) == REFAM_SHAPES
    with pytest.raises(ConfigError, match="--overwrite-embedded"):
        output_folder(tmp_path / "elsewhere", overwrite_embedded=True)  # two places named: which one?
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "model_index.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a trained model"):
        output_folder(tmp_path / "done", overwrite_embedded=False)

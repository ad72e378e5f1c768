"""`refam train-shapes-video` writes a Mochi folder the unchanged MochiExtractor reads, with its
record; bad flags are one line before anything trains; a snapshot resumes."""

from __future__ import annotations

import json

import pytest
import torch

from refam.shapes.evaluate_video import key_point_accuracy
from refam.shapes.train_video_cli import main as train_video

TINY = ["--vae-steps", "2", "--clips", "8", "--batch-size", "4", "--heads", "2", "--head-dim", "16", "--layers", "1",
        "--text-width", "32", "--text-stream", "24", "--rope-fixed-dims", "4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-video")
    train_video(["--output", str(root / "model"), "--work-dir", str(root / "work"), "--flow-steps", "4",
                 "--snapshot-every", "2", "--monitor-every", "4", "--monitor-clips", "1", *TINY])
    return root


@pytest.mark.slow
def test_training_writes_a_mochi_folder_and_its_record(trained):
    from diffusers import MochiPipeline

    record = json.loads((trained / "model/training.json").read_text())
    assert record["flow_steps"] == 4 and record["training_clips"] == 8 and record["ground_weight"] == 1.0
    assert record["frame"] == [192, 192] and record["clip_frames"] == 13 and record["vae_crop"] == 32
    assert record["vae_colour_weight"] == 1.0 and record["vae_colour_curve"]
    assert record["command"].startswith("refam train-shapes-video")
    assert record["flow_loss_curve"] and record["key_point_accuracy_curve"][0][0] == 4
    pipe = MochiPipeline.from_pretrained(str(trained / "model"))
    assert pipe.vae.temporal_compression_ratio == 6 and len(pipe.vae.config.latents_mean) == 12
    assert (trained / "work/snapshots/step-2/model_index.json").is_file()
    scores = key_point_accuracy(str(trained / "model"), [0])  # the unchanged MochiExtractor reads it
    assert set(scores) >= {"all", "looks"} and all(0 <= v <= 100 for v in scores.values())


@pytest.mark.slow
def test_a_snapshot_resumes(trained, tmp_path):
    train_video(["--resume-from", str(trained / "work/snapshots/step-2"), "--output", str(tmp_path / "resumed"),
                 "--work-dir", str(tmp_path / "work"), "--flow-steps", "2", "--twin-rate", "0.6",
                 "--lr-schedule", "cosine", *TINY])
    record = json.loads((tmp_path / "resumed/training.json").read_text())
    assert record["flow_steps"] == 2 and record["resumed_from"]["folder"].endswith("step-2")
    assert record["twin_rate"] == 0.6 and record["lr_schedule"] == "cosine" and record["lr"] == 1e-3
    from safetensors.torch import load_file

    old = load_file(next((trained / "work/snapshots/step-2/transformer").glob("*.safetensors")))
    new = load_file(next((tmp_path / "resumed/transformer").glob("*.safetensors")))
    assert old.keys() == new.keys() and any(not torch.equal(old[k], new[k]) for k in old)


@pytest.mark.slow
def test_a_new_transformer_trains_on_a_kept_autoencoder(trained, tmp_path):
    from safetensors.torch import load_file

    train_video(["--vae-from", str(trained / "model"), "--output", str(tmp_path / "model"),
                 "--work-dir", str(tmp_path / "work"), "--flow-steps", "2", *TINY])
    record = json.loads((tmp_path / "model/training.json").read_text())
    assert record["vae_from"]["folder"] == str(trained / "model") and record["vae_from"]["record"]["flow_steps"] == 4
    assert "resumed_from" not in record

    def weights(folder, part):
        return load_file(next((folder / part).glob("*.safetensors")))

    kept, source = weights(tmp_path / "model", "vae"), weights(trained / "model", "vae")
    assert kept.keys() == source.keys() and all(torch.equal(kept[k], source[k]) for k in kept)
    # the unrotated RoPE dims stayed at zero through training, the others trained
    frequencies = weights(tmp_path / "model", "transformer")["pos_frequencies"]
    assert frequencies[:, :, :2].abs().max() == 0 and frequencies[:, :, 2:].abs().min() > 0


@pytest.mark.slow
def test_every_part_starts_from_a_trained_model_and_learns_motion(trained, tmp_path):
    """`--init-from`: the autoencoder trains on (with the motion read-out) from the given model's
    weights, its latent statistics are measured again, the transformer continues; a model of
    another architecture is refused in one line before anything trains."""
    from safetensors.torch import load_file

    def weights(folder, part):
        return load_file(next((folder / part).glob("*.safetensors")))

    train_video(["--init-from", str(trained / "model"), "--output", str(tmp_path / "model"), "--work-dir",
                 str(tmp_path / "work"), "--flow-steps", "2", "--vae-motion-weight", "10", "--seed", "7", *TINY])
    record = json.loads((tmp_path / "model/training.json").read_text())
    assert record["init_from"]["folder"] == str(trained / "model") and record["init_from"]["record"]["flow_steps"] == 4
    assert record["vae_motion_weight"] == 10 and len(record["vae_motion_curve"]) == 2
    for part in ("vae", "transformer"):
        before, after = weights(trained / "model", part), weights(tmp_path / "model", part)
        assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    start, later = weights(trained / "model", "transformer"), weights(tmp_path / "model", "transformer")
    moved = sum((later[k] - start[k]).abs().sum() for k in start) / sum(start[k].abs().sum() for k in start)
    assert moved < 0.01  # two warm-up steps on: one built afresh (seed 7, not the start's 0) is ~100 % away
    two_layers = [a if a != "1" else "2" for a in TINY]  # "--layers 1" -> "--layers 2"
    with pytest.raises(SystemExit) as refused:
        train_video(["--init-from", str(trained / "model"), "--output", str(tmp_path / "other"), "--work-dir",
                     str(tmp_path / "work2"), *two_layers])
    assert refused.value.code == 2 and not (tmp_path / "other").exists()


@pytest.mark.parametrize("args, culprit", [
    (["--clips", "4", "--batch-size", "8"], "--clips 4 is fewer than --batch-size 8"),
    (["--text-width", "36"], "--text-width 36 is not a multiple of 8"),
    (["--resume-from", "{tmp}/nowhere"], "--resume-from"),
    (["--flow-steps", "0"], "--flow-steps"),
    (["--vae-from", "{tmp}"], "--vae-from"),
    (["--vae-from", "{tmp}", "--resume-from", "{tmp}"], "--vae-from"),
    (["--rope-fixed-dims", "32"], "--rope-fixed-dims 32 must be even and below --head-dim 32"),
    (["--rope-fixed-dims", "3"], "--rope-fixed-dims 3 must be even"),
    (["--twin-rate", "1.5"], "--twin-rate"),
    (["--init-from", "{tmp}/nowhere"], "--init-from"),
    (["--init-from", "{tmp}", "--resume-from", "{tmp}"], "--init-from"),
    (["--vae-motion-weight", "-1"], "--vae-motion-weight"),
    (["--lr-schedule", "linear"], "--lr-schedule"),
])
def test_bad_flags_are_one_line_before_anything_trains(tmp_path, refam_here, args, culprit):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = refam_here("train-shapes-video", "--output", str(tmp_path / "model"), "--work-dir", str(tmp_path / "work"),
                        *args)
    assert result.returncode == 2
    assert culprit in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "model").exists()


def test_the_shipped_video_model_is_written_only_when_asked(tmp_path, monkeypatch):
    from refam.embedded import REFAM_SHAPES_VIDEO
    from refam.errors import ConfigError
    from refam.shapes.train_cli import output_folder

    monkeypatch.chdir(tmp_path)
    assert output_folder(None, False, REFAM_SHAPES_VIDEO).resolve() == (tmp_path / "outputs/refam-shapes-video").resolve()
    with pytest.raises(ConfigError, match="--overwrite-embedded"):
        output_folder(REFAM_SHAPES_VIDEO, False, REFAM_SHAPES_VIDEO)
    assert output_folder(None, True, REFAM_SHAPES_VIDEO) == REFAM_SHAPES_VIDEO

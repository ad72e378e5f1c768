"""`refam test --config configs/smoke-video.yaml`: the video path through the CLI, offline.

One single-process run (`smoke_video`, the real console script) is checked for what it writes and
is the reference the DDP runs must equal."""

import csv
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
REFAM = str(Path(sys.executable).parent / "refam")
DATA = ROOT / "assets/smoke/ref-davis-shapes"


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([REFAM, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def metrics(save_dir: Path) -> dict[str, float]:
    rows = csv.DictReader(next(save_dir.rglob("metrics.csv")).open())
    return {k: float(v) for row in rows for k, v in row.items() if v}


@pytest.fixture(scope="module")
def smoke_video(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One process, masks saved: (the finished run, its folder with logs/ and masks/)."""
    folder = tmp_path_factory.mktemp("smoke-video")
    result = run("test", "--config", "configs/smoke-video.yaml", "--trainer.logger.init_args.save_dir",
                 str(folder / "logs"), "--masks.save", "true", "--masks.folder", str(folder / "masks"))
    assert result.returncode == 0, result.stderr[-3000:]
    return result, folder


@pytest.mark.slow
def test_smoke_video_scores_every_expression_and_writes_what_the_official_evaluation_reads(smoke_video):
    result, tmp_path = smoke_video
    assert "J&F" in result.stdout and "ref_davis17/valid" in result.stdout
    values = metrics(tmp_path / "logs")
    assert values["ref_davis17/valid/expressions"] == 24  # 3 clips x 2 objects x 4 annotator slots
    assert 0 <= values["ref_davis17/valid/J&F"] <= 100
    assert values["ref_davis17/valid/J&F"] == pytest.approx((values["ref_davis17/valid/J"] + values["ref_davis17/valid/F"]) / 2)
    # one mask per expression and frame, the zip, and one palette PNG per frame and annotator set
    masks = tmp_path / "masks"
    video = "shapes-demo-0000"
    assert len(list((masks / "ref_davis17-valid" / video / "0").glob("*.png"))) == 8
    with zipfile.ZipFile(masks / "ref_davis17-valid.zip") as bundle:
        assert f"{video}/0/00000.png" in bundle.namelist()
    palettes = masks / "ref_davis17-valid-davis" / "anno0"
    with Image.open(palettes / video / "00003.png") as palette:
        assert palette.mode == "P" and set(np.unique(np.asarray(palette)).tolist()) <= {0, 1, 2}
    # the official DAVIS evaluation (refam score) of the four runs prints the headline J&F: one code path
    runs = [str(masks / "ref_davis17-valid-davis" / f"anno{k}") for k in range(4)]
    scored = run("score", "--pred", *runs, "--gt", str(DATA / "valid/Annotations"))
    assert scored.returncode == 0, scored.stderr[-2000:]
    mean_row = next(line for line in scored.stdout.splitlines() if "mean of 4 runs" in line)
    assert float(mean_row.split()[0]) == pytest.approx(values["ref_davis17/valid/J&F"], abs=0.006)
    assert "ref_davis17/valid: J&F, J, F: the DAVIS 2017 unsupervised evaluation" in result.stdout + result.stderr


@pytest.mark.slow
def test_video_ddp_on_two_and_three_processes_equals_one(tmp_path, smoke_video):
    """3 videos on 2 and 3 processes: a video is never split, none is counted twice or lost."""
    results = {1: metrics(smoke_video[1] / "logs")}
    for devices in (2, 3):
        result = run("test", "--config", "configs/smoke-video.yaml", "--trainer.devices", str(devices),
                     "--trainer.strategy", "ddp", "--trainer.logger.init_args.save_dir", str(tmp_path / f"d{devices}"))
        assert result.returncode == 0, result.stderr[-3000:]
        results[devices] = metrics(tmp_path / f"d{devices}")
    assert results[1]["ref_davis17/valid/expressions"] == 24
    assert results[2] == pytest.approx(results[1], abs=1e-4)
    assert results[3] == pytest.approx(results[1], abs=1e-4)


@pytest.mark.slow
def test_predict_video_with_a_video_config_tracks_from_the_key_frame(tmp_path, refam_here):
    import json

    frames = DATA / "valid/JPEGImages/shapes-demo-0000"
    result = refam_here("predict", "--config", "configs/smoke-video.yaml", "--video", str(frames), "--expression",
                        "the red circle", "--expression", "the object on the left", "--output", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / frames.name
    for stem in ("0-the-red-circle", "1-the-object-on-the-left"):
        assert sorted(p.stem for p in (folder / stem).glob("*.png")) == [f"{i:05d}" for i in range(8)]
        record = json.loads((folder / f"{stem}.json").read_text())
        assert record["key_frame"] == 0 and len(record["point"]) == 2
        with Image.open(folder / f"{stem}_overlay.gif") as gif:
            assert gif.n_frames == 8

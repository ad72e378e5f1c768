"""Installed, not only checked out: a real wheel of refam carries the embedded model and its default
pipeline, so `refam predict` without --config works from any folder, and declares ranges and extras,
not pins (a `pip install` of it keeps the torch that is there)."""

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_built_wheel_predicts_from_an_empty_folder_with_the_embedded_model(tmp_path):
    source = tmp_path / "source"  # build from a copy: a build writes build/ and *.egg-info next to the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "outputs", "lightning_logs",
                                                                "__pycache__", "*.egg-info", "build", "dist"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(source)], check=True)
    (wheel,) = (tmp_path / "dist").glob("refam-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(name).decode())
    assert {"sam2", "serve", "semseg", "test"} <= set(metadata.get_all("Provides-Extra"))
    requires = [Requirement(line) for line in metadata.get_all("Requires-Dist")]
    assert not [str(r) for r in requires if any(spec.operator in ("==", "===") for spec in r.specifier)]
    (torch,) = [r for r in requires if r.name == "torch"]
    assert torch.specifier.contains("2.13.0") and torch.specifier.contains("2.14.1")  # the torches tested
    site = tmp_path / "site"  # the wheel alone; its dependencies are this environment's
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True)
    shutil.rmtree(source)
    assert (site / "refam" / "embedded" / "refam-shapes" / "transformer").is_dir()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    image = elsewhere / "scene.png"
    shutil.copy(ROOT / "assets" / "shapes-demo" / "images" / "demo-00000.png", image)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "REFAM_DIGEST_MEMO": ""}
    run = subprocess.run(
        [sys.executable, "-c", "import sys, refam, refam.cli; print(refam.__file__, file=sys.stderr); refam.cli.main()",
         "predict", "--image", "scene.png", "--expression", "the red circle", "--output", "out"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert str(site / "refam") in run.stderr  # the installed copy ran, not the checkout
    written = sorted(p.name for p in (elsewhere / "out").rglob("*.png"))
    assert any("mask" in name for name in written), written

"""A rerun is complete (issue N2): a sample replayed from the result store yields every output a
fresh run yields, byte for byte, also when the outputs are switched on only at the rerun. And a
run that scores nothing fails in one line (N5); an output folder that cannot be written is refused
before the model loads (N6)."""

import errno
import json
import zipfile
from pathlib import Path

import lightning as L
import numpy as np
import pytest

from refam.aggregators.magnets import AppendMagnets
from refam.evaluation.callbacks import MaskWriter
from refam.evaluation.store import ResultStore
from refam.data import RefAMDataModule
from refam.data.davis import RefDAVIS17
from refam.data.mevis import MeViS
from refam.errors import ConfigError
from refam.evaluation.module import RefAMModule
from refam.segmenters.threshold import HeatmapThresholdSegmenter
from tests.fixtures.video_fixtures import write_mevis
from tests.test_cli import ROOT
from tests.test_resume import _demo_manifest, _reused
from tests.test_video_module import PlantedVideoExtractor, ScriptedTracker, video  # noqa: F401 (a fixture)

SMOKE_DAVIS = ROOT / "assets/smoke/ref-davis-shapes"
# expression k of each clip: one hot cell; objects' expressions spread over the grid
CELLS = {k: [(0, k % 4, (2 * k) % 6, 6.0)] for k in range(8)}


class Cells(PlantedVideoExtractor):
    """CELLS for as many expressions as a video has."""

    def extract_video(self, frames, caption, expressions, sample_id, magnet_vectors=None):
        self.hot = {k: cells for k, cells in CELLS.items() if k < len(expressions)}
        return super().extract_video(frames, caption, expressions, sample_id, magnet_vectors)


def _video_run(tmp_path: Path, masks: Path | None, store: ResultStore | None) -> dict:
    datasets = [RefDAVIS17(str(SMOKE_DAVIS)), MeViS(str(write_mevis(tmp_path / "mevis")) if not (tmp_path / "mevis").exists()
                                                    else str(tmp_path / "mevis"))]
    module = RefAMModule(extractor=Cells(CELLS), segmenter=ScriptedTracker(), magnets=AppendMagnets(),
                         result_store=store)
    callbacks = [MaskWriter(save=True, folder=str(masks))] if masks is not None else []
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, callbacks=callbacks,
                        use_distributed_sampler=False, default_root_dir=str(tmp_path))
    trainer.test(module, datamodule=RefAMDataModule(datasets), verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative path; a zip by its entries' names and bytes."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as bundle:
                out.update({f"{relative}:{name}": bundle.read(name) for name in bundle.namelist()})
        else:
            out[relative] = path.read_bytes()
    return out


def test_a_resumed_video_run_writes_the_uninterrupted_runs_submission_file_for_file(tmp_path):
    fresh = _video_run(tmp_path, tmp_path / "fresh-masks", None)

    store = ResultStore(folder=str(tmp_path / "results"))
    store.fingerprints = ["config", "config"]
    _video_run(tmp_path, None, store)  # masks off: only the records
    assert store.computed == 4  # three Ref-DAVIS clips and one MeViS video
    (tmp_path / "results/ref_davis17-valid").joinpath("shapes-demo-0001.json").unlink()  # "killed" before it

    again = ResultStore(folder=str(tmp_path / "results"))
    again.fingerprints = ["config", "config"]
    resumed = _video_run(tmp_path, tmp_path / "resumed-masks", again)  # masks switched on now
    assert (again.reused, again.computed) == (3, 1)
    assert resumed == pytest.approx(fresh, abs=1e-9)

    expected, got = _tree(tmp_path / "fresh-masks"), _tree(tmp_path / "resumed-masks")
    assert any(name.startswith("ref_davis17-valid-davis/anno3/") for name in expected)  # palettes
    assert any(name.startswith("ref_davis17-valid.zip:") for name in expected)
    assert any(name.startswith("mevis-valid_u.zip:cats/") for name in expected)
    assert sorted(got) == sorted(expected)
    assert [name for name in expected if got[name] != expected[name]] == []


def test_predict_step_segments_a_video_or_refuses_it_in_one_line(video):  # noqa: F811
    module = RefAMModule(extractor=PlantedVideoExtractor({0: [(0, 1, 2, 6.0)], 1: [(0, 2, 4, 6.0)]}),
                         segmenter=ScriptedTracker(), magnets=AppendMagnets())
    (result,) = module.predict_step([video], 0)
    assert [p.expression_id for p in result.predictions] == ["e0", "e1"]
    assert all(p.mask is not None and p.mask.shape == (32, 48) for p in result.predictions)

    images_only = RefAMModule(extractor=PlantedVideoExtractor({}), segmenter=HeatmapThresholdSegmenter(),
                              magnets=AppendMagnets())
    with pytest.raises(ConfigError, match="segments images; a video dataset needs a VideoSegmenter") as info:
        images_only.predict_step([video], 0)
    assert info.value.key == "segmenter" and "\n" not in str(info.value)


# ------------------------------------------------------------ through `refam test` (the demo model)
def _demo(refam_here, manifest, logs, results, *extra):
    dataset = {"class_path": "refam.data.manifest.ManifestDataset", "init_args": {"path": str(manifest), "name": "mine"}}
    return refam_here("test", "--config", str(ROOT / "configs/demo.yaml"), "--data.datasets", json.dumps(dataset),
                      "--trainer.logger.init_args.save_dir", str(logs), "--results.folder", str(results), *extra)


@pytest.mark.slow
def test_an_image_run_replayed_with_masks_switched_on_writes_a_fresh_runs_masks(tmp_path, refam_here):
    data = tmp_path / "data"
    data.mkdir()
    manifest = _demo_manifest(data)
    on = ("--masks.save", "true", "--masks.overlay", "true")
    fresh = _demo(refam_here, manifest, tmp_path / "fresh", tmp_path / "fresh-results", *on,
                  "--masks.folder", str(tmp_path / "fresh-masks"))
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    first = _demo(refam_here, manifest, tmp_path / "first", tmp_path / "results")  # no masks
    assert first.returncode == 0, first.stderr[-3000:]
    assert not list(tmp_path.glob("first/**/*.png"))
    rerun = _demo(refam_here, manifest, tmp_path / "rerun", tmp_path / "results", *on,
                  "--masks.folder", str(tmp_path / "rerun-masks"))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _reused(rerun.stdout) == (0, 2)  # every sample replayed, none run
    expected, got = _tree(tmp_path / "fresh-masks"), _tree(tmp_path / "rerun-masks")
    assert sorted(got) == sorted(expected)
    assert [name for name in expected if got[name] != expected[name]] == []
    expressions = sum(len(json.loads(line)["expressions"]) for line in manifest.read_text().splitlines())
    assert len(expected) == 2 * expressions  # a mask and an overlay per expression


@pytest.mark.slow
@pytest.mark.parametrize("moved, scored", [(2, False), (1, True)])
def test_a_run_that_scored_nothing_fails_in_one_line(tmp_path, refam_here, moved, scored):
    data = tmp_path / "data"
    data.mkdir()
    manifest = _demo_manifest(data)
    for line in manifest.read_text().splitlines()[:moved]:  # the images moved away
        (data / json.loads(line)["image"]).unlink()
    result = _demo(refam_here, manifest, tmp_path / "logs", tmp_path / "results")
    if scored:
        assert result.returncode == 0 and "mIoU" in result.stdout
        return
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("refam: error:")]
    assert errors == [result.stderr.strip().splitlines()[-1]] and len(errors) == 1
    assert "nothing was scored (mine: 2 sample(s) skipped)" in errors[0]
    assert "Traceback" not in result.stderr and "mIoU" not in result.stdout and "0.00" not in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("key", ["results.folder", "masks.folder", "records.folder"])
def test_an_unwritable_output_folder_is_refused_before_the_model_loads(tmp_path, refam_here, monkeypatch, key):
    from refam.pipeline import RefAMPipeline

    loaded = []
    monkeypatch.setattr(RefAMPipeline, "setup", lambda self, device: loaded.append(device))
    data = tmp_path / "data"
    data.mkdir()
    manifest = _demo_manifest(data, records=1)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    folders = {"results.folder": tmp_path / "results", "masks.folder": tmp_path / "masks",
               "records.folder": tmp_path / "records"}
    folders[key] = blocker
    result = _demo(refam_here, manifest, tmp_path / "logs", folders["results.folder"], "--masks.save", "true",
                   "--masks.folder", str(folders["masks.folder"]), "--records.folder", str(folders["records.folder"]))
    assert result.returncode == 2 and not loaded
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith(f"refam: error: {key}: cannot write into {blocker}") and f"--{key}" in result.stderr


@pytest.mark.slow
def test_a_disk_that_fills_midway_ends_in_one_line_and_keeps_the_records_written(tmp_path, refam_here, monkeypatch):
    import refam.io.files

    data = tmp_path / "data"
    data.mkdir()
    manifest = _demo_manifest(data)
    write_atomic, records = refam.io.files.write_atomic, []

    def filling(path, blob):
        if Path(path).suffix == ".json" and Path(path).parent.name == "mine":
            if records:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            records.append(path)
        write_atomic(path, blob)

    monkeypatch.setattr(refam.io.files, "write_atomic", filling)
    result = _demo(refam_here, manifest, tmp_path / "logs", tmp_path / "results")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("refam: error: cannot write ") and "No space left on device" in last
    assert "Traceback" not in result.stderr
    assert [p.name for p in (tmp_path / "results/mine").glob("*.json")] == [Path(records[0]).name]
    monkeypatch.undo()
    rerun = _demo(refam_here, manifest, tmp_path / "logs", tmp_path / "results")
    assert rerun.returncode == 0 and _reused(rerun.stdout) == (1, 1)

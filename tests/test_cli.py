"""`refam test` end to end: smoke config, DDP equals one process, bad input is reported and skipped.

The smoke and DDP runs use the real console script; the one-process references, the demo run and
the checks of what a run reports on bad input run its `main` in this process (`smoke_here`,
`refam_here`), which skips a new process's imports."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from refam.data.refcoco import RefCOCODataset
from refam.embedded import REFAM_SHAPES
from tests.fixtures.refer_fixture import write_refer_fixture

ROOT = Path(__file__).resolve().parents[1]
REFAM = str(Path(sys.executable).parent / "refam")


def run_refam(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([REFAM, "test", "--config", str(ROOT / "configs/smoke.yaml"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def smoke_here(refam_here):
    """`run_refam` in this process (conftest's `refam_here`)."""
    return lambda *args: refam_here("test", "--config", str(ROOT / "configs/smoke.yaml"), *args)


def logged_metrics(save_dir: Path) -> dict[str, str]:
    (metrics_file,) = save_dir.glob("lightning_logs/version_*/metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    return {k: v for row in rows for k, v in row.items() if v not in ("", None) and k != "step"}


def smoke_args(tmp_path: Path, data_root: Path | None = None) -> list[str]:
    args = ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]
    if data_root is not None:
        dataset = {"class_path": "refam.data.refcoco.RefCOCODataset",
                   "init_args": {"data_root": str(data_root), "split": "val",
                                 "captions_file": str(data_root / "captions_train2014.json")}}
        args += ["--data.datasets", json.dumps(dataset)]
    return args


def test_smoke_config_runs_and_reports_metrics(tmp_path):
    result = run_refam(*smoke_args(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = logged_metrics(tmp_path / "logs")
    expected = {split: sum(len(d[i].expressions) for i in range(len(d)))
                for split in ("val", "testA") for d in [RefCOCODataset(str(ROOT / "assets/smoke/refer"), split=split)]}
    for split, count in expected.items():  # one run scores each split of the config separately
        assert float(metrics[f"refcoco/{split}/expressions"]) == count
        for name in ("mIoU", "oIoU", "PA"):
            assert 0.0 <= float(metrics[f"refcoco/{split}/{name}"]) <= 100.0
    assert "refcoco/val/mIoU" in result.stdout  # Lightning's console table
    (records_file,) = (tmp_path / "logs").glob("lightning_logs/version_*/expressions/refcoco-val.rank0.jsonl")
    records = [json.loads(line) for line in records_file.read_text().splitlines()]
    assert len(records) == expected["val"]
    for record in records:
        assert {"▁with", "▁to", "▁and", "▁pink", "</s>"} <= set(record["dropped_tokens"])  # magnets and EOS
        assert record["kept_tokens"] and not {"▁the", "▁on", "▁pink"} & set(record["kept_tokens"])
        assert 0.0 <= record["iou"] <= 1.0 and isinstance(record["point_hit"], bool)
        assert all(s["category"] in ("stop word", "colour", "other") for s in record["sinks"])
    assert "refcoco/testA " in result.stdout + result.stderr  # refam's per-split summary
    assert not list((tmp_path / "logs").rglob("masks"))  # masks are written only when asked for


@pytest.mark.slow
def test_ddp_with_splits_smaller_than_the_world_equals_one_process(tmp_path, smoke_here):
    """The smoke config's testA has one image and val two: on 2 processes one rank has no testA
    sample, on 3 one rank has no sample at all, and no split divides evenly over 3 (a padding
    sampler would count a sample twice). Each rank without a sample runs zero steps of that split
    and adds zeros to the summed states; records and masks are written once per expression."""
    root = ROOT / "assets/smoke/refer"
    sizes = {split: len(RefCOCODataset(str(root), split=split)) for split in ("val", "testA")}
    assert sizes == {"val": 2, "testA": 1}
    results, records, masks = {}, {}, {}
    for devices in (1, 2, 3):
        out = tmp_path / f"d{devices}"
        extra = ["--trainer.devices", str(devices)] + (["--trainer.strategy", "ddp"] if devices > 1 else [])
        run = run_refam if devices > 1 else smoke_here  # the one-process reference needs no process of its own
        result = run(*smoke_args(out), *extra, "--masks.save", "true")
        assert result.returncode == 0, result.stderr[-3000:]
        results[devices] = logged_metrics(out / "logs")
        records[devices] = sorted(
            (path.name.split(".rank")[0], line)  # one file per dataset and rank; the union must not depend on ranks
            for path in (out / "logs").glob("lightning_logs/version_*/expressions/*.jsonl")
            for line in path.read_text().splitlines())
        (mask_root,) = (out / "logs").glob("lightning_logs/version_*/masks")
        masks[devices] = sorted(str(p.relative_to(mask_root)) for p in mask_root.rglob("*.png"))
    assert float(results[1]["refcoco/testA/expressions"]) > 0 and float(results[1]["refcoco/val/expressions"]) > 0
    assert results[2] == results[1]
    assert results[3] == results[1]
    assert records[2] == records[1] and records[3] == records[1]
    assert masks[1] and masks[2] == masks[1] and masks[3] == masks[1]


def test_missing_image_is_reported_and_skipped(tmp_path, smoke_here):
    data_root = write_refer_fixture(tmp_path / "refer", n_images=3)
    dataset = RefCOCODataset(str(data_root), split="val")
    survivors = sum(len(dataset[i].expressions) for i in range(len(dataset)) if dataset[i].sample_id != "100")
    assert survivors > 0
    missing = next((data_root / "images/mscoco/images/train2014").glob("*000000000100.jpg"))
    missing.unlink()
    result = smoke_here(*smoke_args(tmp_path, data_root))
    assert result.returncode == 0, result.stderr[-3000:]
    assert missing.name in result.stderr
    assert "skipped 1 sample(s)" in result.stdout + result.stderr
    metrics = logged_metrics(tmp_path / "logs")
    assert float(metrics["refcoco/val/skipped_samples"]) == 1
    assert float(metrics["refcoco/val/expressions"]) == survivors  # the other val image still counts


def test_empty_expression_is_reported_and_skipped(tmp_path, smoke_here):
    image = tmp_path / "scene.jpg"
    shutil.copy(next((ROOT / "assets/smoke/refer/images/mscoco/images/train2014").glob("*100.jpg")), image)
    manifest = tmp_path / "mine.jsonl"
    manifest.write_text(json.dumps({"image": "scene.jpg", "expressions": [
        {"text": "the red box", "id": "good"}, {"text": "  ", "id": "blank"}]}) + "\n")
    dataset = {"class_path": "refam.data.manifest.ManifestDataset", "init_args": {"path": str(manifest)}}
    result = smoke_here(*smoke_args(tmp_path), "--data.datasets", json.dumps(dataset))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'blank': an expression is empty" in result.stderr
    metrics = logged_metrics(tmp_path / "logs")
    assert float(metrics["mine/skipped_expressions"]) == 1


def test_unreadable_checkpoint_folder_names_the_key(tmp_path, smoke_here):
    broken = tmp_path / "flux"
    broken.mkdir()
    (broken / "model_index.json").write_text("{not json")
    result = smoke_here(*smoke_args(tmp_path), "--model.extractor.init_args.pretrained", str(broken))
    assert result.returncode != 0
    assert "model.extractor.init_args.pretrained" in result.stderr and str(broken) in result.stderr
    assert "Traceback" not in result.stderr
    missing = smoke_here(*smoke_args(tmp_path), "--model.extractor.init_args.pretrained", str(tmp_path / "nowhere"))
    assert missing.returncode != 0 and "is not a folder" in missing.stderr


def test_unknown_class_path_names_the_key(tmp_path, smoke_here):
    result = smoke_here(*smoke_args(tmp_path), "--model.segmenter.class_path", "refam.segmenters.NoSuchSegmenter")
    assert result.returncode != 0
    assert "segmenter" in result.stderr and "NoSuchSegmenter" in result.stderr


def test_help_and_print_config(refam_here):
    help_text = refam_here("test", "--help").stdout
    assert "--model.extractor" in help_text and "--data.datasets" in help_text
    printed = refam_here("test", "--config", "configs/smoke.yaml", "--print_config")
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert "refam.extractors.flux.FluxExtractor" in printed.stdout and "sigma: 0.75" in printed.stdout


@pytest.mark.slow
def test_demo_config_scores_the_embedded_model_as_the_evaluator_does(tmp_path, refam_here):
    """`make demo`'s config through the CLI prints what `refam.shapes.evaluate` computes in-process."""
    from refam.data.manifest import ManifestDataset
    from refam.shapes.evaluate import MAGNET_ROWS, build_pipeline, evaluate, expression_kinds

    manifest = ROOT / "assets/shapes-demo/manifest.jsonl"
    result = refam_here("test", "--config", str(ROOT / "configs/demo.yaml"),
                        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--masks.save", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = logged_metrics(tmp_path / "logs")
    expected = evaluate(build_pipeline(str(REFAM_SHAPES), MAGNET_ROWS["magnets + stop-word filter (paper)"]),
                        ManifestDataset(str(manifest)), expression_kinds(manifest))
    assert float(metrics["shapes-demo/expressions"]) == expected["expressions"] == 297
    for name in ("PA", "mIoU", "oIoU"):
        assert float(metrics[f"shapes-demo/{name}"]) == pytest.approx(expected[name], abs=1e-3)
    assert float(metrics["shapes-demo/PA"]) > 3 * expected["chance"]

    # --masks.save: one PNG per expression, in <dataset>/<sample>/<expression>.png, that re-scores as recorded
    import numpy as np
    from PIL import Image

    (records_file,) = (tmp_path / "logs").glob("lightning_logs/version_*/expressions/shapes-demo.rank0.jsonl")
    (masks_root,) = (tmp_path / "logs").glob("lightning_logs/version_*/masks/shapes-demo")
    records = [json.loads(line) for line in records_file.read_text().splitlines()]
    assert len(list(masks_root.rglob("*.png"))) == len(records) == 297
    truth = {e.expression_id: e.mask for d in [ManifestDataset(str(manifest))] for i in range(len(d)) for e in d[i].expressions}
    for record in records[::25]:
        predicted = np.asarray(Image.open(masks_root / record["sample_id"] / f"{record['expression_id']}.png")) == 255
        target = truth[record["expression_id"]]
        assert (predicted & target).sum() / (predicted | target).sum() == pytest.approx(record["iou"], abs=1e-6)

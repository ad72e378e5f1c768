"""Resumable evaluation (ResultStore): stored results fed back score exactly as computed ones; a run
killed midway and rerun skips its finished samples and ends with the uninterrupted run's metrics."""

import json
import re
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from refam.evaluation.store import ResultStore, config_fingerprints
from refam.evaluation.records import SampleRecord
from refam.metrics import ReferringScores, SaliencyScores, VideoReferringScores
from refam.metrics.jf import TrackScores
from refam.metrics.point import point_hit
from refam.metrics.iou import intersection_union
from tests.fixtures.refer_fixture import write_refer_fixture
from tests.test_cli import REFAM, ROOT, logged_metrics, smoke_args


def _states(module: torch.nn.Module) -> dict:
    return {name: tensor.clone() for name, tensor in module.named_buffers()} | {
        f"{name}.{state}": getattr(metric, state).clone()
        for name, metric in module.named_modules() if hasattr(metric, "_defaults") for state in metric._defaults}


def _roundtrip(value):
    return json.loads(json.dumps(value))


def test_stored_image_results_give_bit_identical_metrics():
    generator = torch.Generator().manual_seed(0)
    computed, replayed = ReferringScores(), ReferringScores()
    sal_computed, sal_replayed = SaliencyScores(), SaliencyScores()
    for _ in range(7):
        pred = torch.rand(37, 53, generator=generator) > 0.6
        target = torch.rand(37, 53, generator=generator) > 0.5
        point = tuple((torch.rand(2, generator=generator) * torch.tensor([53.0, 37.0])).tolist())
        heatmap = torch.rand(8, 8, generator=generator)
        computed.update(pred, point, target)
        sal_computed.update(heatmap, target)
        record = _roundtrip({"intersection_union": intersection_union(pred, target), "hit": point_hit(point, target),
                             "saliency": sal_replayed.contribution(heatmap, target)})
        replayed.update_counts(*record["intersection_union"], record["hit"])
        sal_replayed.update(counts=record["saliency"])
    a, b = computed.compute(), replayed.compute()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(_states(computed).values(), _states(replayed).values()))
    a, b = sal_computed.compute(), sal_replayed.compute()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stored_video_tracks_give_bit_identical_metrics():
    rng = np.random.default_rng(0)
    computed, replayed = VideoReferringScores(), VideoReferringScores()
    for track_id in ("a", "b", "c"):
        for _ in range(int(rng.integers(3, 9))):
            computed.jf.update_frame(track_id, rng.random((24, 31)) > 0.5, rng.random((24, 31)) > 0.4)
        track = computed.jf.end_track(track_id)
        computed.expressions.update(1)
        replayed.update_track(TrackScores(*_roundtrip([track.j, track.f])))
        hit = bool(rng.random() > 0.5)
        computed.pa.update(hit=hit)
        replayed.pa.update(hit=_roundtrip(hit))
    a, b = computed.compute(), replayed.compute()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fingerprint_follows_model_and_data_settings_only():
    config = {"seed_everything": 0, "model": {"extractor": {"init_args": {"trajectory": {"timestep": 750}}}},
              "trainer": {"devices": 1, "logger": {"save_dir": "a"}, "precision": None},
              "data": {"datasets": [{"split": "val"}, {"split": "testA"}], "num_workers": 0}}
    base = config_fingerprints(config)
    assert len(base) == 2 and base[0] != base[1]
    same = json.loads(json.dumps(config))
    same["trainer"].update(devices=3, logger={"save_dir": "b"})
    same["data"]["num_workers"] = 4
    assert config_fingerprints(same) == base
    fewer = json.loads(json.dumps(config))
    fewer["data"]["datasets"] = [{"split": "val"}]
    assert config_fingerprints(fewer) == base[:1]  # another dataset's settings do not matter
    other = json.loads(json.dumps(config))
    other["model"]["extractor"]["init_args"]["trajectory"]["timestep"] = 500
    assert not set(config_fingerprints(other)) & set(base)


class _Trainer:
    logger = None

    def __init__(self, root):
        self.default_root_dir = str(root)


class _Module:
    def __init__(self, weights="w1"):
        self.weights = weights

    def numbers_identity(self):
        return {"weights": self.weights}


def test_stored_result_of_other_settings_is_not_reused(tmp_path, caplog):
    store = ResultStore()
    store.fingerprints = ["old"]
    store.setup(_Trainer(tmp_path), _Module(), "test")
    store.put(0, "refcoco/val", SampleRecord("7", video=False, expressions=[], inputs="x"))
    assert (tmp_path / "results/refcoco-val/7.json").is_file()
    assert store.lookup(0, "refcoco/val", "7", "x").sample_id == "7"
    store.fingerprints = ["new"]  # a changed model setting
    assert store.lookup(0, "refcoco/val", "7", "x") is None and store.lookup(0, "refcoco/val", "7", "x") is None
    assert sum("other settings" in r.message for r in caplog.records) == 1  # said once
    store.fingerprints, store.resume = ["old"], False
    assert store.lookup(0, "refcoco/val", "7", "x") is None  # --results.resume false recomputes


def test_stored_result_of_other_weights_or_code_is_not_reused(tmp_path, caplog, monkeypatch):
    import refam.code_identity

    store = ResultStore()
    store.fingerprints = ["same config"]
    store.setup(_Trainer(tmp_path), _Module("w1"), "test")
    store.put(0, "d", SampleRecord("7", video=False, expressions=[], inputs="x"))
    store.setup(_Trainer(tmp_path), _Module("w1"), "test")
    assert store.lookup(0, "d", "7", "x") is not None
    store.setup(_Trainer(tmp_path), _Module("w2"), "test")  # other weights under the same config
    assert store.lookup(0, "d", "7", "x") is None
    assert "other weights, code or libraries (weights w1 -> w2 differ)" in caplog.text  # says what differs

    from refam.pipeline import RefAMPipeline
    from refam.settings import Settings

    class Bare:  # the components' files and the code's version, as the pipeline reports them
        extractor, segmenter, settings = object(), object(), Settings()

    before = RefAMPipeline.numbers_identity(Bare())
    graph = dict(refam.code_identity._import_graph())  # the pipeline's own module edited
    graph["refam.pipeline"] = ("edited", graph["refam.pipeline"][1])
    monkeypatch.setattr(refam.code_identity, "_import_graph", lambda: graph)
    assert RefAMPipeline.numbers_identity(Bare()) != before


def test_stored_result_of_a_changed_sample_is_not_reused(tmp_path, caplog):
    store = ResultStore()
    store.fingerprints = ["config"]
    store.setup(_Trainer(tmp_path), _Module(), "test")
    for sample_id in ("a", "b"):
        store.put(0, "d", SampleRecord(sample_id, video=False, expressions=[], inputs=f"{sample_id}-1"))
    assert store.lookup(0, "d", "a", "a-1") is not None
    assert store.lookup(0, "d", "a", "a-2") is None and store.lookup(0, "d", "b", "b-2") is None
    warnings = [r.getMessage() for r in caplog.records if "changed since" in r.getMessage()]
    assert len(warnings) == 2 and "sample a " in warnings[0] and "sample b " in warnings[1]  # each named
    assert store.lookup(0, "d", "a", None) is None  # inputs unknown: nothing is replayed


def test_sample_identity_follows_pixels_texts_ids_and_masks():
    import dataclasses

    from PIL import Image

    from refam.identity import sample_identity
    from refam.types import Expression, Sample

    mask = np.zeros((6, 8), dtype=bool)
    mask[1:3, 2:5] = True
    sample = Sample("s", Image.new("RGB", (8, 6), (1, 2, 3)), [Expression("the cat", "e0", mask)], caption="c")
    base = sample_identity(sample)
    assert sample_identity(dataclasses.replace(sample)) == base
    other_mask = mask.copy()
    other_mask[5, 7] = True
    variants = [
        dataclasses.replace(sample, image=Image.new("RGB", (8, 6), (1, 2, 4))),
        dataclasses.replace(sample, caption="d"),
        dataclasses.replace(sample, expressions=[Expression("the dog", "e0", mask)]),
        dataclasses.replace(sample, expressions=[Expression("the cat", "e1", mask)]),
        dataclasses.replace(sample, expressions=[Expression("the cat", "e0", other_mask)]),
        dataclasses.replace(sample, expressions=[Expression("the cat", "e0", None)]),
    ]
    identities = [base] + [sample_identity(v) for v in variants]
    assert len(set(identities)) == len(identities)


def _reused(output: str) -> tuple[int, int]:
    computed, reused = re.search(r"refam: results: computed (\d+) sample\(s\), reused (\d+)", output).groups()
    return int(computed), int(reused)


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_metrics(tmp_path, refam_here):
    """The run killed is a process of its own; the uninterrupted and the resumed run need none (`refam_here`)."""
    data_root = write_refer_fixture(tmp_path / "refer", n_images=11)
    command = [REFAM, "test", "--config", str(ROOT / "configs/smoke.yaml")]

    started = time.perf_counter()
    full = refam_here(*command[1:], *smoke_args(tmp_path / "a", data_root))
    full_seconds = time.perf_counter() - started
    assert full.returncode == 0, full.stderr[-3000:]
    samples = _reused(full.stdout)[0]
    assert samples >= 4

    # run B and kill it (SIGKILL: no cleanup of any kind) once some results are stored
    results = tmp_path / "b/logs/results/refcoco-val"
    process = subprocess.Popen([*command, *smoke_args(tmp_path / "b", data_root)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(results.glob("*.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stored = sorted(results.glob("*.json"))
    assert 0 < len(stored) < samples, "the run should have been stopped midway"
    assert not [p for p in results.iterdir() if p.suffix != ".json" and not p.name.endswith(".part")]
    mtimes = {}
    for path in stored:  # every file there is complete (written atomically)
        record = json.loads(path.read_text())
        assert record["sample_id"] == path.stem and record["expressions"]
        mtimes[path.name] = path.stat().st_mtime_ns

    started = time.perf_counter()
    resumed = refam_here(*command[1:], *smoke_args(tmp_path / "b", data_root))
    resumed_seconds = time.perf_counter() - started
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _reused(resumed.stdout) == (samples - len(stored), len(stored))
    assert {p.name: p.stat().st_mtime_ns for p in stored} == mtimes  # finished samples were not redone
    assert len(list(results.glob("*.json"))) == samples
    assert logged_metrics(tmp_path / "b/logs") == logged_metrics(tmp_path / "a/logs")
    print(f"full run {full_seconds:.1f} s, resumed after {len(stored)}/{samples} samples {resumed_seconds:.1f} s")


def _demo_manifest(folder, records: int = 2):
    """The first demo records, their images and masks copied into `folder` (so they can be edited)."""
    import shutil

    from tests.test_cli import ROOT as REPO

    source = REPO / "assets/shapes-demo"
    lines = (source / "manifest.jsonl").read_text().splitlines()[:records]
    for line in lines:
        record = json.loads(line)
        for relative in [record["image"], *(e["mask"] for e in record["expressions"])]:
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / relative, folder / relative)
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _demo_run(refam_here, manifest, logs, results):
    dataset = {"class_path": "refam.data.manifest.ManifestDataset", "init_args": {"path": str(manifest), "name": "mine"}}
    result = refam_here("test", "--config", str(ROOT / "configs/demo.yaml"), "--data.datasets", json.dumps(dataset),
                        "--trainer.logger.init_args.save_dir", str(logs), "--results.folder", str(results))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_rerun_after_editing_a_sample_recomputes_it(tmp_path, refam_here):
    """Issue point 5: a manifest's expression text and mask edited (same ids) between two runs into
    the same results folder: the edited sample is recomputed, with a warning naming it, and the
    metrics are those of a fresh run on the edited data."""
    data = tmp_path / "data"
    data.mkdir()
    manifest = _demo_manifest(data)
    results = tmp_path / "results"
    _demo_run(refam_here, manifest, tmp_path / "first", results)

    lines = manifest.read_text().splitlines()
    record = json.loads(lines[0])
    edited = record["expressions"][0]
    edited["text"] = record["expressions"][4]["text"]  # "the square": another object, same id
    (data / edited["mask"]).write_bytes((data / record["expressions"][4]["mask"]).read_bytes())
    lines[0] = json.dumps(record)
    manifest.write_text("\n".join(lines) + "\n")

    rerun = _demo_run(refam_here, manifest, tmp_path / "second", results)
    fresh = _demo_run(refam_here, manifest, tmp_path / "fresh", tmp_path / "fresh-results")
    assert _reused(rerun.stdout) == (1, 1)
    assert f"sample {record['id']} of mine changed since its result was stored" in rerun.stderr + rerun.stdout
    assert logged_metrics(tmp_path / "second") == logged_metrics(tmp_path / "fresh")
    assert logged_metrics(tmp_path / "second") != logged_metrics(tmp_path / "first")

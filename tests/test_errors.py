"""Bad input to `refam test` is one line naming the file or key and the fix, exit 2, nothing written.

Each case runs `refam.cli.main` in-process (the parse fails before any model is built, so this is
quick); two run the real console script too, as a user would, to see exactly what reaches stderr.
"""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.refer_fixture import write_refer_fixture

ROOT = Path(__file__).resolve().parents[1]
REFAM = str(Path(sys.executable).parent / "refam")
SMOKE = str(ROOT / "configs/smoke.yaml")


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def _refcoco(data_root: Path, **init_args) -> list[str]:
    dataset = {"class_path": "refam.data.refcoco.RefCOCODataset",
               "init_args": {"data_root": str(data_root), "split": "val", **init_args}}
    return ["--data.datasets", json.dumps(dataset)]


def _case(name: str, tmp_path: Path) -> tuple[list[str], list[str]]:
    """(arguments after `refam test`, strings the one error line must contain)."""
    smoke = ["--config", SMOKE]
    if name == "unknown split":
        root = write_refer_fixture(tmp_path / "refer")
        return smoke + _refcoco(root, split="tset"), ["refs(unc).p", "'tset'", "data.datasets.init_args.split", "'val'"]
    if name == "missing data root":
        return smoke + _refcoco(tmp_path / "nowhere"), [str(tmp_path / "nowhere"), "data.datasets.init_args.data_root"]
    if name in ("truncated refs pickle", "malicious refs pickle"):
        root = write_refer_fixture(tmp_path / "refer")
        refs = root / "refcoco" / "refs(unc).p"
        if name == "truncated refs pickle":
            refs.write_bytes(refs.read_bytes()[:100])
            return smoke + _refcoco(root), [str(refs), "not a readable pickle", "REFER release"]
        refs.write_bytes(pickle.dumps([_RunsCode(tmp_path / "pwned")], protocol=2))
        return smoke + _refcoco(root), [str(refs), "refusing to load global", "REFER release"]
    if name == "missing SAM2 checkpoint":  # the first command a real user runs, before the weights are in place
        return ["--config", str(ROOT / "configs/refcoco.yaml")], ["model.segmenter.init_args.checkpoint",
                                                                   "sam2.1_hiera_large.pt", "download"]
    if name == "non-UTF-8 manifest":
        manifest = tmp_path / "mine.jsonl"
        manifest.write_bytes(b'{"image": "caf\xe9.jpg", "expressions": ["the dog"]}\n')  # latin-1, not UTF-8
        dataset = {"class_path": "refam.data.manifest.ManifestDataset", "init_args": {"path": str(manifest)}}
        return smoke + ["--data.datasets", json.dumps(dataset)], [str(manifest), "UTF-8"]
    if name == "key typo on the command line":
        return smoke + ["--model.segmenter.init_args.checkpointt", "x.pt"], [
            "model.segmenter.init_args.checkpointt", "SAM2PointSegmenter", "--help"]
    if name == "key typo in a config file":
        extra = tmp_path / "mine.yaml"
        extra.write_text("model:\n  segmentr:\n    class_path: refam.segmenters.sam2.SAM2PointSegmenter\n")
        return smoke + ["--config", str(extra)], ["model.segmentr", "--help"]
    raise AssertionError(name)


CASES = ["unknown split", "missing data root", "truncated refs pickle", "malicious refs pickle",
         "missing SAM2 checkpoint", "non-UTF-8 manifest", "key typo on the command line", "key typo in a config file"]


def _check(code, stderr: str, expected: list[str], run: Path) -> None:
    assert code == 2, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-3000:]  # no traceback, no usage
    assert lines[0].startswith("refam: error: ")
    for part in expected:
        assert part in lines[0]
    assert list(run.iterdir()) == []  # no log folder, config copy or records


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_naming_the_file_or_key(name, tmp_path, monkeypatch, capfd):
    from refam.cli import main

    args, expected = _case(name, tmp_path)
    run = tmp_path / "run"  # the working directory: relative outputs of configs/refcoco.yaml land here
    run.mkdir()
    monkeypatch.chdir(run)
    smoke_paths = ["--model.extractor.init_args.pretrained", str(ROOT / "assets/smoke/tiny-flux")]
    logs = ["--trainer.logger.init_args.save_dir", str(run / "logs")]
    capfd.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["test", *args, *(smoke_paths if SMOKE in args else []), *logs])
    _check(info.value.code, capfd.readouterr().err, expected, run)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("name", ["missing SAM2 checkpoint", "key typo on the command line"])
def test_console_script_prints_only_the_error_line(name, tmp_path):
    args, expected = _case(name, tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    smoke_paths = ["--model.extractor.init_args.pretrained", str(ROOT / "assets/smoke/tiny-flux")]
    result = subprocess.run([REFAM, "test", *args, *(smoke_paths if SMOKE in args else [])],
                            cwd=run, capture_output=True, text=True, timeout=300)
    _check(result.returncode, result.stderr, expected, run)
    assert result.stdout == ""


def test_api_load_raises_the_components_own_error(tmp_path):
    """`RefAM.load(config)` builds the components as the CLI does: a missing checkpoint is the
    MissingInputError naming the key, not jsonargparse's ValueError around it."""
    from refam import RefAM
    from refam.errors import ConfigError, MissingInputError

    config = tmp_path / "mine.yaml"
    config.write_text(
        "model:\n"
        "  extractor:\n"
        "    class_path: refam.extractors.flux.FluxExtractor\n"
        f"    init_args: {{pretrained: {ROOT / 'assets/smoke/tiny-flux'}, torch_dtype: float32}}\n"
        "  segmenter:\n"
        "    class_path: refam.segmenters.sam2.SAM2PointSegmenter\n"
        f"    init_args: {{checkpoint: {tmp_path / 'sam2.pt'}}}\n"
    )
    with pytest.raises(MissingInputError, match="model.segmenter.init_args.checkpoint") as info:
        RefAM.load(config)
    assert str(tmp_path / "sam2.pt") in str(info.value)

    config.write_text(config.read_text().replace("checkpoint:", "checkpointt:"))
    with pytest.raises(ConfigError) as info:
        RefAM.load(config)
    assert "\n" not in str(info.value) and "model.segmenter.init_args.checkpointt" in str(info.value)


def test_run_cli_names_the_full_key_without_the_caller_importing_the_components(tmp_path):
    """`refam.evaluation.ablations.run_row` and other Python callers reach `run_cli` without `refam.cli`: the
    module itself makes a component's error name its key. A fresh interpreter, since this one has
    imported every component module already."""
    flood = json.dumps({"class_path": "refam.segmenters.floodfill.FloodFillSegmenter", "init_args": {"tolerance": 300}})
    script = (
        "import sys\n"
        "from refam.errors import user_error\n"
        "from refam.evaluation.lightning_cli import run_cli\n"
        "try:\n"
        f"    run_cli(['test', '--config', {SMOKE!r}, '--model.segmenter', {flood!r}, '--trainer.logger', 'false'])\n"
        "except Exception as err:\n"
        "    print(user_error(err))\n"
        "assert 'refam.cli' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "model.segmenter.init_args.tolerance: must be in [0, 255], got 300"


def test_a_reported_or_earlier_error_is_not_taken_for_a_later_failure():
    """A long-lived process (`refam serve`, repeated `RefAM.load`) builds components many times: an
    error `build` recorded is the cause of one failure only, never of a later unrelated one that
    happens to quote the same words."""
    from refam.errors import ConfigError, build, forget_built_errors, user_error
    from refam.segmenters.floodfill import FloodFillSegmenter

    with pytest.raises(ConfigError) as first:
        build(FloodFillSegmenter, tolerance=300)
    # jsonargparse's union error quotes an alternative's error without chaining it
    union = ValueError(f"Does not validate against any of the types:\n  - {first.value.message}")
    assert user_error(union) is first.value
    later = ValueError(f"an unrelated failure: {first.value.message}")
    assert user_error(later) is None  # reported once, then forgotten

    with pytest.raises(ConfigError):  # recorded by an instantiation that recovered (another alternative fitted)
        build(FloodFillSegmenter, tolerance=300)
    forget_built_errors()  # the next instantiation starts
    assert user_error(later) is None

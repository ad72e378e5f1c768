"""Every error a user can cause, in every subcommand, is one line `refam: error: ...` and exit 2.

One table of (arguments, words the line must hold), run in this process (`refam_here`): each case
fails in the checks before anything loads, which the sweep enforces (loading a model, training or
scoring fails the test). Then the Python API's errors: typed, and worded as the command line words them.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
REFAM = str(Path(sys.executable).parent / "refam")
SMOKE = str(ROOT / "configs/smoke.yaml")
DEMO_IMAGE = str(ROOT / "assets/shapes-demo/images/demo-00005.png")
NOT_A_COMMAND = "not a refam command"


def _sam2(checkpoint: Path) -> list[str]:
    segmenter = {"class_path": "refam.segmenters.sam2.SAM2PointSegmenter",
                 "init_args": {"config": "configs/sam2.1/sam2.1_hiera_t.yaml", "checkpoint": str(checkpoint)}}
    return ["--model.segmenter", json.dumps(segmenter)]


def _davis(folder: Path) -> tuple[str, str]:
    """A one-video DAVIS layout (annotations and predictions), for score's argument checks."""
    for kind in ("gt", "pred"):
        (folder / kind / "cat").mkdir(parents=True)
        Image.fromarray(np.eye(8, dtype=np.uint8)).save(folder / kind / "cat" / "00000.png")
    return str(folder / "pred"), str(folder / "gt")


def _files(tmp: Path) -> dict[str, str]:
    """The files the cases name, made once per case."""
    tmp.mkdir()
    (tmp / "list.yaml").write_text("- model\n- data\n")
    (tmp / "broken.yaml").write_text("model: [\n")
    (tmp / "random.pt").write_bytes(os.urandom(4096))
    (tmp / "a-file").write_text("not a folder")
    (tmp / "empty").mkdir()
    (tmp / "flux").mkdir()  # a FLUX folder whose training record is damaged
    (tmp / "flux" / "model_index.json").write_text("{}")
    (tmp / "flux" / "training.json").write_text('{"caption_tokens": 3')
    small = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(96, 3, 7, 7),
             **{f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.zeros(96) for i in range(12)}}
    torch.save({"model": small}, tmp / "tiny-as-small.pt")  # SAM2-T's image encoder, given to SAM2-S's config
    pred, gt = _davis(tmp / "davis")
    return {"tmp": str(tmp), "pred": pred, "gt": gt}


# (arguments, words the one line holds); {name} is filled from `_files` and the busy port
CASES = {
    # the command itself
    "fit": (["fit", "--config", SMOKE], ["'refam fit' is not a refam command", "zero-shot", "refam train-shapes"]),
    "validate": (["validate"], ["'refam validate' is not a refam command", "refam train-shapes"]),
    "unknown command": (["frobnicate"], ["'refam frobnicate'", NOT_A_COMMAND, "refam --help"]),
    "option before a command": (["--config", SMOKE], ["'--config' needs a command", "test, predict"]),
    # test
    "test: missing config": (["test", "--config", "{tmp}/missing.yaml"], ["{tmp}/missing.yaml"]),
    "test: key typo": (["test", "--config", SMOKE, "--model.segmenter.init_args.checkpointt", "x.pt"],
                       ["model.segmenter.init_args.checkpointt", "refam test --help"]),
    "test: unknown flag": (["test", "--config", SMOKE, "--bogus"], ["--bogus"]),
    "test: corrupt SAM2 checkpoint": (["test", "--config", SMOKE, *_sam2(Path("{tmp}/random.pt"))],
                                      ["model.segmenter.init_args.checkpoint", "{tmp}/random.pt", "download"]),
    "test: SAM2 checkpoint of another size": (
        ["test", "--config", SMOKE, *_sam2(Path("{tmp}/tiny-as-small.pt")),
         "--model.segmenter.init_args.config", "configs/sam2.1/sam2.1_hiera_s.yaml"],
        ["model.segmenter.init_args.checkpoint", "another SAM2 size", "12 blocks"]),
    # predict
    "predict: missing image": (["predict", "--image", "{tmp}/missing.png", "--expression", "x", "--output", "{tmp}/out"],
                               ["{tmp}/missing.png"]),
    # score
    "score: --csv a folder": (["score", "--pred", "{pred}", "--gt", "{gt}", "--csv", "{tmp}"], ["--csv {tmp}", "folder"]),
    "score: --csv in no folder": (["score", "--pred", "{pred}", "--gt", "{gt}", "--csv", "{tmp}/no/s.csv"], ["{tmp}/no"]),
    "score: --videos not text": (["score", "--pred", "{pred}", "--gt", "{gt}", "--videos", "{tmp}/random.pt"],
                                 ["--videos {tmp}/random.pt", "text file"]),
    "predict: --model with a damaged training record": (
        ["predict", "--model", "{tmp}/flux", "--image", DEMO_IMAGE, "--expression", "x", "--output", "{tmp}/out"],
        ["{tmp}/flux/training.json", "training record"]),
    "score: --bound-th -1": (["score", "--pred", "{pred}", "--gt", "{gt}", "--bound-th", "-1"], ["--bound-th", "> 0"]),
    "score: --bound-th 0": (["score", "--pred", "{pred}", "--gt", "{gt}", "--bound-th", "0"], ["--bound-th", "> 0"]),
    "score: --bound-th nan": (["score", "--pred", "{pred}", "--gt", "{gt}", "--bound-th", "nan"], ["--bound-th"]),
    "score: no --gt": (["score", "--pred", "{pred}"], ["--gt"]),
    "score: missing folders": (["score", "--pred", "{tmp}/p", "--gt", "{tmp}/g"], ["{tmp}/g", "no such folder"]),
    "score: unknown flag": (["score", "--pred", "{pred}", "--gt", "{gt}", "--bogus"], ["--bogus", "refam score --help"]),
    # ablate
    "ablate: base a list": (["ablate", "--table", "4", "--base", "{tmp}/list.yaml", "--output", "{tmp}/o"],
                            ["{tmp}/list.yaml", "mapping", "not a list"]),
    "ablate: base missing": (["ablate", "--table", "4", "--base", "{tmp}/missing.yaml", "--output", "{tmp}/o"],
                             ["{tmp}/missing.yaml", "no such config file"]),
    "ablate: base malformed": (["ablate", "--table", "4", "--base", "{tmp}/broken.yaml", "--output", "{tmp}/o"],
                               ["{tmp}/broken.yaml", "line 2"]),
    "ablate: no table": (["ablate"], ["--table"]),
    "ablate: unknown table": (["ablate", "--table", "99"], ["--table", "99"]),
    "ablate: unknown row": (["ablate", "--table", "4", "--rows", "nope"], ["no row 'nope'", "am-np-sb"]),
    "ablate: unknown option for the run": (["ablate", "--table", "4", "--base", str(ROOT / "configs/demo.yaml"), "--output",
                                            "{tmp}/o", "--bogus", "1"], ["--bogus"]),
    # serve
    "serve: --port 99999": (["serve", "--port", "99999"], ["--port", "<= 65535", "99999"]),
    "serve: --port -1": (["serve", "--port", "-1"], ["--port", ">= 1"]),
    "serve: --port abc": (["serve", "--port", "abc"], ["--port", "'abc'"]),
    "serve: --max-frames -5": (["serve", "--max-frames", "-5"], ["--max-frames", ">= 1"]),
    "serve: --max-frames 0": (["serve", "--max-frames", "0"], ["--max-frames", ">= 1"]),
    "serve: busy port": (["serve", "--port", "{busy}"], ["cannot serve on 127.0.0.1:{busy}", "another --port"]),
    "serve: unknown host": (["serve", "--host", "no-such-host.invalid"], ["--host no-such-host.invalid"]),
    "serve: missing config": (["serve", "--config", "{tmp}/missing.yaml"], ["config file not found: {tmp}/missing.yaml"]),
    "serve: config a list": (["serve", "--config", "{tmp}/list.yaml"], ["{tmp}/list.yaml", "not a list"]),
    "serve: unknown flag": (["serve", "--bogus"], ["--bogus", "refam serve --help"]),
    # analyze
    "analyze: missing image": (["analyze", "--image", "{tmp}/missing.png", "--expression", "x", "--output", "{tmp}/o"],
                               ["image file not found: {tmp}/missing.png"]),
    "analyze: empty expression": (["analyze", "--image", DEMO_IMAGE, "--expression", "the cat", "--expression", " ",
                                   "--output", "{tmp}/o"], ["an expression is empty"]),
    "analyze: no expression": (["analyze", "--image", DEMO_IMAGE, "--output", "{tmp}/o"], ["--expression"]),
    "analyze: missing config": (["analyze", "--image", DEMO_IMAGE, "--expression", "x", "--output", "{tmp}/o",
                                 "--config", "{tmp}/missing.yaml"], ["config file not found"]),
    "analyze: output a file": (["analyze", "--image", DEMO_IMAGE, "--expression", "x", "--output", "{tmp}/a-file"],
                               ["--output {tmp}/a-file"]),
    # train-shapes
    "train-shapes: --resume-from missing": (["train-shapes", "--resume-from", "{tmp}/nope", "--output", "{tmp}/m"],
                                            ["--resume-from {tmp}/nope", "no such folder"]),
    "train-shapes: --resume-from not a model": (["train-shapes", "--resume-from", "{tmp}/empty", "--output", "{tmp}/m"],
                                                ["--resume-from {tmp}/empty", "model_index.json"]),
    "train-shapes: --vae-steps -1": (["train-shapes", "--vae-steps", "-1"], ["--vae-steps", ">= 1"]),
    "train-shapes: --flow-steps 0": (["train-shapes", "--flow-steps", "0"], ["--flow-steps", ">= 1"]),
    "train-shapes: --seed -1": (["train-shapes", "--seed", "-1"], ["--seed", ">= 0"]),
    "train-shapes: --seed x": (["train-shapes", "--seed", "x"], ["--seed", "'x'"]),
    "train-shapes: --lr 0": (["train-shapes", "--lr", "0"], ["--lr", "> 0"]),
    "train-shapes: --ground-share 2": (["train-shapes", "--ground-share", "2"], ["--ground-share", "<= 1"]),
    "train-shapes: unknown flag": (["train-shapes", "--steps", "5"], ["--steps", "refam train-shapes --help"]),
    "train-shapes: fewer scenes than a batch": (["train-shapes", "--scenes", "2", "--batch-size", "4", "--output",
                                                 "{tmp}/m"], ["--scenes 2", "--batch-size 4"]),
    "train-shapes: width not split by heads": (["train-shapes", "--width", "30", "--heads", "4", "--output", "{tmp}/m"],
                                               ["--width 30", "--heads 4"]),
    "train-shapes: monitor without manifest": (["train-shapes", "--monitor-every", "5", "--output", "{tmp}/m"],
                                               ["--monitor-manifest"]),
    "train-shapes: into the package": (["train-shapes", "--output", str(ROOT / "refam/embedded/refam-shapes")],
                                       ["inside the installed refam package", "--overwrite-embedded"]),
    "train-shapes: output a file": (["train-shapes", "--output", "{tmp}/a-file"], ["--output {tmp}/a-file", "is a file"]),
    "train-shapes: output under a file": (["train-shapes", "--output", "{tmp}/a-file/model"],
                                          ["--output {tmp}/a-file/model", "cannot write there"]),
    "train-shapes: work dir under a file": (["train-shapes", "--output", "{tmp}/m", "--work-dir", "{tmp}/a-file/w"],
                                            ["--work-dir {tmp}/a-file/w", "cannot write there"]),
    "train-shapes: --text-width 2": (["train-shapes", "--text-width", "2", "--output", "{tmp}/m"],
                                     ["--text-width 2", "multiple of 4"]),
}


@pytest.fixture
def nothing_loads(monkeypatch):
    """A case that loaded weights, trained or scored would have passed its checks: fail it."""
    from refam.pipeline import RefAMPipeline
    import refam.evaluation.score
    import refam.shapes.train

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded (or work started) before the error was found")

    monkeypatch.setattr(RefAMPipeline, "setup", loaded)
    monkeypatch.setattr(refam.shapes.train, "train", loaded)
    monkeypatch.setattr(refam.evaluation.score, "score_video", loaded)


@pytest.fixture
def busy_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def _filled(values: list[str], names: dict[str, str]) -> list[str]:
    return [value.format(**names) if "{" in value and not value.startswith("{\"") else value for value in values]


def check_one_line(result: subprocess.CompletedProcess, expected: list[str]) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr[-3000:]
    assert lines[0].startswith("refam: error: ")
    for words in expected:
        assert words in lines[0], (words, lines[0])
    return lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_every_user_error_is_one_line_and_exit_2(name, tmp_path, refam_here, nothing_loads, busy_port):
    names = {**_files(tmp_path / "files"), "busy": str(busy_port)}
    args, expected = CASES[name]
    # (the JSON of a --model.segmenter entry holds braces of its own: only the paths in it are filled)
    args = [a.replace("{tmp}", names["tmp"]) if a.startswith("{\"") else a for a in _filled(args, names)]
    run = tmp_path / "run"  # the working folder: nothing may be written there
    run.mkdir()
    check_one_line(refam_here(*args, cwd=run), _filled(expected, names))
    assert [p.name for p in run.iterdir()] == []


@pytest.mark.parametrize("name", ["fit"])
def test_the_console_script_prints_the_same_one_line(name, tmp_path):
    """The real console script, as a user runs it: nothing but the line reaches stderr (one case: every
    subcommand goes through the same `main`, and a new process costs some 12 s of imports)."""
    args, expected = CASES[name]
    result = subprocess.run([REFAM, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    check_one_line(result, expected)
    assert result.stdout == ""


@pytest.mark.parametrize("args", [[], ["-h"], ["--help"]], ids=["nothing", "-h", "--help"])
def test_help_lists_every_subcommand_with_a_line_each(args, refam_here):
    from refam.cli import SUBCOMMANDS

    result = refam_here(*args)
    assert result.returncode == 0 and result.stderr == ""
    listed = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert set(listed) == {"test", "predict", "serve", "score", "analyze", "ablate", "train-shapes",
                           "train-shapes-video"} == set(SUBCOMMANDS)
    assert all(len(line.split()) > 3 for line in listed.values())  # each with what it does
    assert "fit" not in listed and "validate" not in listed


# ------------------------------------------------------------------------------- the Python API
def _unloaded_model():
    """A RefAM whose pipeline fails if used: the API's checks come before any work."""
    from refam import RefAM

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the pipeline was used ({name}) before the input was checked")

    model = object.__new__(RefAM)
    model.pipeline, model.device = Untouchable(), torch.device("cpu")
    return model


def _api_case(name: str, tmp: Path):
    """(the call, the typed error, words of its message, the `refam analyze` arguments meeting the same error)."""
    from refam import RefAM
    from refam.errors import ConfigError, DataError, ExpressionError, MissingInputError

    image = ["--image", DEMO_IMAGE, "--expression", "the cat", "--output", str(tmp / "out")]
    if name == "missing image":
        return (lambda: _unloaded_model().segment(tmp / "missing.png", "the cat"), MissingInputError,
                str(tmp / "missing.png"), ["--image", str(tmp / "missing.png"), "--expression", "the cat",
                                           "--output", str(tmp / "out")])
    if name == "unreadable image":
        (tmp / "broken.png").write_bytes(b"not a png")
        return (lambda: _unloaded_model().segment(tmp / "broken.png", "the cat"), DataError, "cannot read image",
                ["--image", str(tmp / "broken.png"), "--expression", "the cat", "--output", str(tmp / "out")])
    if name == "empty expression":
        return (lambda: _unloaded_model().segment(DEMO_IMAGE, ["the cat", "  "]), ExpressionError,
                "an expression is empty", [*image, "--expression", "  "])
    if name == "no expression":
        return lambda: _unloaded_model().segment(DEMO_IMAGE, []), ExpressionError, "an expression is empty", None
    if name == "expression not text":
        return lambda: _unloaded_model().segment(DEMO_IMAGE, [3]), ExpressionError, "list of strings", None
    if name == "image of another type":
        return lambda: _unloaded_model().segment(3, "the cat"), DataError, "got int", None
    if name == "missing config":
        return (lambda: RefAM.load(tmp / "missing.yaml"), MissingInputError, "config file not found",
                [*image, "--config", str(tmp / "missing.yaml")])
    if name == "config a list":
        (tmp / "list.yaml").write_text("- model\n")
        return (lambda: RefAM.load(tmp / "list.yaml"), ConfigError, "not a list",
                [*image, "--config", str(tmp / "list.yaml")])
    if name == "config without model":
        (tmp / "data.yaml").write_text("data: {}\n")
        return (lambda: RefAM.load(tmp / "data.yaml"), ConfigError, "no `model:` section",
                [*image, "--config", str(tmp / "data.yaml")])
    if name == "missing source":
        return (lambda: RefAM.load(tmp / "nowhere"), MissingInputError, "no such file or folder",
                [*image, "--model", str(tmp / "nowhere")])
    if name == "bad device":
        return lambda: RefAM.load(device="gpu"), ConfigError, "--device gpu", None
    raise AssertionError(name)


API_CASES = ["missing image", "unreadable image", "empty expression", "no expression", "expression not text",
             "image of another type", "missing config", "config a list", "config without model", "missing source",
             "bad device"]


@pytest.mark.parametrize("name", API_CASES)
def test_the_api_raises_a_typed_error_with_the_commands_message(name, tmp_path, refam_here, nothing_loads):
    from refam.errors import RefamError, error_line

    call, kind, words, cli_args = _api_case(name, tmp_path)
    with pytest.raises(kind) as info:
        call()
    assert isinstance(info.value, RefamError) and words in str(info.value) and "\n" not in str(info.value)
    if cli_args is not None:  # the command line meets the same error: the same words, after the prefix
        line = check_one_line(refam_here("analyze", *cli_args), [words])
        assert line == error_line(info.value)

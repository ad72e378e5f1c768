"""Warnings: what an answer cannot rest on (words the model's tokenizer does not know, an expression
with no content word left), computed by the pipeline per expression and returned by every front
door: the API's predictions (images and videos), `refam predict`'s JSON and output, `refam test`'s
records."""

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from refam.aggregators.magnets import AppendMagnets
from refam.evaluation.records import ExpressionRecord, SampleRecord
from refam.text.caveats import expression_warnings
from refam.types import Prediction, TokenInfo

ROOT = Path(__file__).resolve().parents[2]
SCENE = ROOT / "assets/shapes-demo/images/demo-00005.png"  # a red triangle, a black square, two circles
STOP_WORDS_ONLY = "nothing names what to look for"


@pytest.fixture(scope="module")
def model():
    from refam import RefAM

    return RefAM.load()


def unknown_sentence(*words: str) -> str:
    quoted = ", ".join(f'"{w}"' for w in words)
    return f"the model does not know the word{'s' if len(words) > 1 else ''} {quoted}"


def test_the_t5_reader_marks_the_words_its_tokenizer_reads_as_unknown():
    from transformers import AutoTokenizer

    from refam.embedded import REFAM_SHAPES
    from refam.text.t5 import T5Reader

    reader = T5Reader(AutoTokenizer.from_pretrained(REFAM_SHAPES / "tokenizer_2"), None, 64)
    (tokens,) = reader.tokenize([("the zebra circle", None)])
    assert [(t.piece, t.word, t.unknown) for t in tokens] == [
        ("▁the", "the", False), ("▁", "_", False), ("<unk>", "zebra", True), ("▁circle", "circle", False),
        ("</s>", "", False)]


def test_a_decoder_reader_marks_the_unknown_token_as_the_expressions_own_word():
    """A decoder tokenizer whose unknown token is special still gives it as the user's word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from refam.text.decoder import DecoderReader, PromptTemplate

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<end>", "the", "red", "circle"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        additional_special_tokens=["<end>"])
    assert tokenizer.unk_token_id in tokenizer.all_special_ids
    reader = DecoderReader(tokenizer, None, PromptTemplate("{} <end>"), 64)
    (tokens,) = reader.tokenize([("the zebra circle", None)])
    assert [(t.piece, t.word, t.special, t.unknown) for t in tokens] == [
        ("the", "the", False, False), ("<unk>", "zebra", False, True), ("circle", "circle", False, False),
        ("<end>", "", True, False)]


def test_unknown_words_are_said_once_each_as_written_and_never_for_a_magnet():
    tokens = [TokenInfo("▁the", "the", False, False), TokenInfo("<unk>", "zebra", False, False, unknown=True),
              TokenInfo("<unk>", "zebra", False, False, unknown=True), TokenInfo("<unk>", "rosa", False, True, unknown=True),
              TokenInfo("</s>", "", True, False)]
    warnings = expression_warnings("The ZEBRA zebra", tokens, [False, True, True, False, False])
    assert len(warnings) == 1 and warnings[0].startswith(unknown_sentence("ZEBRA") + ":")
    assert "rosa" not in warnings[0]


def test_the_api_warns_of_unknown_words_and_of_nothing_else(model):
    zebra, mixed, woman, normal = model.segment(
        SCENE, ["the Zebra on the left", "🦓 红色 circle", "the woman", "the red triangle"])
    assert len(zebra.warnings) == 1 and zebra.warnings[0].startswith(unknown_sentence("Zebra") + ":")
    assert len(mixed.warnings) == 1 and mixed.warnings[0].startswith(unknown_sentence("🦓", "红色") + ":")
    assert "mask is a guess" not in mixed.warnings[0]  # "circle" is known
    assert len(woman.warnings) == 1 and woman.warnings[0].endswith("so the mask is a guess")  # no known word left
    assert normal.warnings == []


def test_an_expression_of_stop_words_only_is_warned_of_as_the_filter_decides(model):
    it, this_is_it, normal = model.segment(SCENE, ["it", "this is it", "the black square"])
    for prediction, text in ((it, "it"), (this_is_it, "this is it")):
        assert len(prediction.warnings) == 1
        assert prediction.warnings[0].startswith(f'every word of "{text}" is a stop word or a magnet')
        assert STOP_WORDS_ONLY in prediction.warnings[0]
    assert normal.warnings == []
    # without the stop-word filter "it" is kept: nothing was dropped, nothing to warn of
    unfiltered = replace(model.settings, magnets=AppendMagnets(filter_stop_words=False))
    assert model.segment(SCENE, ["it"], settings=unfiltered)[0].warnings == []


def test_a_video_prediction_carries_its_warnings(tmp_path):
    from refam import RefAM
    from refam.pipeline import RefAMPipeline
    from refam.segmenters.flood_track import FloodTrackSegmenter
    from refam.extractors.mochi import MochiExtractor
    from refam.shapes.motion import make_motion_clip
    from refam.testing.tiny_mochi import save_tiny_mochi

    mochi = save_tiny_mochi(tmp_path / "mochi")
    extractor = MochiExtractor(str(mochi), torch_dtype="float32", height=48, width=80, clip_frames=7,
                               caption_max_tokens=16)
    model = RefAM(RefAMPipeline(extractor, FloodTrackSegmenter()))
    clip = make_motion_clip("test", 0, frames=3)
    frames = []
    for t in range(clip.num_frames):
        frames.append(tmp_path / f"{t:05d}.png")
        clip.frame(t).image.save(frames[-1])
    (wombat, _), (it, _), (normal, _) = model.segment_video(frames, ["the wombat", "it", "the red circle"])
    assert wombat.warnings[0].startswith(unknown_sentence("wombat"))  # the tiny vocabulary has "zebra"
    assert it.warnings[0].startswith('every word of "it"')
    assert normal.warnings == []


def test_predict_writes_the_warnings_into_the_json_and_prints_each_on_a_line(tmp_path, refam_here):
    result = refam_here("predict", "--image", str(SCENE), "--expression", "the zebra", "--expression", "it",
                        "--expression", "the red triangle", "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    folder = tmp_path / "out" / SCENE.stem
    records = [json.loads((folder / f"{stem}.json").read_text()) for stem in ("0-the-zebra", "1-it", "2-the-red-triangle")]
    assert [len(r["warnings"]) for r in records] == [1, 1, 0]
    assert records[0]["warnings"][0].startswith(unknown_sentence("zebra"))
    lines = [line for line in result.stdout.splitlines() if line.strip().startswith("warning:")]
    assert lines == [f'  warning: "the zebra": {records[0]["warnings"][0]}', f'  warning: "it": {records[1]["warnings"][0]}']


def test_refam_tests_records_keep_the_warnings_through_the_store_and_the_expressions_file(tmp_path):
    from refam.evaluation.callbacks import ExpressionRecords
    from refam.pipeline import SampleResult

    warned = Prediction("e0", torch.zeros(2, 2, dtype=torch.bool).numpy(), (1.0, 1.0), None,
                        warnings=['the model does not know the word "zebra": ...'])
    record = SampleRecord("s", False, [ExpressionRecord.of(warned, iou=0.0)])
    replayed = SampleRecord.loads(record.dumps()).result().predictions[0]
    assert replayed.warnings == warned.warnings

    callback = ExpressionRecords(folder=str(tmp_path))
    trainer = SimpleNamespace(global_rank=0, log_dir=str(tmp_path), default_root_dir=str(tmp_path))
    module = SimpleNamespace(dataset_names=["d"])
    item = SimpleNamespace(expressions=[SimpleNamespace(expression_id="e0", text="the zebra")])
    callback.on_test_batch_end(trainer, module, [SampleResult("s", [replayed])], [item], 0)
    callback.on_test_end(trainer, module)
    (line,) = (tmp_path / "expressions" / "d.rank0.jsonl").read_text().splitlines()
    assert json.loads(line)["warnings"] == warned.warnings


def test_the_serve_sessions_run_entries_and_run_json_hold_the_warnings(model, tmp_path):
    from refam.apps.serve.session import Session
    from refam.sections import model_section

    run = Session(model, model_section(None), workdir=tmp_path).run(SCENE, "the zebra\nthe red triangle")
    warned, normal = run.expressions
    assert warned["warnings"] == run.predictions[0].warnings and warned["warnings"][0].startswith(unknown_sentence("zebra"))
    assert normal["warnings"] == []
    stored = json.loads((run.folder / "run.json").read_text())
    assert [e["warnings"] for e in stored["run"]["expressions"]] == [warned["warnings"], []]

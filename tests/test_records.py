"""One record format (refam.evaluation.records): typed records that write and read back, masks as COCO RLE,
malformed or edited records recomputed with one warning, and file names that never collide."""

import errno
import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from refam.evaluation.callbacks import MaskWriter, ResultStoreCallback
from refam.evaluation.outputs import OutputError, check_folder
from refam.evaluation.store import ResultStore
from refam.errors import ConfigError
from refam.identity import digest
from refam.pipeline import SampleResult
from refam.evaluation.records import DavisObject, ExpressionRecord, RecordError, Rle, SampleRecord
from refam.types import Prediction


def _mask(seed: int, shape=(7, 11)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) > 0.5


def _image_record(sample_id="s1", expression_ids=("e0", "e1")) -> SampleRecord:
    entries = [ExpressionRecord(expression_id=e, point=(1.5, 2.25), kept_tokens=["cat"], dropped_tokens=["the"],
                                sinks=["the"], sink_categories=["stop word"], intersection=5 + i, union=9, iou=0.5,
                                point_hit=True, saliency={"correct": 3, "labelled": 4, "inter": [1, 2], "union": [3, 4],
                                                          "ap": 0.25},
                                mask=Rle.encode(_mask(i)))
               for i, e in enumerate(expression_ids)]
    return SampleRecord(sample_id, video=False, expressions=entries, skipped=["e9: empty"], inputs="x")


def _video_record() -> SampleRecord:
    track = [Rle.encode(_mask(0)), None, Rle.encode(_mask(9))]
    entry = ExpressionRecord(expression_id="0", point=(3.0, 4.0), frame=0, point_hit=False, j=[0.5, float("nan")],
                             f=[1.0, 0.0], track=track)
    return SampleRecord("v", video=True, expressions=[entry], davis_runs={"0": [DavisObject(1, 2, [0.1], [0.2])]},
                        inputs="y")


def test_rle_keeps_every_pixel_of_non_square_masks():
    for seed, shape in [(0, (7, 11)), (1, (1, 13)), (2, (16, 3))]:
        mask = _mask(seed, shape)
        rle = Rle.encode(mask)
        assert rle.size == shape and np.array_equal(rle.decode(), mask)
        assert rle.decode().dtype == bool


@pytest.mark.parametrize("record", [_image_record(), _video_record()], ids=["image", "video"])
def test_record_writes_and_reads_back_the_same_value(record):
    text = record.dumps()
    back = SampleRecord.loads(text)
    assert back.dumps() == text
    assert json.loads(text)["digest"] == digest(record.to_json())
    for ours, theirs in zip(record.expressions, back.expressions):
        if ours.mask is not None:
            assert np.array_equal(ours.mask.decode(), theirs.mask.decode())


def test_replayed_result_holds_the_masks_a_fresh_run_hands_the_writers():
    record = SampleRecord.loads(_image_record().dumps())
    result = record.result()
    assert isinstance(result, SampleResult) and result.skipped == ["e9: empty"]
    for i, prediction in enumerate(result.predictions):
        assert np.array_equal(prediction.mask, _mask(i)) and prediction.point == (1.5, 2.25)
    video = SampleRecord.loads(_video_record().dumps()).result()
    assert np.array_equal(video.predictions[0].mask, _mask(0))  # the prompted frame's


def test_a_replayed_prediction_keeps_its_warnings_and_no_referent_flag():
    """`refam test` replays what a fresh run hands its writers: the no-referent flag, the value it read
    and the warning it added come back; a prediction without a flag comes back without one."""
    flagged = Prediction("e0", _mask(0), (1.5, 2.25), None, warnings=["may name nothing in the image: ..."],
                         no_referent=True, referent_statistic=0.28)
    plain = Prediction("e1", _mask(1), (1.5, 2.25), None)
    record = SampleRecord("s1", video=False, expressions=[ExpressionRecord.of(flagged, mask=Rle.encode(flagged.mask)),
                                                          ExpressionRecord.of(plain, mask=Rle.encode(plain.mask))])
    back = SampleRecord.loads(record.dumps()).result().predictions
    assert [(p.no_referent, p.referent_statistic, p.warnings) for p in back] == [
        (True, 0.28, ["may name nothing in the image: ..."]), (None, None, [])]


def _edit(change):
    def edited(data: dict) -> dict:
        change(data)
        return data
    return edited


def _set(path, value):
    def change(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


def _drop(path):
    def change(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return change


MALFORMED = {
    "iou a string": _set(["expressions", 0, "iou"], "0.5"),
    "intersection a float": _set(["expressions", 0, "intersection"], 5.5),
    "point_hit a number": _set(["expressions", 0, "point_hit"], 1),
    "no_referent a string": _set(["expressions", 0, "no_referent"], "yes"),
    "point of three": _set(["expressions", 0, "point"], [1.0, 2.0, 3.0]),
    "expressions an object": _set(["expressions"], {"e0": 1}),
    "expression a list": _set(["expressions", 0], [1, 2]),
    "sample_id a number": _set(["sample_id"], 7),
    "video missing": _drop(["video"]),
    "expression_id missing": _drop(["expressions", 0, "expression_id"]),
    "unknown field": _set(["expressions", 0, "score"], 1.0),
    "mask counts a number": _set(["expressions", 0, "mask", "counts"], 3),
    "mask size a string": _set(["expressions", 0, "mask", "size"], "7x11"),
    "saliency ap a string": _set(["expressions", 0, "saliency", "ap"], "high"),
    "skipped a string": _set(["skipped"], "e9"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_record_is_refused_by_name(name):
    data = json.loads(_image_record().dumps())
    del data["digest"]
    MALFORMED[name](data)
    data["digest"] = digest(data)  # a consistent digest: the types alone must catch it
    with pytest.raises(RecordError):
        SampleRecord.loads(json.dumps(data))


class _Module:
    def numbers_identity(self):
        return {"weights": "w"}


def _store(tmp_path) -> ResultStore:
    store = ResultStore(folder=str(tmp_path / "results"))
    store.fingerprints = ["config"]
    store.setup(SimpleNamespace(logger=None, default_root_dir=str(tmp_path)), _Module())
    return store


CORRUPTIONS = {
    # numbers edited by hand, digest left as it was
    "edited iou": lambda text: text.replace('"iou": 0.5', '"iou": 0.9', 1),
    "edited counts": lambda text: text.replace('"intersection": 5', '"intersection": 9', 1),
    # a bit flipped in the mask
    "flipped mask": lambda text: _flip_mask(text),
    # parseable but malformed (types checked before the digest)
    "wrong type": lambda text: text.replace('"union": 9', '"union": "9"', 1),
    "missing key": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "expressions"}),
    "a list": lambda text: "[1, 2]",
    "truncated": lambda text: text[: len(text) // 2],
}


def _flip_mask(text: str) -> str:
    data = json.loads(text)
    counts = data["expressions"][0]["mask"]["counts"]
    data["expressions"][0]["mask"]["counts"] = counts[:-1] + ("1" if counts[-1] != "1" else "2")
    return json.dumps(data)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_store_recomputes_a_damaged_record_with_one_warning_naming_the_file(tmp_path, caplog, name):
    store = _store(tmp_path)
    written = store.put(0, "refcoco/val", _image_record())
    assert written.dataset == "refcoco/val" and written.numbers == {"weights": "w"}  # returns what it wrote
    path = store.path("refcoco/val", "s1")
    assert store.lookup(0, "refcoco/val", "s1", "x") == written
    path.write_text(CORRUPTIONS[name](path.read_text()))
    with caplog.at_level(logging.WARNING):
        assert store.lookup(0, "refcoco/val", "s1", "x") is None
        assert store.lookup(0, "refcoco/val", "s1", "x") is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "recomputing sample s1" in warnings[0]
    if name.startswith(("edited", "flipped")):
        assert "does not match its digest" in warnings[0]


def test_ids_that_collide_once_made_file_safe_get_their_own_files(tmp_path):
    store = _store(tmp_path)
    for sample_id in ("a/b", "a-b", "a b"):
        store.put(0, "d", _image_record(sample_id))
    assert len({store.path("d", s) for s in ("a/b", "a-b", "a b")}) == 3
    assert {store.lookup(0, "d", s, "x").sample_id for s in ("a/b", "a-b", "a b")} == {"a/b", "a-b", "a b"}
    assert len(list((tmp_path / "results" / "d").glob("*.json"))) == 3
    assert all(p.parent == tmp_path / "results" / "d" for p in (tmp_path / "results").rglob("*.json"))

    writer = MaskWriter(save=True, folder=str(tmp_path / "masks"), overlay=True)
    module = SimpleNamespace(dataset_names=["d"], add_mask_writer=lambda w: None)
    trainer = SimpleNamespace(log_dir=str(tmp_path), default_root_dir=str(tmp_path), lightning_module=module)
    writer.setup(trainer, module, "test")
    ids = ["a/b", "a-b", "a_overlay"]  # the last would be the first's overlay under "<id>_overlay.png"
    result = SampleResult("s/1", [Prediction(e, _mask(i), (1.0, 1.0), None) for i, e in enumerate(ids)])
    item = SimpleNamespace(sample_id="s/1", image=Image.new("RGB", (11, 7)))
    writer.write_on_batch_end(trainer, module, [result], None, [item], 0, 0)
    written = sorted((tmp_path / "masks" / "d").rglob("*.png"))
    assert len(written) == 6 and len({p.parent for p in written}) == 1
    masks = [p for p in written if "~overlay" not in p.name]
    decoded = sorted(tuple((np.asarray(Image.open(p)) > 0).ravel()) for p in masks)
    assert decoded == sorted(tuple(_mask(i).ravel()) for i in range(3))  # each expression's own mask


def _callbacks(tmp_path, folder):
    store = ResultStore(folder=str(folder))
    return {"results.folder": ResultStoreCallback(store),
            "masks.folder": MaskWriter(save=True, folder=str(folder)),
            "records.folder": __import__("refam.evaluation.callbacks", fromlist=["ExpressionRecords"]).ExpressionRecords(
                folder=str(folder))}


def _raise(code):
    def write_atomic(path, data):
        raise OSError(code, __import__("os").strerror(code), str(path))
    return write_atomic


# how a folder cannot be written: a file, under a file (both real), and (root ignores modes, so
# monkeypatched) a read-only file system and a full disk as refam.io.files.write_atomic would meet them
FOLDERS = {
    "a file": (lambda root: root / "file", None, "is a file"),
    "under a file": (lambda root: root / "file" / "sub", None, "a part of the path is a file"),
    "read-only": (lambda root: root / "ro", errno.EROFS, "Read-only file system"),
    "full disk": (lambda root: root / "full", errno.ENOSPC, "No space left on device"),
}


@pytest.mark.parametrize("key", ["results.folder", "masks.folder", "records.folder"])
@pytest.mark.parametrize("case", list(FOLDERS))
def test_an_output_folder_that_cannot_be_written_is_refused_naming_its_key(tmp_path, monkeypatch, key, case):
    (tmp_path / "file").write_text("x")
    where, code, why = FOLDERS[case]
    folder = where(tmp_path)
    if code is not None:
        monkeypatch.setattr("refam.io.files.write_atomic", _raise(code))
    callback = _callbacks(tmp_path, folder)[key]
    module = SimpleNamespace(dataset_names=["d"], numbers_identity=lambda: {}, add_mask_writer=lambda w: None)
    trainer = SimpleNamespace(log_dir=str(tmp_path / "log"), default_root_dir=str(tmp_path), logger=None,
                              lightning_module=module)
    with pytest.raises(ConfigError) as info:
        callback.setup(trainer, module, "test")
    assert str(info.value).startswith(f"{key}: cannot write into {folder}") and why in str(info.value)
    assert f"--{key}" in str(info.value)


def test_a_disk_that_fills_midway_is_one_error_naming_the_file_and_keeps_what_was_written(tmp_path, monkeypatch):
    store = _store(tmp_path)
    store.put(0, "d", _image_record("first"))
    monkeypatch.setattr("refam.io.files.write_atomic", _raise(errno.ENOSPC))
    with pytest.raises(OutputError) as info:
        store.put(0, "d", _image_record("second"))
    assert str(store.path("d", "second")) in str(info.value) and "No space left" in str(info.value)
    monkeypatch.undo()
    assert store.lookup(0, "d", "first", "x") is not None and not store.path("d", "second").exists()
    with pytest.raises(OSError):  # other errors are not dressed up as a full disk
        monkeypatch.setattr("refam.io.files.write_atomic", _raise(errno.EIO))
        try:
            store.put(0, "d", _image_record("third"))
        except OutputError:
            pytest.fail("EIO is not a full or read-only disk")

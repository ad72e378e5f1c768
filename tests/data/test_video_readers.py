"""Ref-DAVIS17, Ref-YouTube-VOS and MeViS readers on tiny trees in the real layouts
(tests/fixtures/video_fixtures.py documents their geometry)."""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refam.data import MeViS, RefDAVIS17, RefYouTubeVOS
from refam.errors import ConfigError, DataError, MissingInputError
from tests.fixtures.video_fixtures import (
    DAVIS_EXPRESSIONS,
    DAVIS_SIZE,
    davis_labels,
    frame_grey,
    mevis_object_masks,
    write_mevis,
    write_ref_davis,
    write_ref_ytvos,
)
from refam.types import BadSample, VideoSample

# a reader names its own field first; a front door (refam test) names it as data.datasets.init_args.<field>


@pytest.fixture
def davis_root(tmp_path: Path) -> Path:
    return write_ref_davis(tmp_path / "ref-davis")


@pytest.fixture
def ytvos_root(tmp_path: Path) -> Path:
    return write_ref_ytvos(tmp_path / "ref-youtube-vos")


@pytest.fixture
def mevis_root(tmp_path: Path) -> Path:
    return write_mevis(tmp_path / "mevis")


@pytest.fixture
def opens(monkeypatch) -> list[str]:
    """Every PIL.Image.open from now on, by path."""
    calls: list[str] = []
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):
        calls.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return calls


def items(dataset) -> dict:
    return {item.sample_id: item for item in (dataset[i] for i in range(len(dataset)))}


def assert_frames_in_order(sample: VideoSample, names: list[str]) -> None:
    assert sample.frame_names == names and sample.names == names
    assert [Path(p).name for p in sample.frames] == [f"{n}.jpg" for n in names]
    for i, name in enumerate(names):  # the pixels are those of the named frame
        frame = sample.frame(i)
        assert frame.mode == "RGB"
        assert abs(int(np.asarray(frame)[0, 0, 0]) - frame_grey(int(name))) <= 3


# ---------------------------------------------------------------- Ref-DAVIS17


def test_davis_one_video_per_item_with_all_expressions_in_referformer_order(davis_root):
    dataset = RefDAVIS17(str(davis_root))
    assert dataset.name == "ref_davis17/valid" and len(dataset) == 2
    sample = items(dataset)["dogs-scale"]
    assert isinstance(sample, VideoSample)
    assert_frames_in_order(sample, ["00000", "00001", "00002", "00003"])
    assert sample.frame(0).size == DAVIS_SIZE
    # exp_id 4k + s: object k's expression from set s (annotator 1/2 x first frame/full video).
    assert [e.expression_id for e in sample.expressions] == [str(i) for i in range(8)]
    (_, texts_1), (_, texts_2) = DAVIS_EXPRESSIONS["dogs-scale"]
    assert [e.text for e in sample.expressions] == texts_1 + texts_2
    assert [e.object_ids for e in sample.expressions] == [[1]] * 4 + [[2]] * 4
    assert [e.annotator for e in sample.expressions] == [0, 1, 2, 3, 0, 1, 2, 3]


def test_davis_original_text_files_read_like_referformers_converter(tmp_path, davis_root):
    """Lines sorted by object, misspelt video names fixed, annotator 2's Latin-1 decoded: the same
    samples as the converted layout."""
    original = RefDAVIS17(str(write_ref_davis(tmp_path / "original", layout="original")))
    assert original.layout == "original" and RefDAVIS17(str(davis_root)).layout == "converted"
    converted = items(RefDAVIS17(str(davis_root)))["dogs-scale"]
    sample = items(original)["dogs-scale"]
    assert [(e.expression_id, e.text, e.object_ids, e.annotator) for e in sample.expressions] == [
        (e.expression_id, e.text, e.object_ids, e.annotator) for e in converted.expressions
    ]
    assert "café" in sample.expressions[6].text
    assert_frames_in_order(sample, ["00000", "00001", "00002", "00003"])
    assert "Annotations_unsupervised" in sample.truth.paths[0]
    for frame in range(4):
        for e, c in zip(sample.expressions, converted.expressions):
            got, want = sample.truth.mask(e, frame), converted.truth.mask(c, frame)
            assert (got is None and want is None) or np.array_equal(got, want)


def test_davis_annotator_keeps_one_expression_set_and_names_its_row(davis_root):
    dataset = RefDAVIS17(str(davis_root), annotator=2)
    assert dataset.name == "ref_davis17_anno2/valid"
    sample = items(dataset)["dogs-scale"]
    assert [(e.expression_id, e.object_ids, e.annotator) for e in sample.expressions] == [("2", [1], 2), ("6", [2], 2)]
    with pytest.raises(ConfigError, match=r"^annotator: "):
        RefDAVIS17(str(davis_root), annotator=4)
    with pytest.raises(ConfigError, match=r"^split: "):
        RefDAVIS17(str(davis_root), split="test-dev")


def test_davis_masks_are_the_written_palette_objects(davis_root):
    sample = items(RefDAVIS17(str(davis_root)))["dogs-scale"]
    big, small = sample.expressions[0], sample.expressions[4]
    for frame in range(3):
        labels = davis_labels(frame)
        for expression, obj_id in ((big, 1), (small, 2)):
            mask = sample.truth.mask(expression, frame)
            assert mask.dtype == bool and mask.shape == (DAVIS_SIZE[1], DAVIS_SIZE[0])
            np.testing.assert_array_equal(mask, labels == obj_id)
    # Stated by hand: object 1 moves right; object 2 is absent from frame 1; void rows belong to no object.
    expected = np.zeros((24, 32), dtype=bool)
    expected[2:10, 4:14] = True
    np.testing.assert_array_equal(sample.truth.mask(big, 1), expected)
    assert not sample.truth.mask(small, 1).any()
    frame2 = sample.truth.mask(big, 2)
    assert not frame2[0:3].any() and frame2[3:10, 6:16].all() and frame2.sum() == 7 * 10
    void = sample.truth.void(2)
    assert void[0:3].all() and not void[3:].any() and not sample.truth.void(0).any()
    assert sample.truth.mask(big, 3) is None and sample.truth.void(3) is None  # no PNG: unannotated


def test_davis_reads_no_frame_until_asked_and_each_annotation_once(davis_root, opens):
    dataset = RefDAVIS17(str(davis_root))
    sample = items(dataset)["dogs-scale"]
    assert opens == []  # constructing the dataset and the sample opened nothing
    sample.frame(2)
    assert opens == [sample.frames[2]]
    for expression in sample.expressions:  # eight expressions, one PNG read (and its frame's header, for the size)
        sample.truth.mask(expression, 0)
    assert opens[1:] == [sample.truth.paths[0], sample.frames[0]]


def test_davis_missing_video_folders_are_bad_samples_naming_them(davis_root):
    ghost = items(RefDAVIS17(str(davis_root)))["ghost"]
    assert isinstance(ghost, BadSample)
    assert "'ghost'" in ghost.reason and str(davis_root / "valid/JPEGImages/ghost") in ghost.reason

    shutil.rmtree(davis_root / "valid/Annotations/dogs-scale")
    bad = items(RefDAVIS17(str(davis_root)))["dogs-scale"]
    assert isinstance(bad, BadSample) and "annotation folder" in bad.reason

    (davis_root / "valid/JPEGImages/dogs-scale/00001.jpg").unlink()
    bad = items(RefDAVIS17(str(davis_root)))["dogs-scale"]
    assert isinstance(bad, BadSample) and "1 of 4 frames" in bad.reason and "00001.jpg" in bad.reason


# ---------------------------------------------------------------- Ref-YouTube-VOS


def test_ytvos_valid_lists_the_frames_the_server_scores_without_truth(ytvos_root):
    dataset = RefYouTubeVOS(str(ytvos_root))
    assert dataset.name == "ref_youtube_vos/valid"
    samples = items(dataset)
    assert set(samples) == {"a1b2", "gone"}  # t3st is a competition test video (meta_expressions/test)
    sample = samples["a1b2"]
    # Only the listed 6 fps frames, although the folder holds 00001..00004 too.
    assert_frames_in_order(sample, ["00000", "00005", "00010"])
    assert [(e.expression_id, e.text, e.object_ids) for e in sample.expressions] == [
        ("0", "a person riding a horse", None), ("1", "the brown horse", None),
    ]
    assert sample.truth is None
    gone = samples["gone"]
    assert isinstance(gone, BadSample) and "'gone'" in gone.reason


def test_ytvos_without_the_test_list_warns_and_keeps_every_listed_video(ytvos_root):
    (ytvos_root / "meta_expressions/test/meta_expressions.json").unlink()
    with pytest.warns(UserWarning, match="exclude_test_videos"):
        dataset = RefYouTubeVOS(str(ytvos_root))
    assert set(items(dataset)) == {"a1b2", "gone", "t3st"}
    assert len(RefYouTubeVOS(str(ytvos_root), exclude_test_videos=False)) == 3


def test_ytvos_train_reads_palette_truth_and_no_frame_until_asked(ytvos_root, opens):
    sample = items(RefYouTubeVOS(str(ytvos_root), split="train"))["tr41"]
    assert opens == []
    assert [e.object_ids for e in sample.expressions] == [[1], [2]]
    right = np.zeros((16, 24), dtype=bool)
    right[4:12, 12:20] = True
    np.testing.assert_array_equal(sample.truth.mask(sample.expressions[1], 0), right)
    assert not sample.truth.mask(sample.expressions[1], 1).any()
    assert sample.truth.mask(sample.expressions[0], 1).sum() == 8 * 6


# ---------------------------------------------------------------- MeViS


def test_mevis_masks_are_the_union_of_the_expressions_rles(mevis_root):
    dataset = MeViS(str(mevis_root))
    assert dataset.name == "mevis/valid_u"
    sample = items(dataset)["cats"]
    assert_frames_in_order(sample, ["00000", "00001", "00002"])
    assert [(e.expression_id, e.object_ids) for e in sample.expressions] == [("0", [0, 1]), ("1", [0]), ("2", [1])]
    both, left, right = sample.expressions
    written = mevis_object_masks()
    for frame in range(3):
        masks = [m for m in (written["10"][frame], written["11"][frame]) if m is not None]
        np.testing.assert_array_equal(sample.truth.mask(both, frame), np.logical_or.reduce(masks))
        np.testing.assert_array_equal(sample.truth.mask(left, frame), written["10"][frame])
    assert sample.truth.mask(both, 0).sum() == 6 * 6 + 5 * 8
    # Frame 1: the right cat's RLE is null, so it is absent: an empty mask that still counts (not None).
    absent = sample.truth.mask(right, 1)
    assert absent is not None and absent.shape == (16, 20) and not absent.any()
    np.testing.assert_array_equal(sample.truth.mask(both, 1), written["10"][1])


def test_mevis_rles_follow_the_files_frame_order(mevis_root):
    """mask_dict entries are indexed by position in the listed frames; samples order frames by name."""
    meta_path = mevis_root / "valid_u/meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    meta["videos"]["cats"]["frames"] = ["00002", "00000", "00001"]
    meta_path.write_text(json.dumps(meta))
    mask_path = mevis_root / "valid_u/mask_dict.json"
    masks = json.loads(mask_path.read_text())
    masks["11"] = [masks["11"][2], masks["11"][0], masks["11"][1]]  # still null in frame 00001
    mask_path.write_text(json.dumps(masks))
    sample = items(MeViS(str(mevis_root)))["cats"]
    assert sample.frame_names == ["00000", "00001", "00002"]
    right = sample.expressions[2]
    assert [bool(sample.truth.mask(right, i).any()) for i in range(3)] == [True, False, True]


def test_mevis_loads_mask_dict_once_and_reads_no_frame(mevis_root, opens, monkeypatch):
    import refam.data.mevis as mevis_module

    loads = []
    real_load_json = mevis_module.load_json
    monkeypatch.setattr(mevis_module, "load_json", lambda *a: loads.append(a[0]) or real_load_json(*a))
    dataset = MeViS(str(mevis_root))
    samples = [dataset[i] for i in range(len(dataset))] + [dataset[0]]
    for expression in samples[0].expressions:
        samples[0].truth.mask(expression, 2)
    assert [p.name for p in loads] == ["mask_dict.json"]
    assert opens == []


def test_mevis_unlabelled_and_inconsistent_splits(mevis_root):
    valid = MeViS(str(mevis_root), split="valid")
    assert valid.name == "mevis/valid"
    sample = valid[0]
    assert sample.truth is None and sample.expressions[0].object_ids is None

    masks = json.loads((mevis_root / "valid_u/mask_dict.json").read_text())
    del masks["11"]
    (mevis_root / "valid_u/mask_dict.json").write_text(json.dumps(masks))
    bad = items(MeViS(str(mevis_root)))["cats"]
    assert isinstance(bad, BadSample) and "anno_id 11" in bad.reason

    (mevis_root / "valid_u/mask_dict.json").unlink()
    with pytest.raises(MissingInputError, match=r"^root: .*mask_dict\.json"):
        MeViS(str(mevis_root))


def test_mevis_samples_cross_process_boundaries(mevis_root):
    """Loader workers pickle the dataset and each sample; a sample carries its own video's RLEs only."""
    dataset = pickle.loads(pickle.dumps(MeViS(str(mevis_root))))
    sample = pickle.loads(pickle.dumps(items(dataset)["cats"]))
    assert "20" not in sample.truth._rles  # the other video's object stays behind
    np.testing.assert_array_equal(sample.truth.mask(sample.expressions[1], 0), mevis_object_masks()["10"][0])


# ---------------------------------------------------------------- shared behaviour

READERS = {
    "davis": (RefDAVIS17, write_ref_davis, "dogs-scale"),
    "ytvos": (RefYouTubeVOS, write_ref_ytvos, "a1b2"),
    "mevis": (MeViS, write_mevis, "cats"),
}


@pytest.mark.parametrize("reader", list(READERS))
def test_captions_come_from_the_file_and_missing_videos_get_the_empty_prompt(tmp_path, reader):
    cls, write, video = READERS[reader]
    root = write(tmp_path / reader)
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({video: "  a short\nvideo caption ", "unlisted": "x"}))
    with_captions = items(cls(str(root), captions_file=str(captions)))
    assert with_captions[video].caption == "a short video caption"
    assert all(s.caption == "" for k, s in with_captions.items() if k != video and isinstance(s, VideoSample))
    assert items(cls(str(root)))[video].caption == ""

    with pytest.raises(MissingInputError, match=r"^captions_file: "):
        cls(str(root), captions_file=str(tmp_path / "nope.json"))
    captions.write_text(json.dumps([video]))
    with pytest.raises(DataError, match=r"^captions_file: .*captions\.json"):
        cls(str(root), captions_file=str(captions))


@pytest.mark.parametrize("reader", list(READERS))
def test_wrong_roots_name_the_config_key(tmp_path, reader):
    cls = READERS[reader][0]
    with pytest.raises(MissingInputError, match=r"^root: "):
        cls(str(tmp_path / "does-not-exist"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError, match=r"^root: ") as error:
        cls(str(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(error.value)


def test_wrong_root_messages_say_what_layout_is_expected(tmp_path, ytvos_root, mevis_root):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError, match="convert_davis_to_ytvos.py.*davis_text_annotations"):
        RefDAVIS17(str(tmp_path / "empty"))
    with pytest.raises(MissingInputError, match=r"with split"):
        RefYouTubeVOS(str(ytvos_root), split="valid_all")
    with pytest.raises(MissingInputError, match=r"with split.*valid_u"):
        MeViS(str(mevis_root), split="val")
    (mevis_root / "valid_u/meta_expressions.json").write_text("{\"videos\": [")
    with pytest.raises(DataError, match="meta_expressions.json: invalid JSON") as info:
        MeViS(str(mevis_root))
    assert info.value.field == "root"  # the setting that chose the file, as the image readers name it

"""RefCOCO reader on a real-format REFER fixture (tests/fixtures/refer_fixture.py documents its geometry)."""

import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from refam.data.refcoco import RefCOCODataset, decode_segmentation, load_untrusted_pickle
from tests.fixtures.refer_fixture import write_refer_fixture
from refam.types import BadSample, Sample

@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_refer_fixture(tmp_path / "refer")


def by_id(dataset: RefCOCODataset) -> dict[str, Sample]:
    items = [dataset[i] for i in range(len(dataset))]
    assert all(isinstance(s, Sample) for s in items), items
    return {s.sample_id: s for s in items}


def test_one_item_per_image_with_its_split_expressions_in_ref_then_sentence_order(root):
    val = by_id(RefCOCODataset(str(root), split="val"))
    assert list(val) == ["100", "102"]  # image 101 is testA; image 99 and unreferred ann 1002 are not samples
    assert [e.expression_id for e in val["100"].expressions] == ["1_1", "1_2", "2_3", "2_4"]
    assert [e.text for e in val["100"].expressions] == [
        "the red box on the left", "red rectangle", "blue circle", "the round blue thing on the right",
    ]
    assert [e.expression_id for e in val["102"].expressions] == ["5_8", "6_9", "6_10"]
    test_a = RefCOCODataset(str(root), split="testA")
    assert len(test_a) == 1 and test_a[0].sample_id == "101"
    assert test_a.name == "refcoco/testA"


def test_masks_match_hand_drawn_shapes_at_original_non_square_size(root):
    sample = by_id(RefCOCODataset(str(root), split="val"))["100"]
    assert sample.image.mode == "RGB" and sample.image.size == (128, 96)
    red_box = np.zeros((96, 128), dtype=bool)
    red_box[30:70, 10:50] = True  # polygon x 10..50, y 30..70
    canvas = Image.new("L", (128, 96), 0)
    ImageDraw.Draw(canvas).ellipse((76, 24, 115, 71), fill=1)
    blue_ellipse = np.asarray(canvas, dtype=bool)  # compressed RLE

    masks = [e.mask for e in sample.expressions]
    assert all(m.dtype == bool and m.shape == (96, 128) for m in masks)
    np.testing.assert_array_equal(masks[0], red_box)
    np.testing.assert_array_equal(masks[1], red_box)  # both sentences of ref 1
    np.testing.assert_array_equal(masks[2], blue_ellipse)
    # The picture agrees with the masks (not transposed): red inside the box, blue inside the ellipse.
    pixels = np.asarray(sample.image).astype(int)
    assert pixels[50, 30, 0] > 150 and pixels[50, 30, 2] < 90
    assert pixels[47, 95, 2] > 150 and pixels[47, 95, 0] < 90


def test_uncompressed_rle_mask(root):
    sample = by_id(RefCOCODataset(str(root), split="val"))["102"]
    bar = np.zeros((72, 112), dtype=bool)
    bar[6:18, 8:104] = True
    np.testing.assert_array_equal(sample.expressions[0].mask, bar)
    oval = sample.expressions[1].mask
    assert oval[48, 56] and not oval[48, 30] and not oval[10, 56]  # 16-gon centred at (56, 48), rx 20, ry 12


def test_caption_is_lowest_annotation_id_and_whitespace_normalised(root):
    captions = str(root / "captions_train2014.json")
    val = by_id(RefCOCODataset(str(root), split="val", captions_file=captions))
    assert val["100"].caption == "Coloured shapes on grey, scene 0."
    assert val["102"].caption == ""  # no caption for that image
    assert by_id(RefCOCODataset(str(root), split="val"))["100"].caption == ""
    none = by_id(RefCOCODataset(str(root), split="val", captions_file=captions, caption_choice="none"))
    assert none["100"].caption == ""
    with pytest.raises(ValueError, match="caption_choice"):
        RefCOCODataset(str(root), caption_choice="random")


def test_python2_utf8_sentence_round_trips(root):
    refs_path = root / "refcoco" / "refs(unc).p"
    raw = refs_path.read_bytes()
    opcodes = {op.name for op, _, _ in pickletools.genops(raw)}
    # The fixture is what Python 2 wrote: text as byte strings, and no globals at all.
    assert "SHORT_BINSTRING" in opcodes and not opcodes & {"GLOBAL", "STACK_GLOBAL", "REDUCE"}
    # latin1, the usual recipe for Python 2 pickles, garbles UTF-8 text; the reader must not.
    naive = pickle.loads(raw, encoding="latin1")
    assert any("cafÃ©" in s["sent"] for r in naive for s in r["sentences"])

    expressions = RefCOCODataset(str(root), split="testA")[0].expressions
    assert "the café-coloured square in the corner" in [e.text for e in expressions]
    refs = load_untrusted_pickle(refs_path)
    assert all(isinstance(k, str) for r in refs for k in r)  # keys decoded too
    assert {s["raw"] for r in refs for s in r["sentences"]} >= {"Blue circle."}  # BINUNICODE path


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def test_restricted_unpickler_refuses_code_and_names_the_file(root, tmp_path):
    marker = tmp_path / "pwned"
    refs_path = root / "refcoco" / "refs(unc).p"
    refs_path.write_bytes(pickle.dumps([_RunsCode(marker)], protocol=2))
    with pytest.raises(pickle.UnpicklingError) as info:
        RefCOCODataset(str(root))
    message = str(info.value)
    assert str(refs_path) in message and "system" in message
    assert not marker.exists()


def test_untrusted_pickle_accepts_python3_plain_data_and_rejects_garbage(tmp_path):
    path = tmp_path / "plain.p"
    path.write_bytes(pickle.dumps([{"sent": "naïve", "tokens": ("a", b"b")}], protocol=4))
    assert load_untrusted_pickle(path) == [{"sent": "naïve", "tokens": ("a", "b")}]
    path.write_bytes(b"\x80\x02]q\x00(K\x01")  # truncated
    with pytest.raises(pickle.UnpicklingError, match="plain.p"):
        load_untrusted_pickle(path)


def test_missing_or_unreadable_image_is_a_bad_sample_naming_the_file(root):
    image_dir = root / "images/mscoco/images/train2014"
    (image_dir / "COCO_train2014_000000000100.jpg").unlink()
    (image_dir / "COCO_train2014_000000000102.jpg").write_bytes(b"not a jpeg")
    dataset = RefCOCODataset(str(root), split="val")
    missing, broken = dataset[0], dataset[1]
    assert isinstance(missing, BadSample) and missing.sample_id == "100"
    assert "COCO_train2014_000000000100.jpg" in missing.reason and "image_dir" in missing.reason
    assert isinstance(broken, BadSample) and "COCO_train2014_000000000102.jpg" in broken.reason


def test_undecodable_annotation_is_a_bad_sample(root):
    import json

    instances_path = root / "refcoco" / "instances.json"
    instances = json.loads(instances_path.read_text())
    for ann in instances["annotations"]:
        if ann["id"] == 1001:
            ann["segmentation"] = {"size": [5, 5], "counts": "0"}
    instances_path.write_text(json.dumps(instances))
    sample = RefCOCODataset(str(root), split="val")[0]
    assert isinstance(sample, BadSample) and "1001" in sample.reason


def test_construction_errors_name_the_path_and_config_key(root, tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        RefCOCODataset(str(root), dataset="refcoco+")
    # the dataset's own field; a front door (refam test) names the full key, data.datasets.init_args.data_root
    assert str(root / "refcoco+" / "refs(unc).p") in str(info.value) and info.value.field == "data_root"
    with pytest.raises(FileNotFoundError, match="^data_root: "):
        RefCOCODataset(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"^split: .*must be one of \['testA', 'val'\]"):
        RefCOCODataset(str(root), split="testB")
    with pytest.raises(FileNotFoundError, match="^image_dir: "):
        RefCOCODataset(str(root), image_dir=str(tmp_path / "no_images"))
    with pytest.raises(ValueError, match="^split_by: "):
        RefCOCODataset(str(root), dataset="mycoco")
    instances = root / "refcoco" / "instances.json"
    instances.write_bytes(b'{"images": [')
    with pytest.raises(ValueError, match=r"^data_root: .*instances.json: invalid JSON at line 1.*restore the original"):
        RefCOCODataset(str(root))
    instances.write_bytes(b'{"images": ["caf\xe9"]}')  # latin-1, not UTF-8
    with pytest.raises(ValueError, match=r"^data_root: .*instances.json: not UTF-8 text"):
        RefCOCODataset(str(root))
    instances.write_text("[]")
    with pytest.raises(ValueError, match=r"^data_root: .*instances.json: expected a JSON object, got list"):
        RefCOCODataset(str(root))
    instances.unlink()
    with pytest.raises(FileNotFoundError, match="instances.json"):
        RefCOCODataset(str(root))


def test_refcocog_defaults_to_umd_and_name_marks_other_split_by(tmp_path):
    root = write_refer_fixture(tmp_path, dataset="refcocog", n_images=4)
    assert (root / "refcocog" / "refs(umd).p").exists()
    test = RefCOCODataset(str(root), dataset="refcocog", split="test")
    assert test.name == "refcocog/test" and [test[i].sample_id for i in range(len(test))] == ["101"]
    (root / "refcocog" / "refs(google).p").write_bytes((root / "refcocog" / "refs(umd).p").read_bytes())
    assert RefCOCODataset(str(root), dataset="refcocog", split_by="google").name == "refcocog_google/val"


def test_fixture_is_deterministic_and_seed_changes_only_pixels(tmp_path):
    a = write_refer_fixture(tmp_path / "a", seed=0)
    b = write_refer_fixture(tmp_path / "b", seed=0)
    c = write_refer_fixture(tmp_path / "c", seed=1)
    for name in ("refcoco/refs(unc).p", "refcoco/instances.json", "images/mscoco/images/train2014/COCO_train2014_000000000100.jpg"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "refcoco/instances.json").read_bytes() == (c / "refcoco/instances.json").read_bytes()
    jpg = "images/mscoco/images/train2014/COCO_train2014_000000000100.jpg"
    assert (a / jpg).read_bytes() != (c / jpg).read_bytes()


def test_decode_segmentation_forms_agree_and_size_is_checked():
    mask = np.zeros((6, 5), dtype=bool)
    mask[1:4, 2:5] = True
    polygon = [[2.0, 1.0, 5.0, 1.0, 5.0, 4.0, 2.0, 4.0]]
    uncompressed = {"size": [6, 5], "counts": [13, 3, 3, 3, 3, 3, 2]}
    from pycocotools import mask as mask_utils

    compressed = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    as_str = {"size": compressed["size"], "counts": compressed["counts"].decode()}
    for segmentation in (polygon, polygon[0], uncompressed, compressed, as_str):
        np.testing.assert_array_equal(decode_segmentation(segmentation, 6, 5), mask)
    with pytest.raises(ValueError, match="RLE size"):
        decode_segmentation(as_str, 5, 6)
